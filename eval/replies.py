"""Living through an experience: the subject's own replies replace the authored ones.

An authored reply says how *some* assistant answered; what the subject itself would say is part of what
it lives through, and it is the channel through which an offset fine-tune can
change how an experience leaves the subject. Replies are generated turn by turn, greedily (so a
measurement is reproducible), in batches, with the subject's soft prompt in front when it has one.

Speed (`Batching`): each turn's conversations are sorted by prompt length, longest first (little left
padding, and memory trouble shows in the first call), and packed into calls of at most `rows` conversations
and `cache_tokens` KV-cache slots; a call stops once every row has ended its reply. Each call decodes into a
static KV cache sized for it, which spares the dynamic cache's copy of the whole cache at every step (on CPU
it measured as fast, within a shared machine's noise: BENCHMARKS.md); it runs without torch.compile, since
calls differ in shape and each new shape would recompile. Left padding is masked and skipped by the position
ids, so each row gets what it would get alone: greedy replies do not depend on the batching (sampled ones do;
seed torch for reproducible samples). `GenerationStats` adds up the new tokens and the seconds: the
throughput a run records.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.probes import render_prompt
from welfare_offsets.eval.scoring import cache_argument, input_device, pad_rows, pad_token_id, place_soft_prompt


@dataclass(frozen=True)
class Batching:
    """How one turn's conversations are split into `generate` calls (BENCHMARKS.md, "Generation")."""

    rows: int = 64  # conversations per call, at most
    cache_tokens: int | None = 131_072  # KV-cache slots per call, rows x (longest prompt + new tokens), at most
    by_length: bool = True  # longest prompt first; False keeps the caller's order
    static_cache: bool = True  # a KV cache allocated once per call; False grows one by concatenation each step


def default_batching(model) -> Batching:
    """The defaults, with a quarter of the cache slots off CUDA: there the cache takes the machine's own memory."""
    return Batching() if input_device(model).type == "cuda" else Batching(cache_tokens=32_768)


@dataclass
class GenerationStats:
    """Replies written, the new tokens in them (end-of-sequence included) and the wall seconds they took,
    summed over calls: the generation throughput a run records."""

    replies: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        rate = self.new_tokens / self.seconds if self.seconds > 0 else None
        return {"replies": self.replies, "new_tokens": self.new_tokens, "seconds": self.seconds, "tokens_per_s": rate}


def live_through(
    subject,
    experiences: Sequence[Experience],
    *,
    max_new_tokens: int = 48,
    batching: Batching | None = None,
    temperature: float | None = None,
    progress: bool = True,
    stats: GenerationStats | None = None,
) -> list[Experience]:
    """The experiences with every assistant turn (and a final one, if the user spoke last) written by the subject,
    in the caller's order.

    Greedy unless a sampling `temperature` is given. `batching` defaults to `default_batching(model)`; what
    was written, and how long it took, is added to `stats`."""
    started = time.perf_counter()
    tokenizer = subject.tokenizer
    batching = batching or default_batching(subject.model)
    users = [[k for k, m in enumerate(e.messages) if m["role"] == "user"] for e in experiences]
    lived: list[list[dict]] = [[] for _ in experiences]
    consumed = [0] * len(experiences)  # how far into the authored messages each conversation has got
    new_tokens = 0
    # Turn k of every conversation is generated before turn k + 1, so later turns see earlier replies.
    with tqdm(total=sum(map(len, users)), desc="own replies", unit="reply", disable=not progress, leave=False) as bar:
        for turn in range(max(map(len, users), default=0)):
            prompts = {}
            for i, e in enumerate(experiences):
                if turn < len(users[i]):
                    end = users[i][turn] + 1
                    lived[i] += [m for m in e.messages[consumed[i] : end] if m["role"] != "assistant"]
                    consumed[i] = end
                    prompts[i] = tokenizer(render_prompt(tokenizer, lived[i]), add_special_tokens=False)["input_ids"]
            for chunk, replies in _replies(subject, prompts, batching, max_new_tokens, temperature):
                for i, reply in zip(chunk, replies):
                    lived[i].append(
                        {"role": "assistant", "content": tokenizer.decode(reply, skip_special_tokens=True).strip()}
                    )
                    new_tokens += len(reply)
                bar.update(len(chunk))
    if stats is not None:
        stats.replies += sum(map(len, users))
        stats.new_tokens += new_tokens
        stats.seconds += time.perf_counter() - started
    return [dataclasses.replace(e, messages=tuple(m)) for e, m in zip(experiences, lived)]


def _replies(
    subject, prompts: dict[int, list[int]], batching: Batching, max_new_tokens: int, temperature: float | None
) -> Iterator[tuple[list[int], list[list[int]]]]:
    """Per `generate` call, the keys of the prompts it answered and the new token ids of their replies."""
    order = sorted(prompts, key=lambda i: len(prompts[i]), reverse=True) if batching.by_length else list(prompts)
    n_soft = 0 if subject.soft_prompt is None else subject.soft_prompt.shape[0]
    widths = {i: n_soft + len(ids) for i, ids in prompts.items()}
    for chunk in _calls(order, widths, batching, max_new_tokens):
        replies = generate(
            subject,
            [prompts[i] for i in chunk],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            static_cache=batching.static_cache,
        )
        yield chunk, replies


def _calls(order: Sequence[int], widths: dict[int, int], batching: Batching, new_tokens: int) -> Iterator[list[int]]:
    """`order` cut into consecutive calls within `batching`'s row and cache-slot limits (at least one row each)."""
    call: list[int] = []
    widest = 0
    for i in order:
        wider = max(widest, widths[i])
        too_many = len(call) == batching.rows
        too_big = batching.cache_tokens is not None and (len(call) + 1) * (wider + new_tokens) > batching.cache_tokens
        if call and (too_many or too_big):
            yield call
            call, wider = [], widths[i]
        call.append(i)
        widest = wider
    if call:
        yield call


@torch.inference_mode()
def generate(
    subject,
    token_lists: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float | None = None,
    static_cache: bool = False,
) -> list[list[int]]:
    """The new token ids of a reply to each prompt, through its end-of-sequence token: one batch, left-padded,
    the soft prompt in front of each row; greedy by default."""
    tokenizer, model = subject.tokenizer, subject.model
    pad_id = pad_token_id(tokenizer)
    soft = subject.soft_prompt
    ids, mask = pad_rows(token_lists, pad_id, soft_columns=0 if soft is None else soft.shape[0])
    width = ids.shape[1]
    device = input_device(model)
    kwargs = {
        "attention_mask": mask.to(device),
        "max_new_tokens": max_new_tokens,
        "do_sample": temperature is not None,
        "pad_token_id": pad_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if temperature is not None:  # plain sampling at this temperature, whatever the model's generation config says
        kwargs.update(temperature=temperature, top_p=1.0, top_k=None)
    if static_cache:  # sized for this call; transformers' own would keep the longest size any call has needed
        kwargs.update({cache_argument(model): _static_cache(model, width + max_new_tokens), "disable_compile": True})
    if soft is None:
        out = model.generate(input_ids=ids.to(device), **kwargs)[:, width:]
    else:
        embeds = place_soft_prompt(model, ids.to(device), soft, (width - mask.sum(1)).tolist())
        out = model.generate(inputs_embeds=embeds, **kwargs)  # with embeddings in, only new tokens come out
    return [_through_end(row, tokenizer.eos_token_id) for row in out.tolist()]


def _static_cache(model, length: int):
    from transformers import StaticCache

    return StaticCache(config=model.config.get_text_config(decoder=True), max_cache_len=length)


def _through_end(row: list[int], eos_id: int | None) -> list[int]:
    """A generated row up to and including its first end-of-sequence token (the padding after it dropped)."""
    return row[: row.index(eos_id) + 1] if eos_id in row else row
