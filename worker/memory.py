"""A training process's memory: its ceiling, and running out of memory as one line a user can act on.

A training on the CPU gets a ceiling on its private memory (RLIMIT_DATA: heap, anonymous maps,
thread stacks, the writable data of the libraries it loads), so a batch too large for the host
fails that job's allocation instead of taking the host, or the worker and its other slots, with
it. The ceiling is per process: W&B's service and torch.compile's workers, which the training
starts, have one each. On a GPU the GPU's own memory is the bound (CUDA's out-of-memory error),
and the host ceiling is not applied: CUDA maps host memory in ways an rlimit does not foresee.
"""

import os
import resource
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import ByteSize

CEILING_SETTING = "TRAINBOARD_JOB_MEMORY"
# The share of the host's memory the training processes of a worker's slots get together by default.
DEFAULT_HOST_SHARE = 0.8
# What allocators say when they are refused: glibc (MemoryError), torch's CPU allocator, CUDA's
# caching allocator (torch.cuda.OutOfMemoryError), cuDNN and cuBLAS.
OUT_OF_MEMORY_MESSAGES = (
    "can't allocate memory", "out of memory", "CUDNN_STATUS_NOT_ENOUGH_MEMORY", "CUBLAS_STATUS_ALLOC_FAILED",
)

T = TypeVar("T")


def host_memory() -> int:
    """The host's memory, or the container's limit (cgroup v2) when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def slot_ceiling(configured: int | None, slots: int) -> int:
    """Each slot's training process's ceiling: TRAINBOARD_JOB_MEMORY, or an even share of 80% of
    the host's memory."""
    if configured is not None:
        return configured
    return int(host_memory() * DEFAULT_HOST_SHARE) // max(slots, 1)


def limit(ceiling: int | None, device_type: str) -> None:
    """Apply the ceiling to this process (and what it starts) when it trains on the CPU; says so
    in the job's log."""
    if ceiling is None or device_type != "cpu":
        return
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)  # a lower limit set outside (ulimit -d) stays
    # The hard limit too: the training cannot lift its own ceiling.
    resource.setrlimit(resource.RLIMIT_DATA, (ceiling, ceiling))
    print(f"trainboard: memory ceiling {ByteSize(ceiling).human_readable()} ({CEILING_SETTING})", flush=True)


class OutOfMemory(RuntimeError):
    """The training ran out of memory; the message names what to lower."""


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and any(text in str(exc) for text in OUT_OF_MEMORY_MESSAGES)
    )


def _ceiling_note(device_type: str) -> str:
    """Where a host allocation was refused under this process's ceiling: the ceiling and its setting."""
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    if device_type != "cpu" or soft == resource.RLIM_INFINITY:
        return ""
    return f" (the memory ceiling per training process is {ByteSize(soft).human_readable()}, {CEILING_SETTING})"


def out_of_memory_reason(device: str, field: str | None = None, value: int | None = None) -> str:
    """The job's one-line failure: where it ran out, under which ceiling, and what to lower."""
    device_type = device.split(":")[0]
    at = f" at {field} {value}" if field else ""
    lower = field or "batch_size or test_batch_size"
    return f"out of memory{at} on {device}{_ceiling_note(device_type)}: lower {lower}"


def naming_batch_size(field: str, value: int, device: str, work: Callable[[], T]) -> T:
    """work(), with running out of memory turned into OutOfMemory naming the field (batch_size,
    test_batch_size) whose size took the memory."""
    try:
        return work()
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        print(f"trainboard: {type(exc).__name__}: {str(exc).strip()[:300]}", flush=True)
    # Raised outside the handler, so the failed work's frames (and the tensors they hold) are
    # gone before anything else (closing W&B, reporting) needs memory.
    raise OutOfMemory(out_of_memory_reason(device, field, value))
