"""The host's GPUs through NVML: which exist, and how busy each is (for the worker's heartbeat).

GPUs are numbered as NVML and nvidia-smi number them (PCI bus order); children get
CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA_VISIBLE_DEVICES means the same GPU to them. Without NVML
(no driver, or a CPU-only host) there are no GPUs and no statistics.
"""

import logging
import os
from dataclasses import dataclass

log = logging.getLogger("trainboard.worker")


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str


def visible_gpus(nvml: "Nvml") -> list[Gpu]:
    """The GPUs this worker may use. Without NVML, CUDA's count with placeholder names."""
    # CUDA numbers GPUs fastest first, NVML by PCI bus. One numbering for both, inherited by the
    # children, so a slot's index, its GPU's name and its CUDA_VISIBLE_DEVICES name one card.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    if nvml.available:
        return nvml.gpus()
    import torch

    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    indices = [int(i) for i in visible.split(",") if i.strip().isdigit()] if visible else list(range(count))
    return [Gpu(index, f"GPU {index}") for index in indices[:count]]


class Nvml:
    """A handle on NVML, or a stand-in that knows no GPU where it cannot be loaded."""

    def __init__(self):
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as exc:  # pynvml raises its own NVMLError family, or OSError without a driver
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
