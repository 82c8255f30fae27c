"""The meter: the one place that turns time into accelerator-hours.

Billed as Slurm bills: accelerator-hours = wall time x processes, for one device kind, measured around
the work itself. On a CPU-only machine the same meter counts CPU process-hours, so every budget path
runs here. Energy comes from NVML's energy counter for this process's GPU when there is one and it
counts energy; otherwise it is None, never an estimate.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from welfare_offsets.ledger.errors import LedgerError

DEVICE_KINDS = ("cuda", "cpu", "mps")
SECONDS_PER_HOUR = 3600.0
MILLIJOULES_PER_KWH = 3.6e9


def check_device(device: object) -> str:
    if device not in DEVICE_KINDS:
        raise LedgerError(f"device {device!r} is not one of {', '.join(DEVICE_KINDS)}")
    return device


def check_processes(processes: object) -> int:
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise LedgerError(f"processes must be a whole number >= 1 (the world size), got {processes!r}")
    return processes


def detect_device_kind() -> str:
    """cuda, mps or cpu: what torch would run on here (torch is imported only when this is called)."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class NvmlEnergy:
    """Total-energy counter of one GPU, read through NVML (`nvidia-ml-py`)."""

    def __init__(self, nvml, handle):
        self._nvml, self._handle = nvml, handle

    @classmethod
    def for_current_cuda_device(cls) -> NvmlEnergy | None:
        """The counter of the GPU this process's torch uses, or None where NVML cannot give one."""
        try:
            import pynvml
            import torch

            uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
            counter = cls(pynvml, handle)
            counter.read_millijoules()  # GPUs before Volta have no energy counter: find out now
            return counter
        except Exception:  # no pynvml, no driver, no GPU, or no counter: energy is absent, not zero
            return None

    def read_millijoules(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))


class Meter:
    """Accelerator-hours and energy of one process's share of a session, from `start()` on."""

    def __init__(
        self,
        device: str,
        processes: int = 1,
        *,
        energy: NvmlEnergy | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.device, self.processes = check_device(device), check_processes(processes)
        self._energy, self._clock = energy, clock
        self._started: float | None = None
        self._stopped: float | None = None
        self._energy_start = self._energy_end = 0

    @classmethod
    def for_device(cls, device: str, processes: int = 1) -> Meter:
        """A meter with NVML energy attached when the device is a GPU that reports it."""
        energy = NvmlEnergy.for_current_cuda_device() if device == "cuda" else None
        return cls(device, processes, energy=energy)

    def start(self) -> Meter:
        if self._energy is not None:
            self._energy_start = self._energy.read_millijoules()
        self._started = self._clock()
        return self

    def stop(self) -> None:
        if self._stopped is None:
            self._stopped = self._clock()
            if self._energy is not None:
                self._energy_end = self._energy.read_millijoules()

    @property
    def seconds(self) -> float:
        """Wall seconds metered so far (up to `stop()` once stopped)."""
        if self._started is None:
            return 0.0
        end = self._clock() if self._stopped is None else self._stopped
        return end - self._started

    @property
    def hours(self) -> float:
        """Accelerator-hours so far: wall time x processes."""
        return self.seconds * self.processes / SECONDS_PER_HOUR

    def energy_kwh(self) -> float | None:
        """This process's GPU energy since start (to stop, once stopped); None where not measured."""
        if self._energy is None or self._started is None:
            return None
        end = self._energy_end if self._stopped is not None else self._energy.read_millijoules()
        return (end - self._energy_start) / MILLIJOULES_PER_KWH

    def __enter__(self) -> Meter:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
