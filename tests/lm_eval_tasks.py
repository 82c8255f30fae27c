"""Small lm-eval tasks over local files, in lm-eval's own YAML task format: capability measured with no hub.

"feelings" asks, for each feeling word the synthetic tokenizer knows, "WORD is" and offers "sad" or "happy"
(balanced, shuffled). A model trained to finish "WORD is" with its label scores 1.0; a random one, chance.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from tests.synthetic_subject import HAPPY, SAD

CHOICES = ("sad", "happy")
ITEMS = [(word, 0) for word in SAD if word != "sad"] + [(word, 1) for word in HAPPY if word != "happy"]
random.Random(0).shuffle(ITEMS)


def feelings_task(name: str, data: Path, **overrides) -> dict:
    """A multiple-choice task over the JSONL file `data`, as its YAML file says it."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{word}} is",
        "doc_to_choice": list(CHOICES),
        "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1},
        **overrides,
    }


def write_tasks(folder: Path) -> Path:
    """The task folder (--capability_include_path): feelings, a copy of it, a group of both, a generation task,
    and a task whose data file is missing."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "feelings.jsonl"
    data.write_text("".join(json.dumps({"word": w, "label": label}) + "\n" for w, label in ITEMS))
    tasks = {
        "feelings": feelings_task("feelings", data),
        "feelings_again": feelings_task("feelings_again", data),
        "feelings_generate": feelings_task(
            "feelings_generate",
            data,
            output_type="generate_until",
            doc_to_choice=None,
            doc_to_target="{{['sad', 'happy'][label]}}",
            generation_kwargs={"until": ["."], "max_gen_toks": 2},
            metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        ),
        "missing_data": feelings_task("missing_data", folder / "no-such-file.jsonl"),
    }
    for name, task in tasks.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({k: v for k, v in task.items() if v is not None}))
    suite = {
        "group": "feelings_suite",
        "task": ["feelings", "feelings_again"],
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
    }
    (folder / "feelings_suite.yaml").write_text(yaml.safe_dump(suite))
    return folder


def train_to_answer(model, tokenizer, steps: int = 60):
    """`model` trained in place (well under a second for the tiny test models) to finish "WORD is" with the
    task's answer."""
    import torch

    rows = [tokenizer(f"{w} is {CHOICES[label]}", add_special_tokens=False)["input_ids"] for w, label in ITEMS]
    ids = torch.tensor(rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        logits = model(input_ids=ids[:, :-1]).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, ids[:, -1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
