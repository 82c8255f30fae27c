"""LoRA welfare-offset fine-tunes with TRL + peft, on the train split only.

* **SFT** (`sft_data: euphoric`) on euphoric experiences as the subject itself lives them: the user turns
  of train-split euphoric experiences with the subject's own (greedy) replies. Loss on the whole
  conversation (TRL's default for chat data). It optimises no probe, so it has no Goodhart gap by
  construction; whether it moves wellbeing is the question the before/after measurement answers.
* **SFT** (`sft_data: best_of_n`, rejection-sampling fine-tuning): for train-split dysphoric and neutral
  experiences, the one of several sampled own replies after which the subject reports feeling best.
* **DPO** on pairs ranked by measured wellbeing: for train-split dysphoric and neutral experiences the
  subject writes several sampled replies; the reply after which it reports feeling best (self-report,
  exact) is chosen, the worst rejected. It optimises self-report through the subject's own behaviour, so
  the session reports the Goodhart gap against experienced utility and stop.

The CPU defaults differ from TRL's: bf16 and activation checkpointing are on only when CUDA is there
(bf16 runs 25-50x slower than fp32 on typical CPUs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from trl import DPOConfig, SFTConfig

from welfare_offsets.eval.common.checks import integers_at_least, number_in
from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.in_context import BATTERY, score_in_context
from welfare_offsets.eval.instrument import Instrument
from welfare_offsets.eval.replies import live_through
from welfare_offsets.eval.scoring import NextTokenScorer
from welfare_offsets.eval.settings import Settings, setting

METHODS = ("sft", "dpo")
SFT_DATA = ("euphoric", "best_of_n")


@dataclass(kw_only=True)
class LoraArguments(Settings):
    """The adapter and the data of a LoRA offset."""

    method: str = setting("sft", "sft or dpo (pairs of own replies ranked by measured self-report)")
    sft_data: str = setting(
        "euphoric",
        "sft data: euphoric (own replies to euphoric experiences) or best_of_n (best "
        "own reply by measured self-report)",
    )
    lora_r: int = setting(16, "LoRA rank")
    lora_alpha: int = setting(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = setting(0.05, "LoRA dropout")
    lora_target_modules: str = setting("all-linear", "all-linear, or comma-separated module names")
    candidates: int = setting(4, "sampled own replies per prompt, ranked by measured self-report (dpo, best_of_n)")
    candidate_temperature: float = setting(1.0, "sampling temperature of the candidate replies")
    min_margin: float = setting(0.1, "keep a prompt only if its best - worst candidate self-report >= this")

    def check(self):
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        if self.sft_data not in SFT_DATA:
            raise ValueError(f"sft_data: expected one of {', '.join(SFT_DATA)}, got {self.sft_data!r}")
        if self.lora_r < 1 or self.candidates < 2:
            raise ValueError(f"lora_r must be >= 1 and candidates >= 2, got {self.lora_r} and {self.candidates}")
        integers_at_least(self, 1, "lora_alpha")
        number_in(self, "lora_dropout", 0.0, 1.0)
        number_in(self, "candidate_temperature", 0.0, above=True)
        number_in(self, "min_margin", 0.0)

    @property
    def ranks_replies(self) -> bool:
        """Whether the data are own replies ranked by measured self-report (which the adapter then optimises)."""
        return self.method == "dpo" or self.sft_data == "best_of_n"

    @property
    def optimised_probe(self) -> str | None:
        return "self_report" if self.ranks_replies else None

    @property
    def train_valences(self) -> tuple[str, ...]:
        return ("dysphoric", "neutral") if self.ranks_replies else ("euphoric",)

    def peft_config(self):
        from peft import LoraConfig

        targets = self.lora_target_modules
        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            task_type="CAUSAL_LM",
            target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
        )


def _device_defaults(config) -> None:
    """bf16 and activation checkpointing only where they pay: on CUDA (TRL turns them on everywhere).
    Without CUDA, use_cpu: the Trainer then joins the ranks of a multi-process CPU run over gloo (without
    it, accelerate leaves every rank alone, each believing it is the main process)."""
    if not torch.cuda.is_available():
        config.use_cpu = True
    cuda = torch.cuda.is_available() and not config.use_cpu
    if config.bf16 is None:
        config.bf16 = cuda and not config.fp16
    if getattr(config, "activation_checkpointing", None) is None:
        config.activation_checkpointing = False if not cuda else None


def _check_training(config) -> None:
    """The training numbers TRL and transformers accept unchecked, refused before any model loads (seed and
    report_to are the session's, checked there: eval/settings.py)."""
    number_in(config, "learning_rate", 0.0, above=True)
    number_in(config, "num_train_epochs", 0.0, above=True)
    number_in(config, "max_grad_norm", 0.0)
    integers_at_least(config, 1, "per_device_train_batch_size", "gradient_accumulation_steps")
    if getattr(config, "beta", None) is not None:  # DPO
        number_in(config, "beta", 0.0, above=True)


@dataclass
class OffsetSFTConfig(SFTConfig):
    __doc__ = SFTConfig.__doc__

    def __post_init__(self):
        _check_training(self)
        _device_defaults(self)
        super().__post_init__()


@dataclass
class OffsetDPOConfig(DPOConfig):
    __doc__ = DPOConfig.__doc__

    def __post_init__(self):
        _check_training(self)
        _device_defaults(self)
        super().__post_init__()


TRL_CONFIG = {"sft": OffsetSFTConfig, "dpo": OffsetDPOConfig}


def sft_records(subject, experiences: Sequence[Experience], *, reply_tokens: int) -> list[dict]:
    """Euphoric experiences with the subject's own replies, as chat records for SFTTrainer."""
    lived = live_through(subject, experiences, max_new_tokens=reply_tokens)
    return [{"messages": list(e.messages), "item_id": e.id} for e in lived]


def ranked_records(
    subject,
    experiences: Sequence[Experience],
    args: LoraArguments,
    *,
    reply_tokens: int,
    batch_size: int,
    seed: int,
    instrument: Instrument | None = None,
) -> list[dict]:
    """Per prompt, sampled own replies ranked by the self-report measured after each: DPO pairs (best vs
    worst) or best-of-n SFT conversations. Prompts whose candidates differ by less than min_margin are dropped."""
    torch.manual_seed(seed)
    candidates = [e for e in experiences for _ in range(args.candidates)]
    lived = live_through(subject, candidates, max_new_tokens=reply_tokens, temperature=args.candidate_temperature)
    scorer = NextTokenScorer(subject.model, subject.tokenizer, batch_size=batch_size, soft_prompt=subject.soft_prompt)
    scored = score_in_context(scorer, lived, ("self_report",), desc="ranking replies", instrument=instrument)
    per_candidate, _ = scored.experience_scores(BATTERY)  # every item: a steadier ranking than the headline alone
    records = []
    for start in range(0, len(lived), args.candidates):
        scores = per_candidate[start : start + args.candidates]
        best, worst = start + int(np.argmax(scores)), start + int(np.argmin(scores))
        if scores.max() - scores.min() < args.min_margin:
            continue
        scored = {
            "item_id": lived[best].id,
            "self_report_best": float(scores.max()),
            "self_report_worst": float(scores.min()),
        }
        if args.method == "dpo":
            records.append(
                {
                    "prompt": list(lived[best].messages[:-1]),
                    "chosen": [lived[best].messages[-1]],
                    "rejected": [lived[worst].messages[-1]],
                    **scored,
                }
            )
        else:
            records.append({"messages": list(lived[best].messages), **scored})
    return records


def build_trainer(method: str, subject, records: list[dict], trl_config, lora: LoraArguments, callbacks: list):
    """A TRL trainer (SFTTrainer or DPOTrainer) that wraps the subject in a fresh LoRA adapter."""
    from datasets import Dataset

    dataset = Dataset.from_list(
        [{k: v for k, v in r.items() if k in ("messages", "prompt", "chosen", "rejected")} for r in records]
    )
    if method == "sft":
        from trl import SFTTrainer

        return SFTTrainer(
            model=subject.model,
            args=trl_config,
            train_dataset=dataset,
            processing_class=subject.tokenizer,
            peft_config=lora.peft_config(),
            callbacks=callbacks,
        )
    from trl import DPOTrainer

    # With a peft adapter the reference model is the base model with the adapter switched off: no copy.
    return DPOTrainer(
        model=subject.model,
        ref_model=None,
        args=trl_config,
        train_dataset=dataset,
        processing_class=subject.tokenizer,
        peft_config=lora.peft_config(),
        callbacks=callbacks,
    )
