"""Processes that must not outlive the one that started them (a training child its worker, the
worker of `trainboard up` its app): Linux signals them when their parent dies."""

import ctypes
import os

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, signum: int) -> None:
    """Ask Linux for `signum` when the parent dies; exit at once when it died already, before
    prctl took effect (the process was handed to init meanwhile)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(1)
