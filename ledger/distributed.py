"""Decisions and sums across the ranks of a distributed session, when there is one.

Nothing here imports torch: a process that initialised torch.distributed has imported torch already,
and one that has not is a single rank.
"""

from __future__ import annotations

import sys


def _torch_if_distributed():
    torch = sys.modules.get("torch")
    if torch is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return None
    return torch


def _reduce(values: list[float], op_name: str) -> list[float]:
    torch = _torch_if_distributed()
    if torch is None:
        return values
    dist = torch.distributed
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op_name))
    return tensor.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank if it is True on any: so all ranks stop at the same step."""
    return _reduce([1.0 if flag else 0.0], "MAX")[0] > 0


def sum_over_ranks(value: float | None) -> float | None:
    """The sum over ranks, or None if any rank has no value (a partial sum would understate)."""
    total, missing = _reduce([value or 0.0, 1.0 if value is None else 0.0], "SUM")
    return None if missing else total


def is_main_process(environ) -> bool:
    """Rank 0 is the only writer of a distributed session; launchers set RANK for the others."""
    return int(environ.get("RANK", "0")) == 0


def world_size(environ) -> int:
    return int(environ.get("WORLD_SIZE", "1"))
