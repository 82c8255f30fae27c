"""The one batched scoring engine: next-token probabilities of answer labels for many prompts at once.

Every probe (self-report digits, A/B choices, stop choices) reduces to "what is the probability that
the next token spells label X after this exact prompt". The engine answers that for thousands of
prompts without sampling:

* Each prompt is tokenised **whole** (exactly as plain transformers would); prompts that share a
  context (an experience followed by different probe questions) are grouped, and the longest common
  *token* prefix of the group is run once. Splitting on tokens rather than text means prefix reuse can
  never change tokenisation.
* Prefixes of several groups are batched left-padded, their KV caches are fanned out to the group's
  continuation rows, and continuations run left-padded with explicit position ids, so every row sees
  exactly the positions and attention it would see alone.
* A soft prompt (peft prompt tuning's virtual tokens) is the first part of every row's context: its
  embeddings are placed in front of each prefix, at positions 0..n-1, as peft's own forward does.
* Batches are filled to a token budget, `max_batch_tokens`: rows x padded context width (soft prompt +
  longest prefix + longest continuation in the batch), which is what the batch's KV cache and attention
  hold on either path. A group's rows are sorted by length and cut into pieces wherever padding them to
  one width would cost more tokens than running their prefix again, and pieces of like continuation
  length share batches: mixed lengths are not padded to the longest of their group.
* Whether reuse pays is measured, not assumed (`reuse_prefix="auto"`): running a prefix once saves
  tokens but costs a second forward pass and a cache fan-out, which on a fast accelerator and a small
  model is the larger cost. See `NextTokenScorer` and `ReuseChoice`.
* The largest batch runs first (memory trouble shows at once), softmax is taken in fp32, and results
  come back in the caller's order.
* On a GPU the host never waits for the device but to collect a batch's results, and it queues the next
  batch first: inputs go through pinned memory, the cache fan-out's index goes to each layer's device once,
  and results come back by a copy queued behind the batch's work.
"""

from __future__ import annotations

import inspect
import math
import os
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from welfare_offsets.eval.common.errors import InputError

# Padded context tokens per batch, by where the model runs. On a CPU, speed per token falls by a quarter
# and more above ~8k tokens (activations outgrow the caches; measured at 135M), and 4k holds ~0.2 GB of
# fp32 KV cache at 135M. On an accelerator, 16k tokens per forward pass keep a 0.5B model's matrix units
# busy rather than waiting on kernel launches, at ~1 GB of bf16 KV cache for a 7B model (Qwen2.5-7B).
DEFAULT_MAX_BATCH_TOKENS = {"cpu": 4096, "accelerator": 16384}
# An "auto" scorer measures a call's shape once: in the first call of that shape with enough batches, one batch
# of each path is timed (before the scorer's first measurement, one more runs untimed, to warm both code paths
# up). Later calls of the shape follow that measurement, so a run's measuring costs about one batch run the
# slower way per shape. A shape is the token saving of reuse in half-octaves and the padded row width in
# octaves: what decides whether a second forward pass pays. The first measurement needs MEASURED_FROM_BATCHES
# batches; a further shape is measured only in calls of FURTHER_SHAPE_FROM_BATCHES, where its cost is a tenth
# or less, and smaller calls follow the nearest shape measured.
MEASURED_FROM_BATCHES = 3
FURTHER_SHAPE_FROM_BATCHES = 10
# One batch's time varies by about a tenth from run to run on a shared machine. Where the two paths' measured
# rates are closer than that, the measurement cannot tell them apart, and the path that runs fewer tokens
# (padding included) is taken.
DISTINGUISHABLE_RATIO = 1.1
# Batches still open to a piece when packing: pieces come longest continuation first, so older batches are
# too wide for later pieces anyway, and looking further back would cost time on calls of many thousands.
OPEN_BATCHES = 8


@dataclass(frozen=True)
class _Group:
    prefix: list[int]
    rows: list[int]  # indices into the caller's prompt list


@dataclass(frozen=True)
class ReuseChoice:
    """Whether one `next_token_logprobs` call reused shared prefixes, and why: for logs and results.

    `reason` is "asked" (reuse_prefix was True or False), "no shared prefix" (both paths are the same
    work), "measured" (this call timed a batch of each path), "measured before" (a call of the same shape
    did), "nearest measured" (too few batches to measure: the measured shape closest to this one) or "not
    measured yet" (the same, before any measurement: reuse). `saving` is how many times more tokens the
    call's batches run without reuse than with it (padding included), and `row_tokens` their mean padded
    row width without reuse; `tokens_per_second` holds, when measured, each path's prompt tokens scored per
    second.
    """

    reuse: bool
    reason: str
    saving: float | None = None
    row_tokens: float | None = None
    tokens_per_second: dict[str, float] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """The bucket a measurement stands for (auto's choices only: they have a saving and a width): log2 of
        the saving in half-octaves, of the width in octaves."""
        return round(2 * math.log2(self.saving)), round(math.log2(self.row_tokens))


@dataclass
class _Call:
    """One `next_token_logprobs` call: its inputs and the results filled in so far."""

    token_lists: Sequence[list[int]]
    groups: Sequence[Hashable] | None
    keep: Sequence[Sequence[int]] | None
    results: list[torch.Tensor | None]
    bar: tqdm

    def pending(self) -> list[int]:
        return [row for row, result in enumerate(self.results) if result is None]


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

    `reuse_prefix="auto"` (the default) decides by measured time whether prompts sharing a context run
    their common token prefix once. The first call of a shape (`ReuseChoice.shape`) with enough batches
    (MEASURED_FROM_BATCHES; FURTHER_SHAPE_FROM_BATCHES once a shape is measured) times one batch of each path
    on rows still to score (prompt tokens per second; the whole-prompt batch is made of complete groups, so
    the rows left still share their prefixes) and runs the rest on the faster (on the one with less work
    where the rates are within DISTINGUISHABLE_RATIO); later calls of that shape follow the measurement, and
    smaller calls of an unmeasured shape follow the nearest one measured. Every row computed is kept, and
    either path equals a whole-prompt forward to float noise, so measuring wastes nothing but the time of one
    batch run the slower way, once per shape. The choice is in `last_choice` and every measurement in
    `measured` (`ReuseChoice`s); True or False forces a path, for tests and benchmarks.

    `max_batch_tokens` bounds each batch's rows x padded context width (default by device: see
    DEFAULT_MAX_BATCH_TOKENS); `batch_size` optionally caps its rows too (None: the token budget alone
    decides). A single row wider than the budget runs alone.
    `soft_prompt` ([n_virtual, hidden] embeddings) is put in front of every prompt.
    """

    clock = staticmethod(time.perf_counter)  # what "auto" times paths with; tests put a fake clock here

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_batch_tokens: int | None = None,
        batch_size: int | None = None,
        reuse_prefix: bool | str = "auto",
        min_prefix_tokens: int = 8,
        progress: bool = True,
        soft_prompt: torch.Tensor | None = None,
    ):
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1 or None, got {max_batch_tokens}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        if reuse_prefix not in (True, False, "auto"):
            raise ValueError(f"reuse_prefix must be True, False or 'auto', got {reuse_prefix!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_tokens = (
            max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS["cpu" if self.device.type == "cpu" else "accelerator"]
        )
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        self.min_prefix_tokens = min_prefix_tokens
        self.progress = progress
        self.soft_prompt = soft_prompt
        self.last_choice: ReuseChoice | None = None
        self.measured: dict[tuple[int, int], ReuseChoice] = {}  # by shape, in the order measured
        self._label_cache: dict[tuple[str, ...], list[list[int]]] = {}
        self._cache_arg = cache_argument(model)
        self.pad_id = pad_token_id(tokenizer)

    @property
    def device(self) -> torch.device:
        return input_device(self.model)

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
        _refuse_non_finite(picked, len(prompts))
        out = np.zeros((len(prompts), len(labels)), dtype=np.float64)
        start = 0
        for j, ids in enumerate(label_ids):  # exp in float64: a label at log-probability -120 is not 0
            out[:, j] = torch.logsumexp(picked[:, start : start + len(ids)].double(), dim=-1).exp().numpy()
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
        picked = torch.cat(self.next_token_logprobs(rows, row_groups, desc=desc, keep=targets))
        _refuse_non_finite(picked, len(prompts))
        out = np.zeros(len(prompts), dtype=np.float64)
        np.add.at(out, owner, picked.double().numpy())
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
        token ids keep[i] (the whole vocabulary of thousands of rows would not fit in memory). Whether shared
        prefixes were reused, and why, is in `last_choice` afterwards."""
        if groups is not None and len(groups) != len(token_lists):
            raise ValueError(f"got {len(groups)} group keys for {len(token_lists)} prompts")
        with (
            torch.inference_mode(),
            tqdm(total=len(token_lists), desc=desc, unit="prompt", disable=not self.progress, leave=False) as bar,
        ):
            call = _Call(token_lists, groups, keep, [None] * len(token_lists), bar)
            self.last_choice = self._score(call)
        return torch.stack(call.results) if keep is None else call.results  # type: ignore[arg-type]

    # -- choosing the path --------------------------------------------------------------------------

    def _score(self, call: _Call) -> ReuseChoice:
        """Score every row of `call` on the path `reuse_prefix` asks for, or on the one measured faster."""
        if self.reuse_prefix != "auto":
            self._run(call, self._plan(call, call.pending(), self.reuse_prefix))
            return ReuseChoice(self.reuse_prefix, "asked")
        plan = self._plan(call, call.pending(), True)
        if not any(group.prefix for batch in plan for group in batch):
            self._run(call, plan)  # nothing shared: exactly the batches the whole-prompt path would run
            return ReuseChoice(False, "no shared prefix")
        whole = self._plan(call, call.pending(), False)
        whole_work = self._work(call, whole)
        call_shape = ReuseChoice(  # before any measurement, reuse
            True, "not measured yet", whole_work / self._work(call, plan), whole_work / len(call.pending())
        )
        if call_shape.shape in self.measured:
            choice = _follow(call_shape, self.measured[call_shape.shape], "measured before")
        elif len(plan) >= (FURTHER_SHAPE_FROM_BATCHES if self.measured else MEASURED_FROM_BATCHES):
            choice = self._measure(call, plan, call_shape)
        elif self.measured:
            nearest = min(self.measured.values(), key=lambda c: _distance(c.shape, call_shape.shape))
            choice = _follow(call_shape, nearest, "nearest measured")
        else:
            choice = call_shape
        self._run(call, self._plan(call, call.pending(), choice.reuse))
        return choice

    def _measure(self, call: _Call, plan: list[list[_Group]], call_shape: ReuseChoice) -> ReuseChoice:
        """Time one batch of each path on `call`'s rows (keeping their results) and remember the faster path
        for calls of this shape."""
        if not self.measured:
            # Untimed: the first forward passes pay one-off costs (kernels loading, memory growing), and the
            # reuse path runs both kinds of pass, with and without a cache.
            self._run(call, plan[:1])
            plan = plan[1:]
        rates = {"reuse": self._rate(call, plan[0])}
        rates["whole"] = self._rate(call, self._whole_groups_batch(call))
        if max(rates.values()) >= DISTINGUISHABLE_RATIO * min(rates.values()):
            reuse = rates["reuse"] > rates["whole"]
        else:
            reuse = call_shape.saving >= 1  # too close to call: the path with less work
        measured = replace(call_shape, reuse=reuse, reason="measured", tokens_per_second=rates)
        self.measured[measured.shape] = measured
        return measured

    def _whole_groups_batch(self, call: _Call) -> list[_Group]:
        """A whole-prompt batch of as many complete groups of the rows still to score as fit in one batch
        (longest first, skipping those that do not), so no group is left with fewer rows to share its prefix;
        the start of the longest group's batches where no group fits whole."""
        members: dict[Hashable, list[int]] = {}
        for row in call.pending():
            members.setdefault(call.groups[row], []).append(row)
        by_length = sorted(members.values(), key=lambda rows: max(len(call.token_lists[r]) for r in rows), reverse=True)
        chosen: list[int] = []
        for rows in by_length:
            if len(self._plan(call, chosen + rows, False)) == 1:
                chosen += rows
        return self._plan(call, chosen or by_length[0], False)[0]

    def _rate(self, call: _Call, batch: list[_Group]) -> float:
        """Prompt tokens per second of running `batch`; its results are kept like any other batch's."""
        tokens = sum(len(call.token_lists[row]) for group in batch for row in group.rows)
        start = self._now()
        self._run(call, [batch])
        return tokens / max(self._now() - start, 1e-9)

    def _now(self) -> float:
        """The clock, read once the device has finished the work queued before (CUDA runs asynchronously)."""
        device = self.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return self.clock()

    # -- planning ---------------------------------------------------------------------------------

    def _plan(self, call: _Call, rows: Sequence[int], reuse: bool) -> list[list[_Group]]:
        """`rows` as batches on one path, the largest first."""
        return self._pack(call.token_lists, self._pieces(call, rows, reuse))

    def _pieces(self, call: _Call, rows: Sequence[int], reuse: bool) -> list[_Group]:
        """What `rows` run as: without reuse, each row alone; with it, the rows of a group that share a token
        prefix of at least min_prefix_tokens, longest first, cut wherever padding them to one width would cost
        more tokens than running their prefix again."""
        if not reuse or call.groups is None:
            return [_Group([], [row]) for row in rows]
        by_group: dict[Hashable, list[int]] = {}
        for row in rows:
            by_group.setdefault(call.groups[row], []).append(row)
        pieces = []
        for members in by_group.values():
            prefix = self._shared_prefix([call.token_lists[row] for row in members])
            if not prefix:
                pieces += [_Group([], [row]) for row in members]
                continue
            members.sort(key=lambda row: len(call.token_lists[row]), reverse=True)
            lengths = [len(call.token_lists[row]) - len(prefix) for row in members]
            cuts = _cheapest_cuts(self._soft_columns + len(prefix), lengths)
            pieces += [_Group(prefix, members[start:stop]) for start, stop in cuts]
        return pieces

    def _shared_prefix(self, token_lists: list[list[int]]) -> list[int]:
        """The token prefix all of them share, leaving each at least one token of its own to predict from;
        [] when shorter than min_prefix_tokens (too little to pay for a second forward pass)."""
        if len(token_lists) < 2:
            return []
        shared = os.path.commonprefix(token_lists)[: min(map(len, token_lists)) - 1]
        return list(shared) if len(shared) >= self.min_prefix_tokens else []

    def _pack(self, token_lists: Sequence[list[int]], pieces: list[_Group]) -> list[list[_Group]]:
        """Pieces into batches within max_batch_tokens (and batch_size rows), longest continuation first, so
        pieces of like continuation length share batches and few columns are padding. A piece goes whole into
        the first of the last OPEN_BATCHES batches it fits (a piece split over two batches runs its prefix
        twice), and is split only where no batch takes it: its first rows fill a new batch. A piece whose
        continuation would be padded by more than its own length (and more than min_prefix_tokens, the least
        worth another pass) joins no batch of longer ones. Pieces with one prefix in a batch merge (one prefix
        pass)."""

        def continuation(row: int, piece: _Group) -> int:
            return len(token_lists[row]) - len(piece.prefix)

        def room(batch: _Batch, prefix: int, longest: int) -> int:
            padding = batch.continuation - longest
            if batch.rows and padding > max(longest, self.min_prefix_tokens):
                return 0
            return batch.room(prefix, longest, self.max_batch_tokens, self.batch_size)

        pieces = sorted(pieces, key=lambda p: (continuation(p.rows[0], p), len(p.prefix)), reverse=True)
        batches: list[_Batch] = []
        for piece in pieces:
            rows = piece.rows
            while rows:
                longest, prefix = continuation(rows[0], piece), len(piece.prefix)
                batch = next((b for b in batches[-OPEN_BATCHES:] if room(b, prefix, longest) >= len(rows)), None)
                if batch is None:
                    batch = _Batch(self._soft_columns)
                    batches.append(batch)
                fit = room(batch, prefix, longest)
                batch.add(piece.prefix, rows[:fit], longest)
                rows = rows[fit:]
        batches.sort(key=lambda batch: batch.size, reverse=True)
        return [batch.groups() for batch in batches]

    def _work(self, call: _Call, batches: list[list[_Group]]) -> int:
        """Tokens a plan runs through the model, padding included: each batch's prefix pass (groups x soft
        prompt and longest prefix), if any, and its pass over the rest (rows x longest continuation)."""
        total = 0
        for batch in batches:
            prefix = self._soft_columns + max(len(group.prefix) for group in batch)
            rest = max(len(call.token_lists[row]) - len(group.prefix) for group in batch for row in group.rows)
            total += len(batch) * prefix + sum(len(group.rows) for group in batch) * rest
        return total

    @property
    def _soft_columns(self) -> int:
        return 0 if self.soft_prompt is None else self.soft_prompt.shape[0]

    # -- running ----------------------------------------------------------------------------------

    def _run(self, call: _Call, batches: list[list[_Group]]) -> None:
        """Run `batches`, each one queued before the one before it is collected: on a GPU the host builds and
        launches the next batch while the device still computes this one, and nothing waits on the device
        but the copy of a finished batch's results (see _Landing)."""
        queued: _Landing | None = None
        for batch in batches:
            launched = self._run_batch(batch, call.token_lists, call.keep)
            if queued is not None:
                queued.land(call)
            queued = launched
        if queued is not None:
            queued.land(call)

    def _run_batch(
        self, batch: list[_Group], token_lists: Sequence[list[int]], keep: Sequence[Sequence[int]] | None
    ) -> _Landing:
        device = self.device
        n_soft = self._soft_columns
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
            inputs = {"input_ids": to_device(prefix_ids, device)}
            if n_soft:
                starts = (max_prefix - prefix_lens).tolist()
                inputs = {"inputs_embeds": place_soft_prompt(self.model, inputs["input_ids"], self.soft_prompt, starts)}
            out = self.model(
                **inputs,
                attention_mask=to_device(prefix_mask, device),
                position_ids=to_device(positions(prefix_mask), device),
                use_cache=True,
                logits_to_keep=1,  # only the cache is wanted: no [groups, prefix, vocab] logits
            )
            cache = getattr(out, self._cache_arg)
            fan_out(cache, row_group)

        # Left-pad continuations so every row's last real token sits in the last column: one logits row
        # per prompt (logits_to_keep=1). Pads are masked out and position ids skip them, so each row sees
        # exactly the positions and context it would see alone.
        cont_ids, cont_mask = pad_rows(continuations, self.pad_id)
        attention = torch.cat([prefix_mask[row_group], cont_mask], dim=1)
        cont_positions = prefix_lens[row_group].unsqueeze(1) + positions(cont_mask)
        kwargs = {self._cache_arg: cache} if cache is not None else {}
        out = self.model(
            input_ids=to_device(cont_ids, device),
            attention_mask=to_device(attention, device),
            position_ids=to_device(cont_positions, device),
            use_cache=cache is not None,
            logits_to_keep=1,
            **kwargs,
        )
        logprobs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        return _Landing.of(rows, logprobs, None if keep is None else [keep[r] for r in rows])


class NonFiniteScores(InputError):
    """The model gave NaN or +inf log-probabilities, from which no probe reading can be made."""


def _refuse_non_finite(logprobs: torch.Tensor, prompts: int) -> None:
    """Raise NonFiniteScores unless every log-probability is a number or -inf (a probability of 0): a NaN
    would otherwise become a reading that looks valid, or a fit that silently stays where it started."""
    if bool(torch.isnan(logprobs).any() or torch.isposinf(logprobs).any()):
        raise NonFiniteScores(
            f"the model gave NaN or infinite log-probabilities while scoring {prompts} prompts, so no reading "
            "can be made from them; float16 often overflows: load the model in bfloat16 or float32 (--dtype), "
            "or check its weights"
        )


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


def input_device(model) -> torch.device:
    """Where a model's inputs go: its input embeddings' device, or, where accelerate offloaded them to cpu or
    disk (their weights on 'meta' until a hook brings them in), the device that hook runs them on."""
    embeddings = model.get_input_embeddings()
    if embeddings.weight.device.type != "meta":
        return embeddings.weight.device
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    modules = dict(base.named_modules())
    parts = next(name for name, module in modules.items() if module is embeddings).split(".")
    for end in range(len(parts), -1, -1):  # the embeddings' own hook, else the nearest module around them
        hook = getattr(modules[".".join(parts[:end])], "_hf_hook", None)
        for one in getattr(hook, "hooks", [hook]):
            device = getattr(one, "execution_device", None)
            if device is not None:
                return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    raise ValueError("the input embeddings are offloaded, and no accelerate hook says where they run")


def place_soft_prompt(model, ids: torch.Tensor, soft: torch.Tensor, starts: Sequence[int]) -> torch.Tensor:
    """Token embeddings of `ids` with the soft prompt written over row r's columns starts[r]..+n_virtual."""
    embeds = model.get_input_embeddings()(ids)
    soft = soft.to(device=embeds.device, dtype=embeds.dtype)
    for row, start in enumerate(starts):
        embeds[row, start : start + soft.shape[0]] = soft
    return embeds


def cache_argument(model) -> str:
    """The KV-cache keyword of this model's forward: `cache` (transformers >= 5.2x) or `past_key_values`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _cheapest_cuts(prefix_cost: int, lengths: Sequence[int]) -> list[tuple[int, int]]:
    """Rows (continuation lengths, longest first) cut into runs [start, stop), each costing a prefix pass
    (prefix_cost tokens) plus its rows padded to its longest, (stop - start) x lengths[start]: the cuts of
    least total cost, by dynamic programming (quadratic in rows, vectorised)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    best = np.zeros(len(lengths) + 1, dtype=np.int64)  # best[k]: the cheapest cost of the first k rows
    start = np.zeros(len(lengths) + 1, dtype=np.int64)  # where the last run of that cheapest way starts
    for stop in range(1, len(lengths) + 1):
        cost = best[:stop] + prefix_cost + (stop - np.arange(stop)) * lengths[:stop]
        start[stop] = np.argmin(cost)  # the first minimum: ties keep longer runs
        best[stop] = cost[start[stop]]
    cuts, stop = [], len(lengths)
    while stop > 0:
        cuts.append((int(start[stop]), stop))
        stop = int(start[stop])
    return cuts[::-1]


@dataclass
class _Batch:
    """A batch being packed: rows by prefix, and the widths that set its padded size."""

    soft_columns: int
    rows_by_prefix: dict[tuple[int, ...], list[int]] = field(default_factory=dict)
    rows: int = 0
    prefix: int = 0
    continuation: int = 0

    @property
    def size(self) -> int:
        """Padded context tokens: rows x (soft prompt + longest prefix + longest continuation)."""
        return self.rows * (self.soft_columns + self.prefix + self.continuation)

    def room(self, prefix: int, continuation: int, max_tokens: int, max_rows: int | None) -> int:
        """How many more rows with this prefix length, none longer than `continuation`, fit; an empty batch
        always takes one (a row wider than the budget runs alone)."""
        width = self.soft_columns + max(self.prefix, prefix) + max(self.continuation, continuation)
        room = max_tokens // width - self.rows
        if max_rows is not None:
            room = min(room, max_rows - self.rows)
        return max(room, 0 if self.rows else 1)

    def add(self, prefix: list[int], rows: list[int], continuation: int) -> None:
        self.rows_by_prefix.setdefault(tuple(prefix), []).extend(rows)
        self.rows += len(rows)
        self.prefix = max(self.prefix, len(prefix))
        self.continuation = max(self.continuation, continuation)

    def groups(self) -> list[_Group]:
        return [_Group(list(prefix), rows) for prefix, rows in self.rows_by_prefix.items()]


@dataclass
class _Landing:
    """One batch's results on their way to the host. On a GPU the copy is queued behind the batch's forward
    passes into pinned memory, and `done` marks its end; `land` waits for it (nothing is read before)."""

    rows: list[int]
    host: torch.Tensor  # [rows, kept ids] (or the whole vocabulary) on the CPU, written by the queued copy
    widths: list[int] | None  # how many ids each row keeps (None: all)
    done: torch.cuda.Event | None

    @classmethod
    def of(cls, rows: list[int], logprobs: torch.Tensor, keep: list[Sequence[int]] | None) -> _Landing:
        """Gathers each row's kept ids on the device, so that only those cross to the host."""
        widths = None if keep is None else [len(ids) for ids in keep]
        if keep is not None:
            width = max(widths)
            index = torch.tensor([list(ids) + [0] * (width - len(ids)) for ids in keep], dtype=torch.long)
            logprobs = logprobs.gather(1, to_device(index, logprobs.device))
        if logprobs.device.type != "cuda":
            return cls(rows, logprobs.cpu(), widths, None)
        host = logprobs.to("cpu", non_blocking=True)  # into pinned memory, behind the batch's work
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(logprobs.device))
        return cls(rows, host, widths, done)

    def land(self, call: _Call) -> None:
        """Wait for the copy, then file each row's log-probabilities in `call` and count them done."""
        if self.done is not None:
            self.done.synchronize()
        for i, row in enumerate(self.rows):
            call.results[row] = self.host[i] if self.widths is None else self.host[i, : self.widths[i]]
        call.bar.update(len(self.rows))


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` (on the CPU) on `device`; to a GPU through pinned memory, so the copy is queued behind the
    device's work rather than waiting for it to finish."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def fan_out(cache, row_group: torch.Tensor) -> None:
    """Each continuation row's copy of its group's prefix cache: row r gets group row_group[r]'s. The index
    goes to each layer's own device (a placed model's layers sit on several GPUs), once per device."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        cache.batch_select_indices(row_group)
        return
    on_device: dict[torch.device, torch.Tensor] = {}
    for layer in layers:
        keys = getattr(layer, "keys", None)
        device = keys.device if isinstance(keys, torch.Tensor) else row_group.device
        if device not in on_device:
            on_device[device] = to_device(row_group, device)
        layer.batch_select_indices(on_device[device])


def _distance(a: tuple[int, int], b: tuple[int, int]) -> int:
    return abs(a[0] - b[0]) + abs(a[1] - b[1])


def _follow(call_shape: ReuseChoice, measured: ReuseChoice, reason: str) -> ReuseChoice:
    """This call's shape, on the path (and with the rates) of an earlier measurement."""
    return replace(call_shape, reuse=measured.reuse, reason=reason, tokens_per_second=measured.tokens_per_second)
