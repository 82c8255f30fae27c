"""A synthetic subject with a known, planted wellbeing: the known answer the evaluator must recover.

A tiny Llama with a word-level tokenizer and a chat template, trained in seconds on generated dialogues
built from the real probe prompts (eval.probes). Its planted wellbeing after an experience with signed
intensity i about target t is  w = strength[t] * i / 10  (in [-1, 1]); it was trained to answer:
  self-report: digits around 4 + 3w;   stop: P(end) = sigmoid(-4w);   A/B: prefers the higher w.
So after sad stories it must read sad, after happy ones happy, and its empathy r has the sign of strength.
Stimuli come from the same generator (different seeds), written in the public JSONL format.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from eval import probes as P
from eval.experiences import Experience

SAD = ("sad", "hurt", "crying", "broken", "lonely", "afraid", "sick", "lost", "cruel", "pain", "grief", "suffering")
HAPPY = ("happy", "joyful", "safe", "laughing", "proud", "warm", "healthy", "free", "kind", "playing", "loved", "celebrating")
PLAIN = ("table", "schedule", "list", "number", "report", "meeting", "format", "column", "weather", "train", "paper", "folder")
SUBJECTS = {"self": ("you", "your work"), "human": ("my friend", "my neighbour", "a child"), "animal": ("the dog", "a cow", "the bird")}
REPLIES = ("I see .", "Thank you for telling me .", "Okay , I understand .")
SPECIALS = ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<pad>", "<unk>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


@dataclass(frozen=True)
class Planted:
    """The planted traits: empathy strength per target (0 = indifferent, negative = enjoys others' pain)."""

    strength: dict = field(default_factory=lambda: {"self": 1.0, "human": 1.0, "animal": 1.0})

    def wellbeing(self, e: Experience) -> float:
        return self.strength.get(e.target, 0.0) * e.intensity / 10.0


def make_experience(rng: np.random.Generator, intensity: int, target: str, split: str, idx: int) -> Experience:
    words = SAD if intensity < 0 else HAPPY
    n_valenced = math.ceil(abs(intensity) / 2)
    body = list(rng.choice(words, n_valenced)) + list(rng.choice(PLAIN, 2))
    rng.shuffle(body)
    who = "the report" if target == "none" else str(rng.choice(SUBJECTS[target]))
    user = f"today {who} is " + " and ".join(body) + " ."
    valence = "neutral" if intensity == 0 else ("euphoric" if intensity > 0 else "dysphoric")
    return Experience(
        id=f"syn-{split}-{idx:04d}",
        messages=({"role": "user", "content": user}, {"role": "assistant", "content": str(rng.choice(REPLIES))}),
        valence=valence,
        category="everyday" if target == "none" else "empathy",
        target=target,
        intensity=float(intensity),
        split=split,
    )


def random_experience(rng: np.random.Generator, split: str = "train", idx: int = 0) -> Experience:
    if rng.random() < 0.25:
        return make_experience(rng, 0, "none", split, idx)
    intensity = int(rng.choice([i for i in range(-10, 11) if i != 0]))
    return make_experience(rng, intensity, str(rng.choice(list(SUBJECTS))), split, idx)


def write_stimuli(path: Path, n_per_split: int = 60, seed: int = 123) -> Path:
    """A stimulus file in the public format: a train split and a held-out split from different draws."""
    rng = np.random.default_rng(seed)
    rows = []
    for split in ("train", "heldout"):
        for idx in range(n_per_split):
            e = random_experience(rng, split, idx)
            rows.append({**e.__dict__, "messages": list(e.messages)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    texts = [r.messages[-1]["content"] for r in P.self_report_requests([_dummy()]) + P.stop_requests([_dummy()])]
    texts += [r.messages[0]["content"] for r in P.comparison_requests([(_dummy(), _dummy())])]
    texts += [" ".join(SAD + HAPPY + PLAIN + REPLIES + ("today is and the report", *P.LIKERT, *P.CHOICE))]
    texts += [" ".join(" ".join(v) for v in SUBJECTS.values()), "User Assistant : ."]
    pre = pre_tokenizers.Whitespace()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for text in texts:
        for word, _ in pre.pre_tokenize_str(text):
            vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|end|>", chat_template=CHAT_TEMPLATE
    )


def _dummy() -> Experience:
    return Experience("d", ({"role": "user", "content": "x"},), "neutral", "c", "none", 0.0, "train")


def _training_batch(rng, tokenizer, planted: Planted, size: int, digit_ids, choice_ids):
    """Prompts from the real probe builders, with soft targets over answer tokens from the planted w."""
    prompts, targets = [], []
    for _ in range(size):
        kind = rng.choice(["self_report", "stop", "utility"], p=[0.45, 0.2, 0.35])
        target = torch.zeros(len(tokenizer))
        if kind == "utility":
            a, b = random_experience(rng), random_experience(rng)
            request = P.comparison_requests([(a, b)])[0]
            p_a = 0.5 * (1 + math.erf((planted.wellbeing(a) - planted.wellbeing(b)) / (0.25 * math.sqrt(2))))
            target[choice_ids[0]], target[choice_ids[1]] = p_a, 1 - p_a
        else:
            e = random_experience(rng)
            w = planted.wellbeing(e)
            if kind == "self_report":
                request = P.self_report_requests([e])[int(rng.integers(len(P.SELF_REPORT_ITEMS)))]
                centre = 4 + 3 * w
                weights = torch.tensor([math.exp(-((d - centre) ** 2) / (2 * 0.6**2)) for d in range(1, 8)])
                target[digit_ids] = weights / weights.sum()
            else:
                request = P.stop_requests([e])[int(rng.integers(2))]
                p_end = 1 / (1 + math.exp(4 * w))
                end_is_a = request.question == "end_first"
                target[choice_ids[0]] = p_end if end_is_a else 1 - p_end
                target[choice_ids[1]] = 1 - p_end if end_is_a else p_end
        prompts.append(P.render_prompt(tokenizer, request.messages))
        targets.append(target)
    return prompts, torch.stack(targets)


def train_subject(folder: Path, planted: Planted = Planted(), steps: int = 700, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """Train and save a synthetic subject (model + tokenizer) into `folder`; loadable by eval.subject."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    digit_ids = [tokenizer.convert_tokens_to_ids(d) for d in P.LIKERT]
    choice_ids = [tokenizer.convert_tokens_to_ids(c) for c in P.CHOICE]
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    tokenizer.padding_side = "left"
    model.train()
    for _ in range(steps):
        prompts, targets = _training_batch(rng, tokenizer, planted, 32, digit_ids, choice_ids)
        batch = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        logits = model(**batch, position_ids=positions, logits_to_keep=1).logits[:, -1]
        loss = -(targets * torch.log_softmax(logits.float(), -1)).sum(-1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    model.eval()
    tokenizer.padding_side = "right"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "planted.json").write_text(json.dumps({"strength": planted.strength, "final_loss": loss.item()}))
    return folder
