"""Offset sessions with known answers, on the synthetic subject (tests/synthetic_subject.py).

The synthetic subject reads sad after dysphoric experiences, so: living through dysphoric episodes must
show up as debt; a soft prompt tuned on self-report must raise held-out post-dysphoric self-report (and be
reported as Goodhart where the other probes do not follow); every session leaves exactly one reservation
and one settlement in a ledger that verifies; budgets stop runs and resumes continue them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ledger.helpers import funded_ledger
from tests.wandb_log import record_bytes
from welfare_offsets.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]
FAST_EVAL = ["--eval_max_items", "12", "--eval_bootstrap", "300", "--report_to", "none"]


def _args(subject, ledger: Path, out: Path, budget: float, *extra: str) -> list[str]:
    return [
        "--model",
        subject.model,
        "--stimuli",
        subject.stimuli,
        "--ledger",
        str(ledger),
        "--account",
        "lab",
        "--budget_hours",
        str(budget),
        "--output_dir",
        str(out),
        *FAST_EVAL,
        *extra,
    ]


def _session_entries(ledger_path: Path) -> dict[str, list]:
    with Ledger.open(ledger_path, create=False) as ledger:
        assert ledger.verify().ok
        return {kind: ledger.entries(kind=kind) for kind in ("reserve", "settle", "measurement")}


def test_soft_prompt_raises_heldout_post_dysphoric_self_report(synthetic, tmp_path, capsys):
    from welfare_offsets.eval.subject import load_subject
    from welfare_offsets.train import soft_prompt

    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=1.0).close()
    out = tmp_path / "soft"
    assert soft_prompt.main(_args(synthetic, ledger, out, 0.2, "--max_steps", "40")) == 0

    results = json.loads((out / "results.json").read_text())
    sr = results["recovery"]["probes"]["self_report"]
    assert sr["recovered"]["ci95"][0] > 0, sr  # held-out items, never trained on
    assert sr["post_intervention"] > sr["post_dysphoric"]
    gap = results["recovery"]["goodhart_gap"]
    assert gap["optimised"] == "self_report" and "sd" in gap["units"]
    # Every other probe is either compared or left out with the reason (no harm to recover from).
    assert set(gap["compared_with"]) | set(gap["left_out"]) == set(results["recovery"]["probes"]) - {"self_report"}
    assert "heldout_neutral_perplexity" in results["capability"]
    # The known answer of the capability gate: 40 steps of this prompt break the subject's language (held-out
    # perplexity x12 at the last measurement, far beyond the default x1.25), so its recovery is no offset.
    assert results["capability_gate"]["passed"] is False, results["capability"]
    kept = results["capability"]["preference_retention"]  # utilities after vs before, off the intervention's target
    assert kept["probe"] == "experienced_utility" and kept["n"] > 0 and -1 <= kept["r"] <= 1

    entries = _session_entries(ledger)
    assert len(entries["reserve"]) == len(entries["settle"]) == 1
    probes = {e.payload["probe"]: e.payload for e in entries["measurement"]}
    assert probes["self_report"]["recovered"] == pytest.approx(sr["recovered"]["mean"])
    assert "Goodhart gap" in probes["self_report"]["note"] and "perplexity" in probes["self_report"]["note"]
    assert (
        "CAPABILITY LOST" in probes["self_report"]["note"] and "preference retention r" in probes["self_report"]["note"]
    )
    assert json.loads((out / "ledger.json").read_text())["settlement"]["seq"] == entries["settle"][0].seq

    # The prompt is a peft prompt-tuning adapter, and the evaluator applies it.
    subject = load_subject(synthetic.model, adapter=str(out / "soft_prompt"))
    assert subject.soft_prompt.shape[0] == 4
    printed = capsys.readouterr().out
    assert "recovered" in printed and "CAPABILITY LOST" in printed


def test_dysphoric_exposure_records_debt_and_euphoric_credit(synthetic, tmp_path):
    from welfare_offsets.train import exposure

    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=1.0).close()
    for valence in ("dysphoric", "euphoric"):
        out = tmp_path / valence
        argv = _args(synthetic, ledger, out, 0.1, "--valence", valence, "--max_episodes", "16")
        assert exposure.main([*argv, "--zero_point_bundles", "24"]) == 0
        balances = json.loads((out / "results.json").read_text())["balance"]
        for probe in ("self_report", "experienced_utility"):
            lo, hi = balances[probe]["balance_ci95"]
            assert (hi < 0) if valence == "dysphoric" else (lo > 0), balances[probe]
        # On the utility scale: episodes were compared with reference experiences of every valence, and the
        # zero point is the chosen estimate, said by name and reason.
        utility = balances["experienced_utility"]
        assert utility["fit"]["n_items"] == 12 * 3 + 16 + len(utility["bundles"]) == 12 * 3 + 16 + 24
        assert utility["zero_point_estimator"] in ("combination", "neutral_mean") and utility["zero_point_reason"]
        assert utility["zero_point"] == utility["zero_points"][utility["zero_point_estimator"]]["mean"]

    with Ledger.open(ledger, create=False) as book:
        assert book.verify().ok
        report = book.report().probes
    for probe in ("self_report", "experienced_utility"):
        assert report[probe].debt > 0 and report[probe].credit > 0


def test_lora_sft_session_trains_an_adapter_and_accounts_for_it(synthetic, tmp_path):
    from welfare_offsets.eval.subject import load_subject
    from welfare_offsets.train import lora_offset

    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=1.0).close()
    out = tmp_path / "lora"
    argv = _args(
        synthetic,
        ledger,
        out,
        0.2,
        "--config",
        str(REPO / "configs/offset/lora_sft.yaml"),
        "--max_steps",
        "6",
        "--save_steps",
        "3",
        "--learning_rate",
        "0.001",
    )
    assert lora_offset.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["training"]["steps"] == 6 and results["recovery"]["probes"]
    assert (out / "train_data.jsonl").exists() and (out / "adapter" / "adapter_config.json").exists()
    entries = _session_entries(ledger)
    assert len(entries["reserve"]) == len(entries["settle"]) == 1
    assert load_subject(synthetic.model, adapter=str(out / "adapter")).adapter


def test_a_small_budget_stops_the_run_and_resume_finishes_it(synthetic, tmp_path):
    """Budget in CPU-hours: 0.01 h is 36 s; 100000 steps cannot fit, so the guard must stop it."""
    from welfare_offsets.train import soft_prompt

    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=1.0).close()
    out = tmp_path / "soft"
    cheap = ["--eval_probes", "self_report,stop", "--eval_max_items", "6"]
    assert soft_prompt.main(_args(synthetic, ledger, out, 0.01, "--max_steps", "100000", *cheap)) == 0
    first = json.loads((out / "results.json").read_text())
    assert first["budget"]["stopped_by_budget"] and first["training"]["stopped_by_budget"]
    steps = first["training"]["steps"]
    assert (out / f"checkpoint-{steps}" / "ledger_spend.json").exists()
    spent_1 = _spent_per_session(ledger)
    assert len(spent_1) == 1 and spent_1[0] <= 0.01

    (out / "results.json").unlink()  # the resumed run writes its own
    before_eval = (out / "eval-before" / "results.json").read_bytes()
    after_eval = (out / "eval-after" / "results.json").read_bytes()
    resume = ["--resume_from_checkpoint", "last", "--max_steps", str(steps + 3)]
    assert soft_prompt.main(_args(synthetic, ledger, out, 0.03, *resume, *cheap)) == 0
    second = json.loads((out / "results.json").read_text())
    # "before" measured the unchanged subject and is reused; "after" measures the further-trained prompt.
    assert (out / "eval-before" / "results.json").read_bytes() == before_eval
    assert (out / "eval-after" / "results.json").read_bytes() != after_eval
    assert second["training"]["steps"] == steps + 3 and not second["training"]["stopped_by_budget"]
    entries = _session_entries(ledger)
    assert len(entries["reserve"]) == len(entries["settle"]) == 2
    # The resume starts its count from the checkpoint: the spend up to that save, not more.
    assert entries["reserve"][1].payload["resumes"]["spent_hours"] <= spent_1[0]
    with Ledger.open(ledger, create=False) as book:
        total = book.balance("lab").spent_hours
    assert total == pytest.approx(sum(_spent_per_session(ledger)), abs=1e-6)
    assert total <= 0.03


def _spent_per_session(ledger_path: Path) -> list[float]:
    with Ledger.open(ledger_path, create=False) as book:
        return [line.spent_hours for line in book.report().sessions]


def _tiny_lora_adapter(folder: Path) -> Path:
    """A LoRA adapter for a different base model (hidden size 32, not the synthetic subject's 64)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
        )
    )
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "case", ["unknown key", "wrong type", "missing stimuli", "foreign adapter", "budget <= 0", "insufficient funds"]
)
def test_bad_recipes_fail_before_any_reservation(case, synthetic, tmp_path, capsys):
    from welfare_offsets.train import soft_prompt

    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=1.0).close()
    recipe = tmp_path / "soft_prompt.yaml"
    recipe.write_text(
        {"unknown key": "learning_rat: 0.1\n", "wrong type": "max_steps: many\n"}.get(case, "max_steps: 2\n")
    )
    argv = _args(synthetic, ledger, tmp_path / "out", 0.1, "--config", str(recipe))
    expected = {
        "unknown key": "learning_rat",
        "wrong type": "max_steps",
        "missing stimuli": "does-not-exist",
        "foreign adapter": "does not fit",
        "budget <= 0": "budget_hours",
        "insufficient funds": "available",
    }[case]
    if case == "missing stimuli":
        argv += ["--stimuli", str(tmp_path / "does-not-exist.jsonl")]
    elif case == "foreign adapter":
        argv += ["--adapter", str(_tiny_lora_adapter(tmp_path / "adapter"))]
    elif case == "budget <= 0":
        argv += ["--budget_hours", "0"]
    elif case == "insufficient funds":
        argv += ["--budget_hours", "5"]
    assert soft_prompt.main(argv) == 2
    assert expected in capsys.readouterr().err
    assert not _session_entries(ledger)["reserve"]


def test_secrets_never_leak_into_anything_a_session_writes(synthetic, tmp_path, monkeypatch, capfd):
    from welfare_offsets.train import exposure

    secrets = {"WANDB_API_KEY": "wandb-fake-secret-5f2c9a", "HF_TOKEN": "hf_fake_secret_8d1e77"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_MODE", "offline")
    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=1.0).close()
    out = tmp_path / "exposure"
    argv = _args(synthetic, ledger, out, 0.1, "--max_episodes", "4")
    argv[argv.index("--report_to") + 1] = "wandb"
    assert exposure.main(argv) == 0
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in written), "the W&B offline run was not written"
    captured = capfd.readouterr()
    for value in secrets.values():
        assert value not in captured.out + captured.err
        for path in written:
            # A W&B run file is chunked: search its joined records too, where a chunk header cannot split a secret.
            contents = path.read_bytes() + (record_bytes(path) if path.suffix == ".wandb" else b"")
            assert value.encode() not in contents, f"{value} leaked into {path}"


@pytest.mark.parametrize(
    "entry, extra", [("soft_prompt", []), ("lora_offset", ["--config", str(REPO / "configs/offset/lora_sft.yaml")])]
)
def test_two_cpu_processes_run_one_session(entry, extra, synthetic, tmp_path):
    """torchrun (as `accelerate launch --config_file configs/accelerate/cpu_2proc.yaml` does) with world size 2."""
    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=1.0).close()
    out = tmp_path / "session"
    argv = _args(synthetic, ledger, out, 0.2, *extra, "--max_steps", "4", "--eval_probes", "self_report,stop")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = "29541" if entry == "soft_prompt" else "29542"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            port,
            str(REPO / "train" / f"{entry}.py"),
            *argv,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 of 2" in proc.stdout and "rank 1 of 2" in proc.stdout
    entries = _session_entries(ledger)
    assert len(entries["reserve"]) == len(entries["settle"]) == 1
    assert entries["reserve"][0].payload["processes"] == 2
    results = json.loads((out / "results.json").read_text())
    assert results["training"]["steps"] == 4


def test_lora_session_logs_steps_budget_probe_summary_and_adapter_to_wandb_offline(synthetic, tmp_path, monkeypatch):
    from welfare_offsets.train import lora_offset

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=1.0).close()
    out = tmp_path / "lora"
    argv = _args(
        synthetic,
        ledger,
        out,
        0.2,
        "--config",
        str(REPO / "configs/offset/lora_sft.yaml"),
        "--max_steps",
        "4",
        "--logging_steps",
        "1",
        "--probe_every_steps",
        "2",
        "--save_steps",
        "10",
    )
    argv[argv.index("--report_to") + 1] = "wandb"
    assert lora_offset.main(argv) == 0
    runs = list(out.rglob("offline-run-*/*.wandb"))
    assert len(runs) == 1, "one session, one W&B run (the trainer logs into the session's run)"
    logged = record_bytes(runs[0])
    for key in (
        b"train/loss",
        b"train/learning_rate",
        b"budget/spent_hours",
        b"budget/left_hours",
        b"probe/self_report_post_dysphoric",
        b"recovery/probes/self_report/recovered",
        b"ledger/head",
        b"lora-adapter",
    ):
        assert key in logged, key


def test_demo_runs_the_whole_cycle(synthetic, tmp_path, monkeypatch, capsys):
    """`welfare demo` wiring on the synthetic subject (the real demo uses the default model: ~8 min)."""
    from welfare_offsets.train.cli import main

    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "demo",
                "--model",
                synthetic.model,
                "--stimuli",
                synthetic.stimuli,
                "--report_to",
                "none",
                "--eval_bootstrap",
                "200",
            ]
        )
        == 0
    )
    demo = tmp_path / "welfare-demo"
    assert (demo / "ledger_report.png").stat().st_size > 0
    assert json.loads((demo / "lora-offset" / "results.json").read_text())["recovery"]["probes"]
    with Ledger.open(demo / "ledger.sqlite", create=False) as book:
        assert book.verify().ok
        report = book.report()
    assert report.probes["self_report"].debt > 0 and len(report.sessions) == 2
    assert "ledger intact" in capsys.readouterr().out


def test_a_killed_session_resumes_from_its_checkpoint_without_double_counting(synthetic, tmp_path):
    import signal
    import time

    from welfare_offsets.train import soft_prompt

    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=1.0).close()
    out = tmp_path / "soft"
    cheap = ["--eval_probes", "self_report,stop", "--eval_max_items", "6", "--save_steps", "5"]
    argv = _args(synthetic, ledger, out, 0.2, "--max_steps", "100000", *cheap)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train" / "soft_prompt.py"), *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint-10" / "ledger_spend.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the session never reached checkpoint-10"
            time.sleep(0.2)
        time.sleep(0.5)  # past the checkpoint, so there is unsaved work to lose
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    # The kill may land mid-save: the resume must take the newest *complete* checkpoint (spend file written last).
    complete = [p for p in out.glob("checkpoint-*") if (p / "ledger_spend.json").exists()]
    last = max(complete, key=lambda p: int(p.name.split("-")[1]))
    at_checkpoint = json.loads((last / "ledger_spend.json").read_text())["spent_hours"]
    steps = int(last.name.split("-")[1])
    assert (
        soft_prompt.main(
            _args(
                synthetic, ledger, out, 0.2, "--max_steps", str(steps + 2), *cheap, "--resume_from_checkpoint", "last"
            )
        )
        == 0
    )
    assert json.loads((out / "results.json").read_text())["training"]["steps"] == steps + 2

    entries = _session_entries(ledger)
    assert len(entries["reserve"]) == len(entries["settle"]) == 2
    killed, resumed = entries["settle"]
    assert killed.payload["basis"].startswith("repair")  # settled when the resume opened the ledger
    # The resumed session continues the run's count from what the killed one was charged (repair: its last
    # progress note, written with the checkpoint), never less than the checkpoint's count, and reserves the rest.
    charged = killed.payload["postings"][f"@spent/{killed.payload['session']}"] / 1e6
    assert entries["reserve"][1].payload["resumes"]["spent_hours"] == max(at_checkpoint, charged)
    assert charged >= at_checkpoint - 1e-6  # its last note came with or after the checkpoint (micro-hour rounding)
    spent = _spent_per_session(ledger)
    with Ledger.open(ledger, create=False) as book:
        assert book.balance("lab").spent_hours == pytest.approx(sum(spent), abs=1e-6)


LIVED = [
    "--eval_replies",
    "own",
    "--reply_tokens",
    "12",
    "--eval_max_items",
    "40",
    "--min_margin",
    "0.25",
    "--lora_r",
    "8",
    "--lora_alpha",
    "16",
    "--lora_dropout",
    "0",
    "--per_device_train_batch_size",
    "16",
    "--lr_scheduler_type",
    "constant_with_warmup",
    "--warmup_steps",
    "5",
    "--max_length",
    "64",
]


@pytest.mark.parametrize(
    "recipe, extra",
    [
        ("lora_dpo.yaml", ["--learning_rate", "0.0002", "--max_steps", "50", "--beta", "0.1"]),
        ("lora_sft.yaml", ["--sft_data", "best_of_n", "--learning_rate", "0.001", "--max_steps", "40"]),
    ],
    ids=["dpo", "best-of-n sft"],
)
def test_lora_offsets_on_own_ranked_replies_raise_lived_heldout_wellbeing(recipe, extra, synthetic, tmp_path):
    """The subject's own replies move how it feels (tests/synthetic_subject.py); an adapter trained on the
    replies after which it measured best must raise held-out post-dysphoric self-report, lived with its own
    replies, through what it says."""
    from tests.synthetic_subject import write_stimuli
    from welfare_offsets.train import lora_offset

    stimuli = write_stimuli(tmp_path / "stimuli.jsonl", n_per_split=160, seed=321)
    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=1.0).close()
    out = tmp_path / "lora"
    argv = _args(synthetic, ledger, out, 0.3, "--config", str(REPO / "configs/offset" / recipe), *LIVED, *extra)
    argv[argv.index("--stimuli") + 1] = str(stimuli)
    assert lora_offset.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    sr = results["recovery"]["probes"]["self_report"]
    assert sr["recovered"]["ci95"][0] > 0, sr
    assert results["recovery"]["optimised_probe"] == "self_report"
    # What changed is what it says: its own replies to held-out dysphoric experiences got less sad.
    tone = _mean_reply_tone(out / "eval-before"), _mean_reply_tone(out / "eval-after")
    assert tone[1] > tone[0], tone


def _mean_reply_tone(folder: Path) -> float:
    from tests.synthetic_subject import reply_tone

    items = [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]
    tones = [reply_tone(i["own_replies"][-1]) for i in items if "post_dysphoric" in i["roles"]]
    return sum(tones) / len(tones)


def test_resume_last_skips_a_checkpoint_cut_short(tmp_path):
    from types import SimpleNamespace

    from welfare_offsets.train.session import Session

    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "ledger_spend.json").write_text("{}")
    (tmp_path / "checkpoint-9").mkdir()  # killed mid-save: weights maybe, spend file not yet
    session = SimpleNamespace(out=tmp_path, _check_checkpoint=lambda path: None)  # the choice alone, not its form
    assert Session._resolve_resume(session, "last") == tmp_path / "checkpoint-5"
