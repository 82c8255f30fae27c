"""The GPU benchmarks run for real only when a GPU is lent, once, in a short window: their --smoke mode (the
tiny shape on CPU) must keep working, or that window is lost to a typo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def smoke(module: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_scale_bench_smoke_writes_results_that_benchmarks_md_refuses(tmp_path):
    run = smoke("benchmarks.gpu_scale_bench", tmp_path, "--smoke")
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_scale_bench.json").read_text())
    scoring = results["size_tiny"]["scoring"]
    for mode in ("reuse", "no_reuse", "auto"):
        assert scoring[mode]["prompts_per_s"] > 0
        assert scoring[mode]["forwards_per_call"] >= 1
        assert scoring[mode]["host_waits_per_call"] is None  # counted on CUDA only
    assert results["size_tiny"]["generation"]["static"]["tokens_per_s"] > 0
    assert "| tiny |" in run.stdout and "Smoke run: goals not judged." in run.stdout

    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text("# Benchmarks\n")
    refused = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_scale_bench", "--from-json", str(tmp_path / "gpu_scale_bench.json"),
         "--update-md", str(markdown)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode != 0 and "measured GPU numbers only" in refused.stderr
    assert markdown.read_text() == "# Benchmarks\n"


def test_offset_bench_smoke_runs(tmp_path):
    run = smoke("benchmarks.gpu_offset_bench", tmp_path, "--smoke")
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "gpu_bench.json").read_text())
