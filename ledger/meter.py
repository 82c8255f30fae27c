"""The meter: the one place that turns time into accelerator-hours.

Billed as Slurm bills: accelerator-hours = wall time x the accelerators held, for one device kind, measured
around the work itself: processes x the GPUs each holds (one, unless a process spreads its subject over
several). On a CPU-only machine the same meter counts CPU process-hours, so every budget path runs here.
Energy comes from NVML's energy counters of the GPUs this process holds, where they count energy; otherwise
it is None, never an estimate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

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
    """Total-energy counters of the GPUs one process holds, summed, read through NVML (`nvidia-ml-py`)."""

    def __init__(self, nvml, handles: Sequence):
        self._nvml, self._handles = nvml, tuple(handles)

    @classmethod
    def for_cuda_devices(cls, indices: Sequence[int] = ()) -> NvmlEnergy | None:
        """The counters of these torch CUDA devices (default: the one this process's torch uses), or None where
        NVML cannot give one for each."""
        try:
            import pynvml
            import torch

            pynvml.nvmlInit()
            handles = []
            for index in indices or [torch.cuda.current_device()]:
                uuid = str(torch.cuda.get_device_properties(index).uuid)
                uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
                handles.append(pynvml.nvmlDeviceGetHandleByUUID(uuid.encode()))  # bytes: old bindings take no str
            counter = cls(pynvml, handles)
            counter.read_millijoules()  # GPUs before Volta have no energy counter: find out now
            return counter
        except Exception:  # no pynvml, no driver, no GPU, or no counter: energy is absent, not zero
            return None

    def read_millijoules(self) -> int:
        return sum(int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle)) for handle in self._handles)


class Meter:
    """Accelerator-hours and energy of one process's share of a session, from `start()` on; `processes` is
    the world size, `devices_per_process` the accelerators each process holds."""

    def __init__(
        self,
        device: str,
        processes: int = 1,
        *,
        devices_per_process: int = 1,
        energy: NvmlEnergy | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.device, self.processes = check_device(device), check_processes(processes)
        if isinstance(devices_per_process, bool) or not isinstance(devices_per_process, int) or devices_per_process < 1:
            raise LedgerError(f"devices_per_process must be a whole number >= 1, got {devices_per_process!r}")
        self.devices_per_process = devices_per_process
        self._energy, self._clock = energy, clock
        self._started: float | None = None
        self._stopped: float | None = None
        self._energy_start = self._energy_end = 0

    @classmethod
    def for_device(cls, device: str, processes: int = 1, gpus: Sequence[int] = ()) -> Meter:
        """A meter with NVML energy attached when the device is a GPU that reports it. `gpus`: the CUDA devices
        each process holds, where it holds several (default: its one current device)."""
        if device != "cuda":
            return cls(device, processes)
        return cls(device, processes, devices_per_process=max(1, len(gpus)), energy=NvmlEnergy.for_cuda_devices(gpus))

    @property
    def accelerators(self) -> int:
        """The accelerators billed: processes x the devices each holds."""
        return self.processes * self.devices_per_process

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
        """Accelerator-hours so far: wall time x the accelerators billed."""
        return self.seconds * self.accelerators / SECONDS_PER_HOUR

    def energy_kwh(self) -> float | None:
        """The energy of this process's GPUs since start (to stop, once stopped); None where not measured."""
        if self._energy is None or self._started is None:
            return None
        end = self._energy_end if self._stopped is not None else self._energy.read_millijoules()
        return (end - self._energy_start) / MILLIJOULES_PER_KWH

    def __enter__(self) -> Meter:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
