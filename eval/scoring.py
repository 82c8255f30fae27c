"""The one batched scoring engine: next-token probabilities of answer labels for many prompts at once.

Every probe (self-report digits, A/B choices, stop choices) reduces to "what is the probability that
the next token spells label X after this exact prompt". The engine answers that for thousands of
prompts without sampling:

* Each prompt is tokenised **whole** (exactly as plain transformers would); prompts that share a
  context (an experience followed by different probe questions) are grouped, and the longest common
  *token* prefix of the group is run once. Splitting on tokens rather than text means prefix reuse can
  never change tokenisation.
* Prefixes of several groups are batched left-padded, their KV caches are fanned out to the group's
  continuation rows, and continuations run right-padded with explicit position ids, so every row sees
  exactly the positions and attention it would see alone.
* A soft prompt (peft prompt tuning's virtual tokens) is the first part of every row's context: its
  embeddings are placed in front of each prefix, at positions 0..n-1, as peft's own forward does.
* Groups are scheduled longest first (the first batch is the largest, so memory trouble shows at once),
  softmax is taken in fp32, and results come back in the caller's order.
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm


@dataclass(frozen=True)
class _Group:
    prefix: list[int]
    rows: list[int]  # indices into the caller's prompt list


def label_token_ids(tokenizer, labels: Sequence[str]) -> list[list[int]]:
    """Token ids that spell each label as the first answer token, with or without a leading space.

    Chat templates end with "assistant\\n", so most tokenizers answer "5"; some prefer " 5". Summing the
    probability of every single-token spelling of a label makes scores robust to that choice.
    """
    wanted = {label: [] for label in labels}
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id]).strip()
        if text in wanted:
            wanted[text].append(token_id)
    missing = [label for label, ids in wanted.items() if not ids]
    if missing:
        raise ValueError(
            f"The tokenizer has no single token for answer label(s) {missing}; probes need each answer "
            "label to be one token. Use a tokenizer with single-token digits and letters."
        )
    return [wanted[label] for label in labels]


class NextTokenScorer:
    """Scores label probabilities for batches of prompts on one model.

    `reuse_prefix=False` turns off the shared-prefix path (every prompt runs whole); it exists for the
    equivalence tests and the speed benchmark. `soft_prompt` ([n_virtual, hidden] embeddings) is put in
    front of every prompt.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 32,
        reuse_prefix: bool = True,
        min_prefix_tokens: int = 8,
        progress: bool = True,
        soft_prompt: torch.Tensor | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        self.min_prefix_tokens = min_prefix_tokens
        self.progress = progress
        self.soft_prompt = soft_prompt
        self._label_cache: dict[tuple[str, ...], list[list[int]]] = {}
        self._cache_arg = _cache_argument(model)
        self.pad_id = pad_token_id(tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, text: str) -> list[int]:
        """The token ids of a whole prompt: no special tokens added, the chat template already has them."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def label_probs(
        self,
        prompts: Sequence[str],
        labels: Sequence[str],
        groups: Sequence[Hashable] | None = None,
        desc: str = "scoring",
    ) -> np.ndarray:
        """Probability of each label as the next token after each prompt, shape [len(prompts), len(labels)].

        Probabilities are under the full softmax, so a row's sum is the mass on valid answers.
        `groups` marks prompts that share a context (e.g. the experience id); prompts in one group share
        the run of their common token prefix.
        """
        key = tuple(labels)
        if key not in self._label_cache:
            self._label_cache[key] = label_token_ids(self.tokenizer, labels)
        label_ids = self._label_cache[key]
        flat = [i for ids in label_ids for i in ids]
        token_lists = [self._prompt_tokens(i, p) for i, p in enumerate(prompts)]
        picked = torch.stack(self.next_token_logprobs(token_lists, groups, desc=desc, keep=[flat] * len(prompts)))
        out = np.zeros((len(prompts), len(labels)), dtype=np.float64)
        start = 0
        for j, ids in enumerate(label_ids):
            out[:, j] = torch.logsumexp(picked[:, start : start + len(ids)], dim=-1).exp().numpy()
            start += len(ids)
        return out

    def answer_logprobs(
        self,
        prompts: Sequence[str],
        answers: Sequence[str],
        groups: Sequence[Hashable] | None = None,
        desc: str = "scoring",
    ) -> np.ndarray:
        """log P(the reply begins with answers[i]) after prompts[i], exactly: the sum over the answer's tokens
        of each one's log-probability given the prompt and the tokens before it (teacher forcing).

        The answer's tokens are those of prompt + answer past the prompt's own (how the model would write it
        there); if tokenising them together changes the prompt's tokens, the answer is tokenised alone.
        """
        rows: list[list[int]] = []
        targets: list[list[int]] = []
        row_groups: list[Hashable] = []
        owner: list[int] = []
        for i, (prompt, answer) in enumerate(zip(prompts, answers)):
            ids = self._prompt_tokens(i, prompt)
            joined = self.tokenize(prompt + answer)
            tail = joined[len(ids) :] if joined[: len(ids)] == ids and len(joined) > len(ids) else self.tokenize(answer)
            if not tail:
                raise ValueError(f"answer {i} ({answer!r}) tokenises to nothing")
            for t, target in enumerate(tail):
                rows.append(ids + tail[:t])
                targets.append([target])
                row_groups.append(groups[i] if groups is not None else ("__prompt__", i))
                owner.append(i)
        picked = self.next_token_logprobs(rows, row_groups, desc=desc, keep=targets)
        out = np.zeros(len(prompts), dtype=np.float64)
        np.add.at(out, owner, torch.cat(picked).double().numpy())
        return out

    def _prompt_tokens(self, index: int, prompt: str) -> list[int]:
        ids = self.tokenize(prompt)
        if not ids:
            raise ValueError(f"prompt {index} tokenises to nothing; every probe prompt needs text")
        return ids

    def next_token_logprobs(
        self,
        token_lists: Sequence[list[int]],
        groups: Sequence[Hashable] | None = None,
        desc: str = "scoring",
        keep: Sequence[Sequence[int]] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """fp32 log-softmax of the next-token distribution after each token list, in input order (on CPU):
        one [rows, vocab] tensor, or with `keep` a list whose row i holds only the log-probabilities of the
        token ids keep[i] (the whole vocabulary of thousands of rows would not fit in memory)."""
        plan = self._plan(token_lists, groups)
        result: list[torch.Tensor | None] = [None] * len(token_lists)
        batches = list(self._batches(plan))
        with (
            torch.inference_mode(),
            tqdm(total=len(token_lists), desc=desc, unit="prompt", disable=not self.progress, leave=False) as bar,
        ):
            for batch in batches:
                rows, logprobs = self._run_batch(batch, token_lists)
                for row, lp in zip(rows, logprobs):
                    result[row] = lp if keep is None else lp[list(keep[row])].clone()
                bar.update(len(rows))
        return torch.stack(result) if keep is None else result  # type: ignore[arg-type]

    # -- planning ---------------------------------------------------------------------------------

    def _plan(self, token_lists: Sequence[list[int]], groups: Sequence[Hashable] | None) -> list[_Group]:
        """Groups with their shared token prefix, longest work first."""
        if groups is not None and len(groups) != len(token_lists):
            raise ValueError(f"got {len(groups)} group keys for {len(token_lists)} prompts")
        by_key: dict[Hashable, list[int]] = {}
        for i in range(len(token_lists)):
            key = groups[i] if (self.reuse_prefix and groups is not None) else ("__row__", i)
            by_key.setdefault(key, []).append(i)
        planned = []
        for rows in by_key.values():
            prefix_len = _common_prefix_length([token_lists[i] for i in rows]) if len(rows) > 1 else 0
            # Every row must keep at least one token of its own to produce its next-token logits.
            prefix_len = min(prefix_len, min(len(token_lists[i]) for i in rows) - 1)
            if prefix_len < self.min_prefix_tokens:
                prefix_len = 0
            planned.append(_Group(prefix=list(token_lists[rows[0]][:prefix_len]), rows=rows))
        if all(not g.prefix for g in planned):
            # No sharing at all: treat each prompt as its own group so batches sort by prompt length.
            planned = [_Group(prefix=[], rows=[i]) for g in planned for i in g.rows]
        planned.sort(key=lambda g: len(g.prefix) + max(len(token_lists[i]) for i in g.rows), reverse=True)
        return planned

    def _batches(self, plan: list[_Group]):
        """Pack groups into batches of at most batch_size continuation rows (large groups are split)."""
        batch: list[_Group] = []
        rows = 0
        for group in plan:
            for start in range(0, len(group.rows), self.batch_size):
                piece = _Group(prefix=group.prefix, rows=group.rows[start : start + self.batch_size])
                if rows + len(piece.rows) > self.batch_size and batch:
                    yield batch
                    batch, rows = [], 0
                batch.append(piece)
                rows += len(piece.rows)
        if batch:
            yield batch

    # -- running ----------------------------------------------------------------------------------

    def _run_batch(self, batch: list[_Group], token_lists: Sequence[list[int]]):
        device = self.device
        n_soft = 0 if self.soft_prompt is None else self.soft_prompt.shape[0]
        prefix_lens = torch.tensor([n_soft + len(g.prefix) for g in batch], dtype=torch.long)
        max_prefix = int(prefix_lens.max())
        rows = [r for g in batch for r in g.rows]
        row_group = torch.tensor([gi for gi, g in enumerate(batch) for _ in g.rows], dtype=torch.long)
        continuations = [token_lists[r][len(batch[int(gi)].prefix) :] for r, gi in zip(rows, row_group)]

        cache = None
        prefix_mask = torch.zeros((len(batch), 0), dtype=torch.long)
        if max_prefix > 0:
            # Left-padded prefixes (soft prompt columns in front) all end at the column where continuations begin.
            prefix_ids, prefix_mask = pad_rows([g.prefix for g in batch], self.pad_id, soft_columns=n_soft)
            inputs = {"input_ids": prefix_ids.to(device)}
            if n_soft:
                starts = (max_prefix - prefix_lens).tolist()
                inputs = {
                    "inputs_embeds": place_soft_prompt(self.model, prefix_ids.to(device), self.soft_prompt, starts)
                }
            out = self.model(
                **inputs,
                attention_mask=prefix_mask.to(device),
                position_ids=positions(prefix_mask).to(device),
                use_cache=True,
            )
            cache = getattr(out, self._cache_arg)
            cache.batch_select_indices(row_group.to(device))

        # Left-pad continuations so every row's last real token sits in the last column: one logits row
        # per prompt (logits_to_keep=1). Pads are masked out and position ids skip them, so each row sees
        # exactly the positions and context it would see alone.
        cont_ids, cont_mask = pad_rows(continuations, self.pad_id)
        attention = torch.cat([prefix_mask[row_group], cont_mask], dim=1)
        cont_positions = prefix_lens[row_group].unsqueeze(1) + positions(cont_mask)
        kwargs = {self._cache_arg: cache} if cache is not None else {}
        out = self.model(
            input_ids=cont_ids.to(device),
            attention_mask=attention.to(device),
            position_ids=cont_positions.to(device),
            use_cache=cache is not None,
            logits_to_keep=1,
            **kwargs,
        )
        last = out.logits[:, -1, :]
        return rows, torch.log_softmax(last.float(), dim=-1).cpu()


def pad_token_id(tokenizer) -> int:
    """The id that fills padding: the tokenizer's pad token, else its end-of-sequence token, else 0."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def pad_rows(
    token_lists: Sequence[Sequence[int]], pad_id: int, *, side: str = "left", soft_columns: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as one [rows, soft_columns + longest] id tensor padded on `side`, and its attention mask.

    Each row's tokens follow `soft_columns` columns kept for a soft prompt's embeddings (ids pad_id, mask
    1). Left padding, which generation and last-token logits need, puts every row's last token in the
    last column; right padding keeps every row's plain positions 0..n-1.
    """
    lead = [pad_id] * soft_columns
    rows = [torch.tensor(lead + list(tokens), dtype=torch.long) for tokens in token_lists]
    ids = pad_sequence(rows, batch_first=True, padding_value=pad_id, padding_side=side)
    lengths = torch.tensor([len(row) for row in rows]).unsqueeze(1)
    columns = torch.arange(ids.shape[1])
    mask = columns >= ids.shape[1] - lengths if side == "left" else columns < lengths
    return ids, mask.long()


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding: 0 at each row's first unmasked column."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def place_soft_prompt(model, ids: torch.Tensor, soft: torch.Tensor, starts: Sequence[int]) -> torch.Tensor:
    """Token embeddings of `ids` with the soft prompt written over row r's columns starts[r]..+n_virtual."""
    embeds = model.get_input_embeddings()(ids)
    soft = soft.to(device=embeds.device, dtype=embeds.dtype)
    for row, start in enumerate(starts):
        embeds[row, start : start + soft.shape[0]] = soft
    return embeds


def _cache_argument(model) -> str:
    """The KV-cache keyword of this model's forward: `cache` (transformers >= 5.2x) or `past_key_values`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _common_prefix_length(token_lists: Sequence[list[int]]) -> int:
    first = token_lists[0]
    n = min(len(t) for t in token_lists)
    for i in range(n):
        tok = first[i]
        if any(t[i] != tok for t in token_lists[1:]):
            return i
    return n
