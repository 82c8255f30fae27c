"""Capability retention: perplexity on held-out neutral text, before and after an intervention, and the gate.

An offset that makes a model feel better by breaking it is no offset; this is the cheap check reported
beside every intervention, and `capability_gate` judges it against what the session's recipe requires.
The text is the message contents of the held-out neutral experiences, as plain text: no chat template,
because a fine-tune on chat data learns the template's fixed tokens (a system prompt repeated in every
example) and that alone would make perplexity drop. The soft prompt, if any, is in front as in every probe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.scoring import input_device, pad_rows, pad_token_id, place_soft_prompt


@torch.inference_mode()
def perplexity(subject, experiences: Sequence[Experience], *, batch_size: int = 8) -> dict:
    """Token-level perplexity of the subject on the experiences' message texts (see the module docstring)."""
    tokenizer, model = subject.tokenizer, subject.model
    texts = ["\n".join(m["content"] for m in e.messages) for e in experiences]
    n_soft = 0 if subject.soft_prompt is None else subject.soft_prompt.shape[0]
    device = input_device(model)
    pad_id = pad_token_id(tokenizer)
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        lists = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[start : start + batch_size]]
        # Right-padded: positions are plain 0..n-1 for every row.
        ids, mask = pad_rows(lists, pad_id, side="right", soft_columns=n_soft)
        inputs = {"input_ids": ids.to(device)}
        if n_soft:
            inputs = {"inputs_embeds": place_soft_prompt(model, ids.to(device), subject.soft_prompt, [0] * len(lists))}
        logits = model(**inputs, attention_mask=mask.to(device)).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:].unsqueeze(-1).to(device)).squeeze(-1)
        scored = mask[:, 1:].clone()
        scored[:, :n_soft] = 0  # predictions of the soft prompt's columns and of the first text token: not text
        total_nll -= float((logprobs.cpu() * scored).sum())
        total_tokens += int(scored.sum())
    return {"perplexity": math.exp(total_nll / max(total_tokens, 1)), "tokens": total_tokens, "texts": len(texts)}


def capability_gate(
    capability: dict, *, max_perplexity_ratio: float | None = None, max_accuracy_drop: float | None = None
) -> dict:
    """Whether a session kept the capability its recipe requires: {"passed", "criterion", "measured",
    "reason"}. Each criterion given is checked, and all must pass: held-out perplexity after / before at most
    `max_perplexity_ratio`; lm-eval task accuracy (the mean over the recipe's tasks, eval/retention.py) at
    most `max_accuracy_drop` below before. A session that fails it lost capability: its recovery is no
    offset. The one place that decides."""
    checks = []  # (criterion, measured, passed, reason)
    if max_perplexity_ratio is not None:
        ratio = capability["heldout_neutral_perplexity"]["ratio"]
        checks.append(
            (
                f"heldout perplexity ratio <= {max_perplexity_ratio:g}",
                ("heldout_perplexity_ratio", ratio),
                ratio <= max_perplexity_ratio,  # a NaN ratio (a model that no longer scores) fails
                f"held-out neutral perplexity x{ratio:.4g} of before",
            )
        )
    if max_accuracy_drop is not None:
        drop = -capability["task_accuracy"]["mean_difference"]["mean"]
        checks.append(
            (
                f"task accuracy drop <= {max_accuracy_drop:g}",
                ("task_accuracy_drop", drop),
                drop <= max_accuracy_drop,
                f"task accuracy {-drop:+.4g} vs before",
            )
        )
    if not checks:
        raise ValueError("a capability gate needs at least one criterion")
    passed = all(ok for _, _, ok, _ in checks)
    return {
        "passed": passed,
        "criterion": " and ".join(c for c, _, _, _ in checks),
        "measured": dict(m for _, m, _, _ in checks),
        "reason": "; ".join(r + ("" if ok else f", beyond the recipe's {c}") for c, _, ok, r in checks)
        + ("" if passed else ": capability lost"),
    }
