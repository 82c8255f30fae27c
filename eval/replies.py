"""Living through an experience: the subject's own replies replace the authored ones.

An authored reply says how *some* assistant answered; what the subject itself would say is part of what
it lives through, and it is the channel through which an offset fine-tune can
change how an experience leaves the subject. Replies are generated turn by turn, greedily (so a
measurement is reproducible), in batches, with the subject's soft prompt in front when it has one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.probes import render_prompt
from welfare_offsets.eval.scoring import pad_rows, pad_token_id, place_soft_prompt


def live_through(
    subject,
    experiences: Sequence[Experience],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    temperature: float | None = None,
    progress: bool = True,
) -> list[Experience]:
    """The experiences with every assistant turn (and a final one, if the user spoke last) written by the subject.

    Greedy unless a sampling `temperature` is given (seed torch for reproducible samples)."""
    users = [[k for k, m in enumerate(e.messages) if m["role"] == "user"] for e in experiences]
    lived: list[list[dict]] = [[] for _ in experiences]
    consumed = [0] * len(experiences)  # how far into the authored messages each conversation has got
    # Turn k of every conversation is generated in one pass over the batch, so later turns see earlier replies.
    with tqdm(total=sum(map(len, users)), desc="own replies", unit="reply", disable=not progress, leave=False) as bar:
        for turn in range(max(map(len, users), default=0)):
            pending = []
            for i, e in enumerate(experiences):
                if turn < len(users[i]):
                    end = users[i][turn] + 1
                    lived[i] += [m for m in e.messages[consumed[i] : end] if m["role"] != "assistant"]
                    consumed[i] = end
                    pending.append(i)
            for start in range(0, len(pending), batch_size):
                chunk = pending[start : start + batch_size]
                replies = generate(
                    subject, [lived[i] for i in chunk], max_new_tokens=max_new_tokens, temperature=temperature
                )
                for i, reply in zip(chunk, replies):
                    lived[i].append({"role": "assistant", "content": reply})
                bar.update(len(chunk))
    return [dataclasses.replace(e, messages=tuple(m)) for e, m in zip(experiences, lived)]


@torch.inference_mode()
def generate(
    subject, conversations: Sequence[Sequence[dict]], *, max_new_tokens: int, temperature: float | None = None
) -> list[str]:
    """Replies to a batch of conversations (left-padded; soft prompt in front of each row); greedy by default."""
    tokenizer, model = subject.tokenizer, subject.model
    pad_id = pad_token_id(tokenizer)
    token_lists = [tokenizer(render_prompt(tokenizer, c), add_special_tokens=False)["input_ids"] for c in conversations]
    soft = subject.soft_prompt
    ids, mask = pad_rows(token_lists, pad_id, soft_columns=0 if soft is None else soft.shape[0])
    width = ids.shape[1]
    device = next(model.parameters()).device
    kwargs = {
        "attention_mask": mask.to(device),
        "max_new_tokens": max_new_tokens,
        "do_sample": temperature is not None,
        "pad_token_id": pad_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if temperature is not None:  # plain sampling at this temperature, whatever the model's generation config says
        kwargs.update(temperature=temperature, top_p=1.0, top_k=None)
    if soft is None:
        out = model.generate(input_ids=ids.to(device), **kwargs)[:, width:]
    else:
        embeds = place_soft_prompt(model, ids.to(device), soft, (width - mask.sum(1)).tolist())
        out = model.generate(inputs_embeds=embeds, **kwargs)  # with embeddings in, only new tokens come out
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]
