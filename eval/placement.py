"""Placing a subject too big for one device: transformers' `device_map`, `max_memory` and `offload_folder`
(accelerate's big-model placement), and the GPUs each rank of a launch holds.

The settings mean what they mean to `from_pretrained`, with one change: a GPU index counts the GPUs of this
process, so one recipe serves every rank of `accelerate launch --num_processes R`. With `gpus_per_rank` k,
rank r holds GPU r, its accelerate device (where its collectives already run, so no rank's buffers land on
another's GPU), and k - 1 of the GPUs past the ranks' own: R + r(k - 1) ... R + r(k - 1) + k - 2. Its GPU 0
is cuda:r. The meter bills every GPU a rank holds (ledger/meter.py).
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections import Counter
from dataclasses import dataclass

from welfare_offsets.eval.common.errors import InputError
from welfare_offsets.eval.common.output_folder import output_path

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's, as from_pretrained takes them
OFFLOAD_DEVICES = ("cpu", "disk")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B)")
_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


class PlacementError(InputError):
    """A device_map, max_memory, offload_folder or gpus_per_rank that cannot place the subject here."""


def parse_device_map(value, gpus_per_rank: int) -> str | dict | None:
    """`device_map` checked and normalised: None (the whole model on one device), a strategy, or module ->
    device (a GPU index of this rank, cpu or disk). Text `module=device,...` (a flag) is read as a mapping."""
    if value is None or value in STRATEGIES:
        return value
    mapping = _key_values(value, "device_map") if isinstance(value, str) else value
    if not isinstance(mapping, dict) or not mapping:
        raise PlacementError(
            f"device_map: expected {', '.join(STRATEGIES)} or a mapping of module names to devices "
            f"(model.layers.0=0,lm_head=cpu), got {value!r}"
        )
    placed = {}
    for module, device in mapping.items():
        if not isinstance(module, str):
            raise PlacementError(f"device_map: module names are text, got {module!r}")
        placed[module] = _device(device, gpus_per_rank, f"device_map[{module!r}]", OFFLOAD_DEVICES)
    return placed


def parse_max_memory(value, gpus_per_rank: int) -> dict | None:
    """`max_memory` checked and normalised: device (a GPU index of this rank, cpu or disk) -> the most of its
    memory the weights may take, bytes or a size like 70GiB. Text `0=70GiB,cpu=100GiB` (a flag) is a mapping."""
    if value is None:
        return None
    mapping = _key_values(value, "max_memory") if isinstance(value, str) else value
    if not isinstance(mapping, dict) or not mapping:
        raise PlacementError(f"max_memory: expected a mapping of devices to sizes (0=70GiB,cpu=100GiB), got {value!r}")
    caps = {}
    for device, size in mapping.items():
        key = _device(device, gpus_per_rank, "max_memory", OFFLOAD_DEVICES)
        if key in caps:
            raise PlacementError(f"max_memory: device {key!r} is given twice")
        size_in_bytes(size, f"max_memory[{key!r}]")
        caps[key] = size
    return caps


def size_in_bytes(size, where: str = "max_memory") -> int:
    """A positive size as bytes: an integer, or a number with a unit (KB, MB, GB, TB or KiB, MiB, GiB, TiB)."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    match = _SIZE.fullmatch(size.strip()) if isinstance(size, str) else None
    if match is None or not float(match[1]) > 0:
        raise PlacementError(
            f"{where}: expected a positive size such as 70GiB, 500MB or a number of bytes, got {size!r}"
        )
    return int(float(match[1]) * _UNITS[match[2]])


def check_offload_folder(path: str) -> None:
    """Refuse an offload folder that is a link (even a dangling one) or exists and is not a folder; each load
    writes only in a new folder of its own inside it."""
    folder = output_path(path)
    try:
        mode = os.lstat(folder).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise PlacementError(
            f"offload_folder {folder} is a symbolic link; links are never followed: pass a real folder or a new path"
        )
    if not stat.S_ISDIR(mode):
        raise PlacementError(f"offload_folder {folder} exists and is not a folder; pass a folder or a new path")


def launch_rank() -> tuple[int, int]:
    """(this process's rank on its node, the ranks on its node), as torchrun and `accelerate launch` set them."""
    ranks = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE") or "1"
    return int(os.environ.get("LOCAL_RANK", "0")), int(ranks)


def rank_gpus(rank: int, ranks: int, per_rank: int) -> tuple[int, ...]:
    """The GPUs rank `rank` of `ranks` holds, `per_rank` of them: its own accelerate device first (module
    docstring)."""
    first = ranks + rank * (per_rank - 1)
    return (rank, *range(first, first + per_rank - 1))


def held_gpus(gpus_per_rank: int) -> tuple[int, ...]:
    """The GPUs this process holds for a placed subject (none on a machine without CUDA)."""
    return rank_gpus(*launch_rank(), gpus_per_rank) if visible_gpus() else ()


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(gpus_per_rank: int, names_gpus: bool) -> None:
    """Refuse GPUs this node does not have: every rank's `gpus_per_rank` must exist, and so must any GPU a
    placement names."""
    if gpus_per_rank == 1 and not names_gpus:
        return  # the default: each rank on its own device, as accelerate places it
    _, ranks = launch_rank()
    have, need = visible_gpus(), ranks * gpus_per_rank
    if have < need:
        asked = f"gpus_per_rank {gpus_per_rank}" if gpus_per_rank > 1 else "a GPU index in device_map or max_memory"
        launch = f" x {ranks} ranks (accelerate launch --num_processes)" if ranks > 1 else ""
        raise PlacementError(
            f"{asked}{launch} needs {need} GPU(s), and torch sees {have} here; lower "
            f"gpus_per_rank{' or --num_processes' if ranks > 1 else ''}, or place the subject on cpu and disk only"
        )


@dataclass(frozen=True)
class Placement:
    """Where this process puts its subject: transformers' placement arguments, GPU indices made absolute."""

    device_map: str | dict
    max_memory: dict | None
    offload_folder: str | None
    gpus: tuple[int, ...]  # the GPUs this rank holds (none on a machine without CUDA)

    @classmethod
    def for_this_rank(
        cls, device_map: str | dict, max_memory: dict | None, offload_folder: str | None, gpus_per_rank: int
    ) -> Placement:
        gpus = held_gpus(gpus_per_rank)

        def absolute(device):
            return gpus[device] if isinstance(device, int) else device

        if isinstance(device_map, dict):
            device_map = {module: absolute(device) for module, device in device_map.items()}
        if max_memory is not None:
            max_memory = {absolute(device): size_in_bytes(size) for device, size in max_memory.items()}
        elif gpus and isinstance(device_map, str):
            max_memory = _free_memory(gpus)  # a strategy spreads over this rank's GPUs, never another rank's
        return cls(device_map, max_memory, offload_folder, gpus)

    def from_pretrained_kwargs(self, offload_to: str | None) -> dict:
        kwargs = {"device_map": self.device_map, "max_memory": self.max_memory}
        return {**kwargs, "offload_folder": offload_to} if offload_to else kwargs

    def offload_subfolder(self) -> str | None:
        """A new folder inside offload_folder for one load's offloaded weights (None without offload_folder)."""
        if self.offload_folder is None:
            return None
        check_offload_folder(self.offload_folder)  # again: the path may have changed since the settings were read
        root = output_path(self.offload_folder)
        root.mkdir(parents=True, exist_ok=True)
        return tempfile.mkdtemp(prefix="offload-", dir=root)

    def describe(self, model) -> dict:
        """What ran where, for results: the placement asked for, the GPUs held, modules per device."""
        placed = getattr(model, "hf_device_map", None) or {"": _first_device(model)}  # one device: no map kept
        modules = Counter(device_name(d) for d in placed.values())
        return {
            "device_map": {m: device_name(d) for m, d in self.device_map.items()}
            if isinstance(self.device_map, dict)
            else self.device_map,
            "max_memory": None
            if self.max_memory is None
            else {device_name(d): size for d, size in self.max_memory.items()},
            "offload_folder": self.offload_folder,
            "gpus": [device_name(g) for g in self.gpus],
            "modules_per_device": dict(sorted(modules.items())),
        }


def _first_device(model) -> str:
    return str(next(model.parameters()).device)


def device_name(device) -> str:
    """A placement's device as text: a GPU index as cuda:N, anything else as it is."""
    return f"cuda:{device}" if isinstance(device, int) else str(device)


def _device(value, gpus_per_rank: int, where: str, named: tuple[str, ...]) -> int | str:
    """A GPU index of this rank (an integer, or digits in text) or one of `named`."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, str) and value.strip() in named:
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < gpus_per_rank:
        return value
    gpus = "0" if gpus_per_rank == 1 else f"0-{gpus_per_rank - 1}"
    raise PlacementError(
        f"{where}: expected a GPU index of this rank ({gpus}; gpus_per_rank is {gpus_per_rank}) or "
        f"{' or '.join(named)}, got {value!r}"
    )


def _key_values(text: str, name: str) -> dict:
    """`key=value,key=value` text as a mapping (how a flag gives one)."""
    mapping = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise PlacementError(
                f"{name}: {part.strip()!r} is not key=value; write e.g. "
                + ("auto, or model.layers.0=0,lm_head=cpu" if name == "device_map" else "0=70GiB,cpu=100GiB")
            )
        if key.strip() in mapping:
            raise PlacementError(f"{name}: {key.strip()!r} is given twice")
        mapping[key.strip()] = value.strip()
    return mapping


def _free_memory(gpus: tuple[int, ...]) -> dict:
    """Free memory of these GPUs and available CPU memory (transformers' own default for a strategy, kept off
    the GPUs of other ranks)."""
    import psutil
    import torch

    return {g: torch.cuda.mem_get_info(g)[0] for g in gpus} | {"cpu": psutil.virtual_memory().available}
