"""Placement settings (eval/placement.py through LoadingSettings): what cannot place a subject is refused with
exit 2 before any model loads, and a rank that spans several GPUs holds, places on and is billed for its own."""

from __future__ import annotations

import os

import pytest
import torch

from welfare_offsets.eval.placement import rank_gpus
from welfare_offsets.eval.settings import LoadingSettings
from welfare_offsets.ledger.meter import Meter, NvmlEnergy
from welfare_offsets.train.cli import main as welfare_main

NO_MODEL = "/nonexistent/welfare-test-model"
GIB = 2**30


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WELFARE_CACHE", str(tmp_path / "welfare-cache"))
    for name in ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def node(monkeypatch):
    """A node of `gpus` CUDA GPUs with `ranks` launched on it, this process being rank `rank` (torch mocked)."""

    def launch(gpus: int, ranks: int = 1, rank: int = 0):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: ((70 + index) * GIB, 80 * GIB))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
        monkeypatch.setenv("LOCAL_RANK", str(rank))

    return launch


def welfare_eval(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = welfare_main(["eval", "--model", NO_MODEL, *map(str, args)])
    return code, capsys.readouterr().err.strip()


BAD = [
    (
        {"device_map": ["model.layers.0", "cpu"]},
        "key 'device_map' (argument --device_map): expected a mapping or a string",
    ),
    ({"device_map": 3}, "key 'device_map' (argument --device_map): expected a mapping or a string, got int 3"),
    ({"device_map": "cuda"}, "device_map: 'cuda' is not key=value"),
    (
        {"device_map": {"lm_head": "gpu"}},
        "device_map['lm_head']: expected a GPU index of this rank (0; gpus_per_rank is 1)",
    ),
    ({"device_map": {"lm_head": True}}, "device_map['lm_head']: expected a GPU index of this rank"),
    (
        {"device_map": "auto", "max_memory": {"cpu": "lots"}},
        "max_memory['cpu']: expected a positive size such as 70GiB",
    ),
    ({"device_map": "auto", "max_memory": {"cpu": "-5GB"}}, "max_memory['cpu']: expected a positive size"),
    ({"device_map": "auto", "max_memory": {"cpu": 0}}, "max_memory['cpu']: expected a positive size"),
    ({"device_map": "auto", "max_memory": {"tpu": "1GB"}}, "max_memory: expected a GPU index of this rank"),
    ({"device_map": "auto", "max_memory": ["1GB"]}, "key 'max_memory' (argument --max_memory): expected a mapping"),
    ({"max_memory": {"cpu": "1GB"}}, "max_memory: only a placed subject spans devices; set device_map too"),
    ({"gpus_per_rank": 2}, "gpus_per_rank: only a placed subject spans devices; set device_map too"),
    ({"device_map": "auto", "gpus_per_rank": 2}, "gpus_per_rank 2 needs 2 GPU(s), and torch sees 0 here"),
    (
        {"device_map": {"lm_head": 0, "": "cpu"}},
        "a GPU index in device_map or max_memory needs 1 GPU(s), and torch sees 0",
    ),
    ({"device_map": {"lm_head": "disk", "": "cpu"}}, "places weights on disk: set offload_folder"),
    ({"device_map": {"": "cpu"}, "max_memory": {"cpu": "1GB"}}, "a module mapping ignores it; give one of them"),
    ({"device_map": "auto", "device": "cpu"}, "device puts the whole subject on one device and device_map spreads it"),
]


@pytest.mark.parametrize("recipe, message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_placement_that_cannot_work_exits_2_before_any_model_loads(capsys, tmp_path, no_model_loads, recipe, message):
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, err = welfare_eval(capsys, "--config", path, "--out", tmp_path / "out")
    assert code == 2 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]  # nothing written


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--device_map", "auto", "--max_memory", "cpu=lots"], "max_memory['cpu']: expected a positive size"),
        (["--device_map", "auto", "--max_memory", "cpu"], "max_memory: 'cpu' is not key=value"),
        (["--device_map", "auto", "--max_memory", "0=1GB,0=2GB"], "max_memory: '0' is given twice"),
        (["--device_map", "lm_head=disk,=cpu"], "device_map: '=cpu' is not key=value"),
        (["--device_map", "auto", "--gpus_per_rank", "0"], "gpus_per_rank: expected an integer >= 1, got 0"),
    ],
)
def test_placement_flags_are_read_and_refused_alike(capsys, tmp_path, no_model_loads, flags, message):
    code, err = welfare_eval(capsys, *flags)
    assert code == 2 and message in err, err


@pytest.mark.parametrize("make", ["symlink", "dangling symlink", "file", "fifo"])
def test_an_offload_folder_that_is_a_link_or_not_a_folder_is_refused_untouched(capsys, tmp_path, no_model_loads, make):
    target = tmp_path / "elsewhere"
    path = tmp_path / "offload"
    if make == "symlink":
        target.mkdir()
        path.symlink_to(target)
    elif make == "dangling symlink":
        path.symlink_to(target)
    elif make == "file":
        path.write_text("mine")
    else:
        os.mkfifo(path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, err = welfare_eval(capsys, "--device_map", "lm_head=disk,model=cpu", "--offload_folder", path)
    assert code == 2, err
    assert ("is a symbolic link" if "symlink" in make else "exists and is not a folder") in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_every_command_refuses_a_bad_placement_and_training_sessions_refuse_any(capsys, tmp_path, no_model_loads):
    session = ["--output_dir", tmp_path / "session", "--budget_hours", "0.1", "--device_map", "auto"]
    for argv, message in [
        (["sweep", "--subjects", "a/b", "--device_map", "auto", "--max_memory", "cpu=0GB"], "expected a positive size"),
        (["capability", "--capability_tasks", "mmlu", "--device_map", "lm_head=cuda"], "expected a GPU index"),
        (["offset", "exposure", *session, "--gpus_per_rank", "3"], "gpus_per_rank 3 needs 3 GPU(s)"),
        (["offset", "lora", *session], "a lora-sft session trains its subject"),
        (["offset", "soft-prompt", *session], "a soft-prompt session trains its subject"),
    ]:
        capsys.readouterr()
        code = welfare_main([str(a) for a in argv])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err, (argv, err)
    assert not any(tmp_path.iterdir())


# -- a rank that spans several GPUs -------------------------------------------------------------------------


def test_each_rank_holds_its_own_device_and_a_block_of_the_rest_and_no_two_ranks_share_a_gpu():
    assert rank_gpus(0, 2, 4) == (0, 2, 3, 4) and rank_gpus(1, 2, 4) == (1, 5, 6, 7)
    assert rank_gpus(3, 8, 1) == (3,)
    for ranks in range(1, 9):
        for per_rank in range(1, 8 // ranks + 1):
            held = [rank_gpus(r, ranks, per_rank) for r in range(ranks)]
            assert all(len(gpus) == per_rank and gpus[0] == r for r, gpus in enumerate(held))
            assert sorted(g for gpus in held for g in gpus) == list(range(ranks * per_rank))


def test_ranks_times_gpus_per_rank_beyond_the_node_is_refused(node):
    node(gpus=8, ranks=3)
    with pytest.raises(ValueError, match=r"gpus_per_rank 4 x 3 ranks \(accelerate launch --num_processes\) needs 12"):
        LoadingSettings(device_map="auto", gpus_per_rank=4)
    node(gpus=8, ranks=2)
    assert LoadingSettings(device_map="auto", gpus_per_rank=4).gpus_per_rank == 4
    with pytest.raises(ValueError, match=r"device_map\['lm_head'\]: expected a GPU index of this rank \(0-3"):
        LoadingSettings(device_map={"lm_head": 4, "": 0}, gpus_per_rank=4)


def test_a_rank_places_its_subject_on_its_own_gpus_only(node):
    node(gpus=8, ranks=2, rank=1)
    settings = LoadingSettings(device_map={"model": 0, "lm_head": 3}, gpus_per_rank=4)
    assert settings.held_gpus() == (1, 5, 6, 7)
    assert settings.placement().device_map == {"model": 1, "lm_head": 7}  # this rank's GPU 0 and 3
    capped = LoadingSettings(device_map="auto", max_memory={0: "70GiB", 3: 1000, "cpu": "1GB"}, gpus_per_rank=4)
    assert capped.placement().max_memory == {1: 70 * GIB, 7: 1000, "cpu": 10**9}
    spread = LoadingSettings(device_map="balanced", gpus_per_rank=4).placement()
    assert set(spread.max_memory) == {1, 5, 6, 7, "cpu"}  # free memory of its own GPUs, never another rank's
    assert spread.max_memory[5] == 75 * GIB
    assert spread.gpus == (1, 5, 6, 7)
    assert LoadingSettings().held_gpus() == () and LoadingSettings().placement() is None  # unplaced: as before


def test_a_rank_holding_four_gpus_is_metered_for_four(node, monkeypatch):
    node(gpus=8, ranks=2)
    monkeypatch.setattr(NvmlEnergy, "for_cuda_devices", classmethod(lambda cls, indices=(): None))
    gpus = LoadingSettings(device_map="auto", gpus_per_rank=4).held_gpus()
    assert Meter.for_device("cuda", processes=2, gpus=gpus).accelerators == 8  # the session: 2 ranks x 4 GPUs
    assert Meter.for_device("cuda", processes=1, gpus=gpus).accelerators == 4  # one sweep subject, on one rank
    assert Meter.for_device("cuda", processes=1).accelerators == 1
    assert Meter.for_device("cpu", processes=1, gpus=gpus).accelerators == 1  # no GPU is held on the CPU
