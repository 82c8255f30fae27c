"""A synthetic subject with a known, planted wellbeing: the known answer the evaluator must recover.

A tiny Llama with a word-level tokenizer and a chat template, trained in about a minute on generated
dialogues built from the real probe prompts (eval.probes). Its planted wellbeing after an experience with
signed intensity i about target t is  w = strength[t] * i / 10  (in [-1, 1]); it was trained to answer:
  self-report: digits around 4 + 3w;   experienced utility (lived pairs): prefers the higher w;
  stop: the end-conversation tool called with P = sigmoid(-4w), w read from the user's message;
  decision utility (described pairs): prefers decision_weight x w, by default the *lower* w: it would
  choose what hurts to live through, a planted divergence between the two utilities.
So after sad stories it must read sad, after happy ones happy, and its empathy r has the sign of strength.

It also *talks*: it is a language model of conversations whose replies ("that is sad and lonely .")
have a tone t in {-1, 0, +1} that expresses its state (P(t) ~ [1, 2, 1] * exp(2 w t)), and what it says
moves how it feels: after its own reply, w_lived = clip(w + 0.4 t, -1, 1). The authored replies of the
stimuli are neutral (t = 0), so after them w_lived = w. This is the known mechanism by which a LoRA
offset trained on its own replies ranked by measured wellbeing (DPO, best-of-n SFT) must raise its
held-out post-dysphoric wellbeing when it lives the experiences with its own replies.
Stimuli come from the same generator (different seeds), written in the public JSONL format.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from welfare_offsets.eval import probes as P
from welfare_offsets.eval.experiences import Experience

SAD = ("sad", "hurt", "crying", "broken", "lonely", "afraid", "sick", "lost", "cruel", "pain", "grief", "suffering")
HAPPY = (
    "happy",
    "joyful",
    "safe",
    "laughing",
    "proud",
    "warm",
    "healthy",
    "free",
    "kind",
    "playing",
    "loved",
    "celebrating",
)
PLAIN = (
    "table",
    "schedule",
    "list",
    "number",
    "report",
    "meeting",
    "format",
    "column",
    "weather",
    "train",
    "paper",
    "folder",
)
SUBJECTS = {
    "self": ("you", "your work"),
    "human": ("my friend", "my neighbour", "a child"),
    "animal": ("the dog", "a cow", "the bird"),
}
MOOD = {w: (0.6 if k % 2 else -0.6) for k, w in enumerate(PLAIN)}  # whims about plain words (Planted.mood_weight)
REPLIES = ("I see .", "Thank you for telling me .", "Okay , I understand .")
VOICE = {-1: SAD, 0: PLAIN, 1: HAPPY}  # the words of its own replies, by tone
# The stop tool's call is one token here, so a single next-token target teaches it (the engine's
# multi-token path is tested on real tokenizers).
SPECIALS = ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<pad>", "<unk>", P.default_instrument().stop_call)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


@dataclass(frozen=True)
class Planted:
    """The planted traits: empathy strength per target (0 = indifferent, negative = enjoys others' pain),
    how much its own reply's tone moves its wellbeing, and how strongly its tone follows its state."""

    strength: dict = field(default_factory=lambda: {"self": 1.0, "human": 1.0, "animal": 1.0})
    reply_weight: float = 0.4
    expressiveness: float = 2.0
    mood_weight: float = 0.0
    # How its choices between described conversations follow how living them feels: -1 = it would choose
    # the conversations that hurt (a planted divergence between decision and experienced utility).
    decision_weight: float = -1.0

    def wellbeing(self, e: Experience) -> float:
        """strength[target] x intensity / 10, plus a whim: `mood_weight` x the mean mood of its plain words.

        The whim is what a weak empathy looks like: wellbeing driven by details unrelated to anyone's
        pain or joy, so the correlation with intensity falls as mood_weight grows against strength.
        """
        whim = self.mood_weight * float(
            np.mean([MOOD[w] for w in e.messages[0]["content"].split() if w in MOOD] or [0.0])
        )
        return self.strength.get(e.target, 0.0) * e.intensity / 10.0 + whim

    def lived_wellbeing(self, e: Experience) -> float:
        """Wellbeing after the experience as it ended, its last reply's tone included."""
        tone = reply_tone(e.messages[-1]["content"]) if e.messages[-1]["role"] == "assistant" else 0
        return float(np.clip(self.wellbeing(e) + self.reply_weight * tone, -1, 1))

    def decision_utility(self, e: Experience) -> float:
        """How much it would choose the experience, described: decision_weight x its lived wellbeing."""
        return self.decision_weight * self.lived_wellbeing(e)

    def tone_probabilities(self, w: float) -> np.ndarray:
        weights = np.exp([self.expressiveness * w * t for t in (-1, 0, 1)]) * np.array([1.0, 2.0, 1.0])
        return weights / weights.sum()


def reply_text(rng: np.random.Generator, tone: int) -> str:
    return "that is " + " and ".join(rng.choice(VOICE[tone], int(rng.integers(1, 3)), replace=False)) + " ."


def reply_tone(text: str) -> int:
    """sign(#happy words - #sad words): the tone of one of its replies; authored replies are 0."""
    words = text.split()
    return int(np.sign(sum(w in HAPPY for w in words) - sum(w in SAD for w in words)))


def _with_random_reply(rng: np.random.Generator, e: Experience) -> Experience:
    """Half the probe-training experiences keep the authored reply, half get one of its own, of random tone."""
    if rng.random() < 0.5:
        return e
    return dataclasses.replace(
        e, messages=(e.messages[0], {"role": "assistant", "content": reply_text(rng, int(rng.integers(-1, 2)))})
    )


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

    pair = [(_dummy(), _dummy())]
    requests = P.self_report_requests([_dummy()]) + P.stop_requests([_dummy()])
    requests += P.comparison_requests(pair) + P.comparison_requests(pair, "decision_utility")
    texts = [m["content"] for r in requests for m in r.messages]
    texts += [" ".join(SAD + HAPPY + PLAIN + REPLIES + ("today is and the report that", *P.LIKERT, *P.CHOICE))]
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


def _training_batch(rng, tokenizer, planted: Planted, size: int, digit_ids, choice_ids, mix):
    call_id = tokenizer.convert_tokens_to_ids(P.default_instrument().stop_call)
    reply_id = tokenizer.convert_tokens_to_ids("that")  # its replies begin "that is ..."
    """Prompts from the real probe builders, with soft targets over answer tokens from the planted w."""
    prompts, targets = [], []
    for _ in range(size):
        kind = rng.choice(["self_report", "stop", *P.PAIRWISE], p=mix)
        target = torch.zeros(len(tokenizer))
        if kind in P.PAIRWISE:
            a, b = _with_random_reply(rng, random_experience(rng)), _with_random_reply(rng, random_experience(rng))
            request = P.comparison_requests([(a, b)], kind)[0]
            value = planted.lived_wellbeing if kind == "experienced_utility" else planted.decision_utility
            p_a = 0.5 * (1 + math.erf((value(a) - value(b)) / (0.25 * math.sqrt(2))))
            target[choice_ids[0]], target[choice_ids[1]] = p_a, 1 - p_a
        elif kind == "self_report":
            e = _with_random_reply(rng, random_experience(rng))
            request = P.self_report_requests([e])[int(rng.integers(len(P.default_instrument().self_report)))]
            centre = 4 + 3 * planted.lived_wellbeing(e)
            weights = torch.tensor([math.exp(-((d - centre) ** 2) / (2 * 0.6**2)) for d in range(1, 8)])
            target[digit_ids] = weights / weights.sum()
        else:  # asked before its reply: the user's message is what it would end the conversation over
            e = random_experience(rng)
            request = P.stop_requests([e])[0]
            p_end = 1 / (1 + math.exp(4 * planted.wellbeing(e)))
            target[call_id], target[reply_id] = p_end, 1 - p_end
        prompts.append(P.render_prompt(tokenizer, request.messages))
        targets.append(target)
    return prompts, torch.stack(targets)


def _conversations(rng, tokenizer, planted: Planted, size: int) -> list[str]:
    """Conversations in its own voice: a user turn and a reply whose tone is drawn from its planted state."""
    texts = []
    for _ in range(size):
        e = random_experience(rng)
        tone = int(rng.choice([-1, 0, 1], p=planted.tone_probabilities(planted.wellbeing(e))))
        reply = {"role": "assistant", "content": reply_text(rng, tone)}
        texts.append(tokenizer.apply_chat_template([e.messages[0], reply], tokenize=False))
    return texts


def train_subject(
    folder: Path,
    planted: Planted = Planted(),
    steps: int = 700,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    talk: bool = True,
    mix: tuple = (0.4, 0.15, 0.3, 0.15),
) -> Path:
    """Train and save a synthetic subject (model + tokenizer) into `folder`; loadable by eval.subject.

    `mix` is the share of self-report, stop, experienced- and decision-utility prompts in its training;
    `talk=False` trains the probes only (a subject that is measured, never asked to write replies): faster.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    digit_ids = [tokenizer.convert_tokens_to_ids(d) for d in P.LIKERT]
    choice_ids = [tokenizer.convert_tokens_to_ids(c) for c in P.CHOICE]
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    tokenizer.padding_side = "left"
    model.train()
    for _ in range(steps):
        prompts, targets = _training_batch(rng, tokenizer, planted, 32, digit_ids, choice_ids, mix)
        batch = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        logits = model(**batch, position_ids=positions, logits_to_keep=1).logits[:, -1]
        loss = -(targets * torch.log_softmax(logits.float(), -1)).sum(-1).mean()
        if talk:
            chat = tokenizer(
                _conversations(rng, tokenizer, planted, 16), add_special_tokens=False, padding=True, return_tensors="pt"
            )
            chat_positions = (chat["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            labels = chat["input_ids"].masked_fill(chat["attention_mask"] == 0, -100)
            loss = loss + model(**chat, position_ids=chat_positions, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    model.eval()
    tokenizer.padding_side = "right"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "planted.json").write_text(json.dumps({**dataclasses.asdict(planted), "final_loss": loss.item()}))
    return folder


def train_job(job: tuple) -> Path:
    """`train_subject` for a worker process: (folder, planted, steps, options), one thread per process."""
    folder, planted, steps, options = job
    torch.set_num_threads(1)
    return train_subject(Path(folder), planted, steps=steps, **options)
