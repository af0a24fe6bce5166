"""`trainboard worker`: slots from --gpus, signal handling, then the supervisor's loop."""

import logging
import os
import shutil
import signal
import subprocess

from app.db import get_engine, migrate
from app.settings import get_settings
from worker.supervisor import Slot, Supervisor

log = logging.getLogger("trainboard.worker")


def visible_gpus() -> list[tuple[int, str]]:
    """(index, name) of the GPUs this process may use, without creating a CUDA context."""
    # CUDA numbers GPUs fastest first, nvidia-smi by PCI bus. One numbering for both, inherited by
    # the children, so a slot's index, its GPU's name and its CUDA_VISIBLE_DEVICES name one card.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    import torch

    count = torch.cuda.device_count()
    names: list[str] = []
    if count and shutil.which("nvidia-smi"):
        try:
            output = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            ).stdout
            names = [line.strip() for line in output.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            names = []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    indices = [int(i) for i in visible.split(",") if i.strip().isdigit()] if visible else list(range(count))
    return [(i, names[i] if i < len(names) else f"GPU {i}") for i in indices[:count]]


def make_slots(gpus: str) -> list[Slot]:
    """all: a slot per visible GPU (one CPU slot without any); none: one CPU slot; 0,1: those GPUs."""
    if gpus == "none":
        return [Slot(0, "cpu")]
    available = dict(visible_gpus())
    if gpus == "all":
        chosen = list(available)
    else:
        try:
            chosen = [int(part) for part in gpus.split(",") if part.strip()]
        except ValueError:
            raise SystemExit(f"--gpus takes all, none or GPU indices like 0,1; got {gpus!r}") from None
        missing = [index for index in chosen if index not in available]
        if missing:
            raise SystemExit(f"--gpus asks for GPU(s) {missing}, but this host has {sorted(available) or 'none'}")
    if not chosen:
        return [Slot(0, "cpu")]
    return [Slot(n, f"cuda:{index}", available[index]) for n, index in enumerate(chosen)]


def run_worker(gpus: str) -> None:
    settings = get_settings()
    # A lease must outlive a late heartbeat or two, or healthy jobs would be taken away.
    if settings.lease_seconds < 2 * settings.heartbeat_seconds:
        raise SystemExit(
            f"TRAINBOARD_LEASE_SECONDS ({settings.lease_seconds:g}) must be at least twice "
            f"TRAINBOARD_HEARTBEAT_SECONDS ({settings.heartbeat_seconds:g}); the defaults are 60 and 10"
        )
    engine = get_engine(settings.database_url)
    migrate(engine)
    supervisor = Supervisor(settings, engine, make_slots(gpus))

    def on_signal(signum, _frame):
        if supervisor.stopping.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s: stopping; running jobs go back to the queue", signal.Signals(signum).name)
        supervisor.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    supervisor.run()
