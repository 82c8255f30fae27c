"""Euphoric soft prompt: a few virtual tokens, tuned so that the subject reports feeling better.

As in the anchor paper: 4 virtual tokens initialised as spaces, AdamW at lr 0.01, in front of the
conversation. The prompt is a peft prompt-tuning adapter (`PeftModel.from_pretrained` loads it; so does
`welfare eval --adapter`). The objective is the subject's own self-report after train-split experiences
(dysphoric and neutral, authored replies): the expected answer on the 1-7 scale, read exactly from the
next-token probabilities, plus a small term that keeps the probability on valid digits, so the prompt
cannot win by making the model stop answering. Because it optimises self-report, the session reports the
Goodhart gap against the probes it did not optimise (experienced utility, stop).

The loop is written out (no Trainer: there is one tensor to train); accelerate places it and, across
processes, averages its gradient. The budget is checked after every step, as the Trainer callback does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from welfare_offsets.eval import probes as P
from welfare_offsets.eval.common.checks import integers_at_least, number_in
from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.scoring import label_token_ids, pad_rows, pad_token_id, place_soft_prompt, positions
from welfare_offsets.eval.settings import Settings, setting

OPTIMISED_PROBE = "self_report"
STATE_FILE = "trainer_state.pt"  # a checkpoint's step and optimizer state, beside the prompt's adapter files


@dataclass(kw_only=True)
class SoftPromptConfig(Settings):
    """How the soft prompt is trained (names follow transformers' TrainingArguments where they overlap; the
    folder, seed and tracking are the session's)."""

    num_virtual_tokens: int = setting(4, "virtual tokens in the soft prompt")
    learning_rate: float = setting(0.01, "AdamW learning rate")
    max_steps: int = setting(200, "optimizer steps (the budget may stop it earlier)")
    per_device_train_batch_size: int = setting(8, "self-report prompts per step and process")
    adherence_weight: float = setting(0.1, "weight of -log(probability on valid digits) in the loss")
    save_steps: int = setting(50, "checkpoint every N steps (and whenever the budget stops it)")
    logging_steps: int = setting(10, "log loss and wellbeing every N steps")
    resume_from_checkpoint: str | None = setting(None, "checkpoint folder, or last")

    def check(self):
        integers_at_least(
            self, 1, "num_virtual_tokens", "max_steps", "per_device_train_batch_size", "save_steps", "logging_steps"
        )
        number_in(self, "learning_rate", 0.0, above=True)
        number_in(self, "adherence_weight", 0.0)


class SelfReportObjective(torch.nn.Module):
    """Loss = -(expected self-report, scaled to 0..1) - w * log(mass on valid digits), per prompt, averaged."""

    def __init__(self, model, prompt: torch.nn.Embedding, digit_ids: list[list[int]], adherence_weight: float):
        super().__init__()
        self.model, self.prompt, self.adherence_weight = model, prompt, adherence_weight
        self.digit_ids = digit_ids

    def forward(self, ids, mask, positions, starts):
        embeds = place_soft_prompt(self.model, ids, self.prompt.weight, starts.tolist())
        logits = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
        logp = torch.log_softmax(logits[:, -1].float(), dim=-1)
        digit_logp = torch.stack([torch.logsumexp(logp[:, ids], dim=-1) for ids in self.digit_ids], dim=-1)
        mass_logp = torch.logsumexp(digit_logp, dim=-1)
        expected = ((digit_logp - mass_logp[:, None]).exp() * torch.arange(1, 8, device=logp.device)).sum(-1)
        loss = -((expected - 1) / 6).mean() - self.adherence_weight * mass_logp.mean()
        return loss, expected.detach().mean(), mass_logp.detach().exp().mean()


def training_prompts(tokenizer, experiences: Sequence[Experience]) -> list[list[int]]:
    """Token ids of every self-report question after every experience (the objective's data)."""
    requests = P.self_report_requests(experiences)
    return [tokenizer(P.render_prompt(tokenizer, r.messages), add_special_tokens=False)["input_ids"] for r in requests]


def collate(token_lists: Sequence[list[int]], n_soft: int, pad_id: int):
    """Left-padded rows with n_soft free columns before each prompt: ids, mask, positions (skipping the
    padding) and each row's first soft column."""
    ids, mask = pad_rows(token_lists, pad_id, soft_columns=n_soft)
    return ids, mask, positions(mask), ids.shape[1] - mask.sum(1)


def train_soft_prompt(
    subject,
    token_lists: list[list[int]],
    config: SoftPromptConfig,
    *,
    out: Path,
    seed: int,
    budget,
    resume: Path | None = None,
    log: Callable[[dict], None] = lambda metrics: None,
) -> tuple[Path, dict]:
    """Tune the soft prompt under `budget` (a ledger BudgetSession), checkpointing into `out`; returns (final
    prompt folder, summary)."""
    from accelerate import Accelerator
    from peft import PromptTuningConfig, TaskType, get_peft_model

    accelerator = Accelerator()
    torch.manual_seed(seed)
    model, tokenizer = subject.model, subject.tokenizer
    model.requires_grad_(False)
    peft_model = get_peft_model(
        model,
        PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=config.num_virtual_tokens,
            prompt_tuning_init="RANDOM",
            base_model_name_or_path=subject.model_id,
        ),
    )
    prompt = peft_model.prompt_encoder["default"].embedding
    with torch.no_grad():  # initialised as spaces, as in the anchor
        space = tokenizer(" ", add_special_tokens=False)["input_ids"] or [tokenizer.pad_token_id or 0]
        prompt.weight.copy_(model.get_input_embeddings().weight[space[0]].float().expand_as(prompt.weight))
    prompt.requires_grad_(True)
    objective = SelfReportObjective(model, prompt, label_token_ids(tokenizer, P.LIKERT), config.adherence_weight)
    optimizer = torch.optim.AdamW(prompt.parameters(), lr=config.learning_rate, weight_decay=0.0)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    step = 0
    if resume is not None:
        step = _load_checkpoint(resume, prompt, optimizer)
    pad_id = pad_token_id(tokenizer)
    per_step = config.per_device_train_batch_size * accelerator.num_processes
    steps_per_epoch = max(1, len(token_lists) // per_step)
    history = []
    budget.loop_started()
    while step < config.max_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        order = torch.randperm(len(token_lists), generator=torch.Generator().manual_seed(seed + epoch))
        rows = order[offset * per_step : (offset + 1) * per_step][
            accelerator.process_index :: accelerator.num_processes
        ]
        batch = collate([token_lists[int(i)] for i in rows], config.num_virtual_tokens, pad_id)
        loss, expected, mass = objective(*(t.to(accelerator.device) for t in batch))
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        save_due = step % config.save_steps == 0 or step == config.max_steps or not budget.guard.save_measured
        if step % config.logging_steps == 0 or step == 1:
            metrics = {
                "train/loss": loss.item(),
                "train/self_report": float(expected),
                "train/valid_mass": float(mass),
                "train/learning_rate": config.learning_rate,
                "train/global_step": step,
            }
            history.append(metrics)
            log(metrics)
        stop = budget.step_done(save_due=save_due)
        if save_due or stop:
            budget.saving_checkpoint()
            _save_checkpoint(accelerator, peft_model, optimizer, out / f"checkpoint-{step}", step)
            budget.checkpoint_saved(out / f"checkpoint-{step}")
        if stop:
            break
    final = out / "soft_prompt"
    if accelerator.is_main_process:
        peft_model.save_pretrained(final)
    accelerator.wait_for_everyone()
    soft = prompt.weight.detach().clone().cpu()
    return final, {"steps": step, "soft_prompt": soft, "history": history, "stopped_by_budget": step < config.max_steps}


def _save_checkpoint(accelerator, peft_model, optimizer, folder: Path, step: int) -> None:
    if accelerator.is_main_process:
        peft_model.save_pretrained(folder)
        torch.save({"step": step, "optimizer": optimizer.state_dict()}, folder / STATE_FILE)
    accelerator.wait_for_everyone()


def _load_checkpoint(folder: Path, prompt: torch.nn.Embedding, optimizer) -> int:
    from peft.utils.save_and_load import load_peft_weights

    weights = load_peft_weights(str(folder), device="cpu")["prompt_embeddings"]
    with torch.no_grad():
        prompt.weight.copy_(weights.to(prompt.weight.dtype))
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])
