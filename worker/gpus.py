"""The host's GPUs through NVML: which exist, why none do, and how busy each is (for the worker's heartbeat).

GPUs are numbered as NVML and nvidia-smi number them (PCI bus order); children get
CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA_VISIBLE_DEVICES means the same GPU to them. A GPU counts only
when CUDA can reach it too: NVML may list cards that a driver mismatch keeps from training.
"""

import logging
import os
from dataclasses import dataclass

from worker.reporter import first_line

log = logging.getLogger("trainboard.worker")


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str


def device_label(device: str, gpu_name: str | None) -> str:
    """Where an attempt trains, as its job records it: "cuda:0 NVIDIA H100 80GB HBM3" or "cpu"."""
    return f"{device} {gpu_name}" if gpu_name else device


def visible_gpus(nvml: "Nvml") -> list[Gpu]:
    """The GPUs this worker may use. Without NVML, CUDA's count with placeholder names."""
    # CUDA numbers GPUs fastest first, NVML by PCI bus. One numbering for both, inherited by the
    # children, so a slot's index, its GPU's name and its CUDA_VISIBLE_DEVICES name one card.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    import torch

    if not torch.cuda.is_available():
        return []
    if nvml.available:
        return nvml.gpus()
    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    indices = [int(i) for i in visible.split(",") if i.strip().isdigit()] if visible else list(range(count))
    return [Gpu(index, f"GPU {index}") for index in indices[:count]]


def why_no_gpus(nvml: "Nvml") -> str:
    """Why this worker sees no GPU, in the words of each layer that can say so."""
    import torch

    causes = []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        causes.append(f'CUDA_VISIBLE_DEVICES is set to "{visible}"' + (" (empty: no GPU is visible)" if not visible.strip() else ""))
    if not torch.cuda.is_available():
        cause = "torch.cuda.is_available() is false"
        try:
            torch.cuda.init()  # raises the driver's complaint that is_available() only warns about
        except Exception as exc:
            cause += f": {first_line(exc)}"
        causes.append(cause)
    if nvml.error:
        causes.append(f"NVML: {nvml.error}")
    return "; ".join(causes) or "no GPU is installed"


class Nvml:
    """A handle on NVML, or a stand-in that knows no GPU where it cannot be loaded."""

    def __init__(self):
        self._nvml = None
        self.error: str | None = None  # why NVML could not be loaded
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as exc:  # pynvml raises its own NVMLError family, or OSError without a driver
            self.error = first_line(exc)
            log.debug("NVML unavailable: %s", exc)

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def gpus(self) -> list[Gpu]:
        if self._nvml is None:
            return []
        found = []
        for index in range(self._nvml.nvmlDeviceGetCount()):
            name = self._nvml.nvmlDeviceGetName(self._nvml.nvmlDeviceGetHandleByIndex(index))
            found.append(Gpu(index, name.decode() if isinstance(name, bytes) else name))
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            return found
        allowed = {int(part) for part in visible.split(",") if part.strip().isdigit()}
        return [gpu for gpu in found if gpu.index in allowed]

    def sample(self, index: int) -> dict[str, float] | None:
        """Utilisation (0 to 1) and memory in bytes of one GPU, or None when it can't be read."""
        if self._nvml is None:
            return None
        try:
            handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
            rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception as exc:
            log.debug("NVML could not read GPU %d: %s", index, exc)
            return None
        return {"utilization": rates.gpu / 100.0, "memory_used": float(memory.used), "memory_total": float(memory.total)}
