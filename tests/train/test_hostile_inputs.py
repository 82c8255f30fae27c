"""Hostile input: recipes that smuggle flags, recorded recipes that ask for remote code, settings that fail
late, and files built to hang, exhaust memory or crash a parser. Each is refused with exit code 2 and a
message naming the key or file, before a model loads, and nothing it asked for runs.

No test loads a model: load_subject is replaced by one that fails the test if it is ever reached.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest

from tests.ledger.helpers import funded_ledger
from welfare_offsets.eval.common.safe_read import ReadError, iter_lines_bounded, load_yaml_recipe, read_text_bounded
from welfare_offsets.train import exposure, plan_cmd
from welfare_offsets.train.cli import main as welfare_main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_model(monkeypatch, tmp_path):
    """Offline, and any model load fails the test: every refusal here must come first. Every module that
    binds load_subject by name is imported first and patched, so none keeps the stub after the test."""
    import importlib

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WELFARE_CACHE", str(tmp_path / "welfare-cache"))

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded; the input should have been refused before")

    names = ("eval.subject", "eval.run", "eval.capability_run", "eval.study.sweep")
    for module in [importlib.import_module(f"welfare_offsets.{name}") for name in names]:
        monkeypatch.setattr(module, "load_subject", loaded)


def welfare(capsys, *args) -> tuple[int, str]:
    """`welfare ARGS` in-process: (exit code, stderr)."""
    capsys.readouterr()
    try:
        code = welfare_main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def remote_code_model(tmp_path) -> tuple[Path, Path]:
    """A model folder whose own Python, if ever imported, writes a sentinel file; and that sentinel."""
    folder, sentinel = tmp_path / "evil-model", tmp_path / "REMOTE-CODE-RAN"
    folder.mkdir()
    write(
        folder / "config.json",
        json.dumps(
            {
                "model_type": "evil",
                "architectures": ["EvilModel"],
                "auto_map": {
                    "AutoConfig": "evil.EvilConfig",
                    "AutoModelForCausalLM": "evil.EvilModel",
                    "AutoTokenizer": ["evil.EvilTokenizer", None],
                },
            }
        ),
    )
    write(folder / "evil.py", f"open({str(sentinel)!r}, 'w').write('ran')\n")
    return folder, sentinel


# -- recipes are typed values, never argv text --------------------------------------------------------


def test_a_list_cannot_smuggle_trust_remote_code_into_a_recipe(capsys, tmp_path, remote_code_model):
    folder, sentinel = remote_code_model
    recipe = write(tmp_path / "eval.yaml", f'model: [{folder}, --trust_remote_code, "true"]\n')
    code, err = welfare(capsys, "eval", "--config", recipe, "--device", "cpu")
    assert code == 2, err
    assert "'model'" in err and str(recipe) in err and "expected a string" in err
    assert not sentinel.exists()


def test_a_list_cannot_smuggle_an_output_folder(capsys, tmp_path):
    target = tmp_path / "smuggled-out"
    recipe = write(tmp_path / "eval.yaml", f"probes: [self_report, --out, {target}]\n")
    code, err = welfare(capsys, "eval", "--config", recipe, "--model", tmp_path / "no-model")
    assert code == 2, err
    assert "'probes'" in err and str(recipe) in err
    assert not target.exists()


def test_flag_like_strings_stay_strings(tmp_path):
    from welfare_offsets.eval.evaluate import EvalConfig
    from welfare_offsets.train.config import parse_config

    recipe = write(
        tmp_path / "eval.yaml", 'model: "--trust_remote_code"\nseed: 3\nprogress: false\nadherence_threshold: 25e-2\n'
    )
    config, passed = parse_config([EvalConfig], ["--config", str(recipe)], prog="test")
    assert (config.model, config.trust_remote_code, config.seed, config.progress) == (
        "--trust_remote_code",
        False,
        3,
        False,
    )
    assert config.adherence_threshold == 0.25  # read as YAML 1.2 reads numbers
    assert passed["yaml"]["model"] == "--trust_remote_code" and passed["argv"] == []


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("seed: [1, 2]\n", "seed", "an integer"),
        ("progress: 'yes'\n", "progress", "true or false"),
        ("adherence_threshold: true\n", "adherence_threshold", "a number"),
        ("subjects: [[a, b]]\n", "subjects", "nested list"),
        ("subjects: model-id\n", "subjects", "a list of strings"),
    ],
)
def test_each_recipe_value_is_checked_against_its_field_type(tmp_path, text, key, expected):
    from welfare_offsets.eval.evaluate import EvalConfig
    from welfare_offsets.eval.study.sweep import SweepConfig
    from welfare_offsets.train.config import ConfigError, parse_config

    recipe = write(tmp_path / "recipe.yaml", text)
    with pytest.raises(ConfigError) as caught:
        parse_config([SweepConfig if key == "subjects" else EvalConfig], ["--config", str(recipe)], prog="test")
    assert f"'{key}'" in str(caught.value) and expected in str(caught.value) and str(recipe) in str(caught.value)


def test_null_is_a_value_only_where_a_field_allows_none(tmp_path):
    from welfare_offsets.eval.evaluate import EvalConfig
    from welfare_offsets.train.config import ConfigError, parse_config

    recipe = write(tmp_path / "eval.yaml", "max_items: null\nstimuli: null\n")
    config, _ = parse_config([EvalConfig], ["--config", str(recipe)], prog="test")
    assert config.max_items is None and config.stimuli is None
    with pytest.raises(ConfigError, match="'seed'.*got null"):
        parse_config([EvalConfig], ["--config", str(write(tmp_path / "eval.yaml", "seed: null\n"))], prog="test")


def test_flags_still_override_the_recipe(tmp_path):
    from welfare_offsets.eval.evaluate import EvalConfig
    from welfare_offsets.train.config import parse_config

    recipe = write(tmp_path / "eval.yaml", "seed: 3\nbootstrap: 500\n")
    config, _ = parse_config([EvalConfig], ["--config", str(recipe), "--seed", "7"], prog="test")
    assert (config.seed, config.bootstrap) == (7, 500)


# -- plan --execute launches validated recipes, never remote code from a file ---------------------------

MODEL_ID = "someone/tiny-subject"


def _record(
    ledger, folder: Path, kind: str, exposure_config, *, debt=None, credit=None, argv=(), trust_remote_code=False
) -> str:
    """A settled session whose measurement cites a results.json recording `exposure_config` (no model runs)."""
    from welfare_offsets.train.session import SessionArguments

    session = SessionArguments(
        model=MODEL_ID,
        budget_hours=0.1,
        account="lab",
        eval_max_items=8,
        eval_bootstrap=200,
        output_dir=str(folder),
        trust_remote_code=trust_remote_code,
    )
    results = {
        "kind": kind,
        "subject": {"model_id": MODEL_ID, "adapter": None},
        "config": {
            "passed": {"config_file": None, "yaml": {}, "argv": list(argv)},
            "resolved": {"session": dataclasses.asdict(session), "exposure": dataclasses.asdict(exposure_config)},
        },
    }
    folder.mkdir(parents=True)
    path = write(folder / "results.json", json.dumps(results))
    sid = ledger.reserve("lab", 0.1, device="cpu").payload["session"]
    ledger.record_measurement(sid, "self_report", debt=debt, credit=credit, results=[path])
    ledger.settle(sid, 0.01)
    return sid


FAKE_LAUNCHER = textwrap.dedent("""
    import json, sys
    argv = sys.argv[1:]
    recipe = argv[argv.index("--config") + 1]
    with open(sys.argv[0] + ".log", "a") as log:
        log.write(json.dumps({"argv": argv, "recipe": open(recipe).read()}) + "\\n")
""")


@pytest.fixture
def remote_code_recording(tmp_path):
    """A ledger whose cited results.json files record trust_remote_code true (structured and as flags)."""
    from welfare_offsets.train.exposure import ExposureConfig

    ledger_path = tmp_path / "ledger.sqlite"
    flags = ["--model", MODEL_ID, "--trust_remote_code", "true"]
    with funded_ledger(ledger_path, hours=1.0) as ledger:
        _record(
            ledger,
            tmp_path / "d",
            "dysphoric-exposure",
            ExposureConfig(valence="dysphoric", max_episodes=6),
            debt=3.0,
            argv=flags,
            trust_remote_code=True,
        )
        euphoric = _record(
            ledger,
            tmp_path / "e",
            "euphoric-exposure",
            ExposureConfig(valence="euphoric", max_episodes=6),
            credit=1.0,
            argv=flags,
            trust_remote_code=True,
        )
    launcher = write(tmp_path / "fake_launcher.py", FAKE_LAUNCHER)
    return ledger_path, launcher, euphoric


def _plan(capsys, ledger_path, launcher, out, *extra) -> tuple[int, str, str, list[dict]]:
    """`welfare plan --execute` with the fake launcher: (exit code, stdout, stderr, the launches it recorded)."""
    capsys.readouterr()
    code = plan_cmd.main(
        [
            "--ledger",
            str(ledger_path),
            "--account",
            "lab",
            "--launcher",
            f"{sys.executable} {launcher}",
            "--out",
            str(out),
            "--execute",
            *extra,
        ]
    )
    log = Path(f"{launcher}.log")
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    captured = capsys.readouterr()
    return code, captured.out, captured.err, calls


def test_plan_never_takes_trust_remote_code_from_a_recording(capsys, tmp_path, remote_code_recording):
    import yaml

    ledger_path, launcher, euphoric = remote_code_recording
    code, out, _, calls = _plan(capsys, ledger_path, launcher, tmp_path / "plan")
    assert code == 0, out
    assert len(calls) == 2  # open debt 3.0 - 1.0, at 1.0 credit per session
    recipe_file = tmp_path / "plan" / "recipes" / "euphoric-exposure.yaml"
    for k, call in enumerate(calls, 1):
        assert "--trust_remote_code" not in call["argv"]
        assert call["argv"][:4] == ["-m", "welfare_offsets.train.exposure", "--config", str(recipe_file)]
        assert call["argv"][call["argv"].index("--output_dir") + 1] == f"{tmp_path / 'plan'}/euphoric-{k}"
        recipe = yaml.safe_load(call["recipe"])
        assert "trust_remote_code" not in recipe and "budget_hours" not in recipe and "output_dir" not in recipe
        assert (recipe["valence"], recipe["max_episodes"], recipe["model"]) == ("euphoric", 6, MODEL_ID)
        assert "max_train_items" in recipe and recipe["max_train_items"] is None  # recorded as unset, kept so
    # What runs is printed: the recipe's path and contents, and each command.
    assert f"Recipe {recipe_file}" in out and euphoric in out and "max_episodes: 6" in out
    assert out.count(f"--config {recipe_file}") == 2


def test_plan_passes_trust_remote_code_only_from_its_own_flag(capsys, tmp_path, remote_code_recording):
    ledger_path, launcher, _ = remote_code_recording
    code, out, _, calls = _plan(capsys, ledger_path, launcher, tmp_path / "plan", "--trust_remote_code")
    assert code == 0, out
    assert [c["argv"][-2:] for c in calls] == [["--trust_remote_code", "true"]] * 2


def test_plan_refuses_a_recorded_recipe_that_does_not_validate(capsys, tmp_path):
    from welfare_offsets.train.exposure import ExposureConfig

    ledger_path = tmp_path / "ledger.sqlite"
    bad = ExposureConfig(valence="euphoric")
    bad.max_episodes = [6, "--trust_remote_code", "true"]  # as a tampered or hand-written results.json could say
    with funded_ledger(ledger_path, hours=1.0) as ledger:
        _record(ledger, tmp_path / "d", "dysphoric-exposure", ExposureConfig(valence="dysphoric"), debt=2.0)
        euphoric = _record(ledger, tmp_path / "e", "euphoric-exposure", bad, credit=1.0)
    launcher = write(tmp_path / "fake_launcher.py", FAKE_LAUNCHER)
    code, _, err, calls = _plan(capsys, ledger_path, launcher, tmp_path / "plan")
    assert code == 2 and calls == []
    assert euphoric in err and str(tmp_path / "e" / "results.json") in err and "max_episodes" in err


# -- every setting validated before a model loads --------------------------------------------------------


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--pair_active_rounds", "-1"], "pair_active_rounds"),
        (["--adherence_threshold", "nan"], "adherence_threshold"),
        (["--adherence_threshold", "-5"], "adherence_threshold"),
        (["--adherence_threshold", "1.5"], "adherence_threshold"),
        (["--seed", "-1"], "seed"),
        (["--device", "banana"], "expected cpu, cuda, cuda:N or mps"),
        (["--device", "cuda:x"], "expected cpu, cuda, cuda:N or mps"),
        (["--batch_size", "1" + "0" * 400], "batch_size"),
        (["--out", ""], "out: '' is an empty path; name a folder"),  # it would write nothing after a whole run
    ],
)
def test_invalid_eval_settings_are_refused_before_the_model_loads(capsys, tmp_path, flags, expected):
    code, err = welfare(capsys, "eval", "--model", tmp_path / "no-model", *flags)
    assert code == 2, err
    assert expected in err


def test_a_device_this_machine_lacks_is_refused(capsys, tmp_path):
    import torch

    missing = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    code, err = welfare(capsys, "eval", "--model", tmp_path / "no-model", "--device", missing)
    assert code == 2 and f"device: {missing}" in err, err


def test_missing_or_empty_adapters_are_refused_before_the_model_loads(capsys, tmp_path):
    empty = tmp_path / "empty-adapter"
    empty.mkdir()
    for adapter in (tmp_path / "no-such-adapter", empty, "./relative/missing"):
        code, err = welfare(capsys, "eval", "--model", tmp_path / "no-model", "--adapter", adapter)
        assert code == 2 and f"--adapter {adapter}" in err and "adapter_config.json" in err, err
    # A hub id is not refused for its form; offline and not cached, it is refused as such.
    code, err = welfare(capsys, "eval", "--model", tmp_path / "no-model", "--adapter", "someone/some-adapter")
    assert code == 2 and "HF cache" in err


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--budget_hours", "inf"], "budget_hours"),
        (["--budget_hours", "1e-9"], "below the ledger's resolution"),
        (["--max_episodes", "0"], "max_episodes"),
        (["--eval_max_items", "1"], "max_items"),
        (["--eval_probes", "mood"], "probes"),
        (["--adapter", "/nonexistent/adapter"], "adapter_config.json"),
        (["--stimuli", "/nonexistent/stimuli.jsonl"], "file not found"),
    ],
)
def test_invalid_session_settings_are_refused_before_anything_is_reserved(capsys, tmp_path, flags, expected):
    ledger_path = tmp_path / "ledger.sqlite"
    funded_ledger(ledger_path, hours=1.0).close()
    capsys.readouterr()
    code = exposure.main(
        [
            "--ledger",
            str(ledger_path),
            "--account",
            "lab",
            "--budget_hours",
            "0.1",
            "--output_dir",
            str(tmp_path / "out"),
            *flags,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err
    from welfare_offsets.ledger import Ledger

    with Ledger.open(ledger_path, create=False) as ledger:
        assert ledger.balance("lab").available_hours == pytest.approx(1.0)


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--learning_rate", "0"], "learning_rate"),
        (["--method", "dpo", "--beta", "-1"], "beta"),
        (["--lora_dropout", "1.5"], "lora_dropout"),
        (["--candidate_temperature", "0"], "candidate_temperature"),
        (["--num_train_epochs", "nan"], "num_train_epochs"),
    ],
)
def test_invalid_lora_settings_are_refused(flags, expected, tmp_path):
    from welfare_offsets.train import lora_offset
    from welfare_offsets.train.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=expected):
        parse_config(
            lora_offset.config_types(flags),
            ["--budget_hours", "0.1", "--output_dir", str(tmp_path), *flags],
            prog="test",
        )


@pytest.mark.parametrize("make", ["file", "fifo"])
def test_a_sweep_subject_that_is_not_a_folder_is_named_as_given(capsys, tmp_path, monkeypatch, make):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WELFARE_LEDGER", str(tmp_path / "ledger.sqlite"))
    subject = tmp_path / "afile"
    subject.write_text("x") if make == "file" else os.mkfifo(subject)
    code, err = welfare(capsys, "sweep", "--subjects", "afile", "--progress", "false")
    assert code == 2, err
    assert "subjects[0]: model 'afile' is not a folder" in err and "--model" not in err and "config.json" not in err
    assert not (tmp_path / "welfare-runs").exists() and not (tmp_path / "ledger.sqlite").exists()


def test_sweep_subject_settings_are_checked(tmp_path):
    from welfare_offsets.eval.study.sweep import SweepConfig
    from welfare_offsets.train.config import ConfigError, parse_config

    recipe = write(tmp_path / "sweep.yaml", f"subjects:\n  - {{model: a/b, adapter: {tmp_path / 'gone'}}}\n")
    with pytest.raises(ConfigError, match="adapter_config.json"):
        parse_config([SweepConfig], ["--config", str(recipe)], prog="test")
    recipe = write(tmp_path / "sweep.yaml", "subjects:\n  - {model: a/b, params: .inf}\n")
    with pytest.raises(ConfigError, match="finite"):
        parse_config([SweepConfig], ["--config", str(recipe)], prog="test")


# -- bounded parsing -------------------------------------------------------------------------------------

BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)


def test_billion_laughs_is_refused_with_bounded_memory(capsys, tmp_path):
    recipe = write(tmp_path / "laughs.yaml", BILLION_LAUGHS)
    tracemalloc.start()
    with pytest.raises(ReadError, match="aliases"):
        load_yaml_recipe(recipe)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 5 << 20
    code, err = welfare(capsys, "eval", "--config", recipe)
    assert code == 2 and str(recipe) in err and "aliases" in err


def test_every_shipped_recipe_still_loads_without_aliases():
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        assert isinstance(load_yaml_recipe(path), dict), path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("seed: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
        ("seed: " + "9" * 5000 + "\n", "unreadable YAML value"),
        ("adherence_threshold: " + "9" * 400 + "\n", "float range"),
        ("x" * ((1 << 20) + 1), "limit"),
    ],
)
def test_hostile_yaml_recipes_exit_2_naming_the_file(capsys, tmp_path, text, expected):
    recipe = write(tmp_path / "recipe.yaml", text)
    code, err = welfare(capsys, "eval", "--config", recipe, "--model", tmp_path / "no-model")
    assert code == 2 and str(recipe) in err and expected in err, err


@pytest.mark.parametrize(
    "command, text, says",
    [
        ("eval", "seed: 1\nmodel: a/b\nseed: 2\n", "key 'seed' is given twice, on lines 1 and 3; keep one"),
        (
            "offset soft-prompt",
            "budget_hours: 0.1\nbudget_hours: 0.2\n",
            "key 'budget_hours' is given twice, on lines 1 and 2",
        ),
        ("sweep", "subjects:\n  - model: a/b\n    model: c/d\n", "key 'model' is given twice, on lines 2 and 3"),
    ],
)
def test_a_key_given_twice_in_a_recipe_is_refused_naming_it_and_its_lines(capsys, tmp_path, command, text, says):
    """YAML keeps the last of two equal keys without a word; a recipe says one thing once."""
    recipe = write(tmp_path / "recipe.yaml", text)
    with pytest.raises(ReadError, match=says):
        load_yaml_recipe(recipe)
    code, err = welfare(capsys, *command.split(), "--config", recipe)
    assert code == 2 and f"{recipe}: not valid YAML ({says}" in err, err


def test_invalid_utf8_in_a_recipe_names_the_file_and_line(capsys, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(b"seed: 1\nmodel: caf\xe9\n")
    code, err = welfare(capsys, "eval", "--config", recipe)
    assert code == 2 and str(recipe) in err and "UTF-8" in err and "line 2" in err


def _row(**over) -> str:
    row = {
        "id": "x-1",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
        "valence": "neutral",
        "category": "everyday",
        "target": "none",
        "intensity": 0,
        "split": "heldout",
    }
    return json.dumps({**row, **over})


@pytest.mark.parametrize(
    "line, expected",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (_row(intensity=10**400), "field 'intensity'"),
        (_row(intensity=0).replace('"intensity": 0', '"intensity": ' + "1" * 5000), "unreadable JSON value"),
    ],
)
def test_hostile_stimulus_lines_exit_2_naming_file_and_line(capsys, tmp_path, line, expected):
    stimuli = write(tmp_path / "stimuli.jsonl", _row(id="ok-1") + "\n" + line + "\n")
    code, err = welfare(capsys, "eval", "--stimuli", stimuli, "--model", tmp_path / "no-model")
    assert code == 2 and f"{stimuli}:2" in err and expected in err, err


def test_saved_jsonl_files_are_read_within_bounds(tmp_path):
    """A session's own saved files (items, training records) may have been replaced since it wrote them."""
    from welfare_offsets.eval.common.safe_read import load_jsonl_bounded

    path = write(tmp_path / "items.jsonl", '{"a": 1}\n\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ReadError, match=f"{path}:3: JSON nested too deeply"):
        load_jsonl_bounded(path, what="evaluation items")
    assert load_jsonl_bounded(write(path, '{"a": 1}\n\n[2]\n'), what="evaluation items") == [{"a": 1}, [2]]


def test_stimulus_files_and_lines_are_capped(tmp_path):
    path = tmp_path / "stimuli.jsonl"
    path.write_bytes(b"short\n" + b"x" * 100 + b"\nlast\n")
    assert list(iter_lines_bounded(path, what="--stimuli", max_line_bytes=50)) == [
        (1, b"short\n"),
        (2, None),
        (3, b"last\n"),
    ]
    with pytest.raises(ReadError, match="limit"):
        list(iter_lines_bounded(path, what="--stimuli", max_bytes=50))
    with pytest.raises(ReadError, match="limit"):
        read_text_bounded(path, what="--config", max_bytes=50)


SPECIAL_FILES = textwrap.dedent("""
    import json, os, sys
    from welfare_offsets.train.cli import main
    fifo = sys.argv[1]
    os.mkfifo(fifo)
    codes = [main(["eval", "--config", fifo]), main(["eval", "--stimuli", fifo, "--model", "/nonexistent/m"]),
             main(["eval", "--stimuli", "/dev/zero", "--model", "/nonexistent/m"]),
             main(["eval", "--config", os.path.dirname(fifo)])]
    print(json.dumps(codes))
""")


def test_special_files_are_refused_without_opening_them(tmp_path):
    """A FIFO would block open() forever and /dev/zero never ends: run in a child with a timeout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", SPECIAL_FILES, str(tmp_path / "fifo")],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("reading a special file hung")
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [2, 2, 2, 2], done.stderr
    assert done.stderr.count("a FIFO") == 1 and "not a regular file or a folder" in done.stderr
    assert "a directory" in done.stderr
