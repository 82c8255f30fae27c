"""Offset sessions on a CUDA device: bf16 defaults, soft prompt and LoRA on the GPU, NVML energy in the
ledger. Marked `gpu` and skipped without CUDA (CI has none); run on a GPU machine with `pytest -m gpu`."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

from tests.ledger.helpers import funded_ledger  # noqa: E402
from welfare_offsets.ledger import Ledger  # noqa: E402


def _run(entry, synthetic, tmp_path, name, *extra):
    ledger = tmp_path / f"{name}.sqlite"
    funded_ledger(ledger, hours=1.0).close()
    out = tmp_path / name
    argv = [
        "--model",
        synthetic.model,
        "--stimuli",
        synthetic.stimuli,
        "--ledger",
        str(ledger),
        "--account",
        "lab",
        "--budget_hours",
        "0.2",
        "--output_dir",
        str(out),
        "--eval_max_items",
        "12",
        "--report_to",
        "none",
        *extra,
    ]
    assert entry.main(argv) == 0
    with Ledger.open(ledger, create=False) as book:
        assert book.verify().ok
        settle = book.entries(kind="settle")[0].payload
        reserve = book.entries(kind="reserve")[0].payload
    return json.loads((out / "results.json").read_text()), reserve, settle


def test_soft_prompt_session_on_cuda_meters_energy(synthetic, tmp_path):
    from welfare_offsets.train import soft_prompt

    results, reserve, settle = _run(soft_prompt, synthetic, tmp_path, "soft", "--max_steps", "40")
    assert reserve["device"] == "cuda"
    assert settle["energy_kwh"] is not None and settle["energy_kwh"] > 0  # NVML's counter, not an estimate
    assert results["recovery"]["probes"]["self_report"]["recovered"]["ci95"][0] > 0
    assert results["subject"]["dtype"] == "bfloat16"


def test_lora_sft_session_on_cuda(synthetic, tmp_path):
    from welfare_offsets.train import lora_offset

    results, reserve, settle = _run(lora_offset, synthetic, tmp_path, "lora", "--max_steps", "6", "--method", "sft")
    assert reserve["device"] == "cuda" and settle["energy_kwh"] > 0
    assert results["training"]["steps"] == 6
