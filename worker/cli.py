"""`trainboard worker`: slots from --gpus, signal handling, then the supervisor's loop."""

import logging
import os
import signal
import sys
from pathlib import Path

from dotenv import dotenv_values
from pydantic import ValidationError

from app.db import get_engine, migrate
from app.settings import get_settings
from worker.gpus import Nvml, visible_gpus, why_no_gpus
from worker.supervisor import Slot, Supervisor

log = logging.getLogger("trainboard.worker")


class GpusUnavailable(Exception):
    """The GPUs that --gpus asks for are not there: the worker refuses to start rather than train on the CPU."""


def make_slots(gpus: str, nvml: Nvml) -> list[Slot]:
    """auto: a slot per visible GPU, or one CPU slot with a warning; all: a slot per visible GPU,
    refusing without any; none: one CPU slot; 0,1: those GPUs, refusing when one is missing."""
    if gpus == "none":
        return [Slot(0, "cpu")]
    named = None if gpus in ("auto", "all") else _gpu_indices(gpus)
    available = {gpu.index: gpu.name for gpu in visible_gpus(nvml)}
    if not available and gpus == "auto":
        log.warning("no GPU found (%s); training on one CPU slot (--gpus none says so without this warning)", why_no_gpus(nvml))
        return [Slot(0, "cpu")]
    missing = [index for index in named or [] if index not in available]
    if missing or not available:
        asked = f"GPU(s) {', '.join(map(str, missing))}" if missing else "every GPU"
        found = ", ".join(map(str, sorted(available))) or "none"
        reason = why_no_gpus(nvml) if not available else "Name some of those, or use --gpus all"
        raise GpusUnavailable(
            f"--gpus {gpus} asks for {asked}, but this worker sees GPUs: {found}. {reason}. "
            "Start it with --gpus none (or --gpus auto) to train on the CPU."
        )
    return [Slot(n, f"cuda:{index}", available[index]) for n, index in enumerate(named or available)]


def _gpu_indices(gpus: str) -> list[int]:
    try:
        indices = [int(part) for part in gpus.split(",") if part.strip()]
    except ValueError:
        indices = []
    if not indices:
        raise GpusUnavailable(f"--gpus takes auto, all, none or GPU indices like 0,1; got {gpus!r}")
    return indices


def load_wandb_environment(env_file: Path = Path(".env")) -> None:
    """W&B's own variables from .env (WANDB_API_KEY, WANDB_ENTITY, ...), as docker compose passes
    them, so a worker started by hand sees the same key; the real environment wins."""
    for name, value in dotenv_values(env_file).items():
        if name.startswith("WANDB_") and value:
            os.environ.setdefault(name, value)


def run_worker(gpus: str) -> None:
    load_wandb_environment()
    try:
        settings = get_settings()
    except ValidationError as exc:  # one line per refused setting, not a traceback
        raise SystemExit("\n".join(f"trainboard worker: {error['msg']}" for error in exc.errors())) from None
    nvml = Nvml()
    try:
        slots = make_slots(gpus, nvml)
    except GpusUnavailable as exc:
        print(f"trainboard worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    engine = get_engine(settings.database_url)
    migrate(engine)
    supervisor = Supervisor(settings, engine, slots, nvml)

    def on_signal(signum, _frame):
        if supervisor.stopping.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s: stopping; running jobs go back to the queue", signal.Signals(signum).name)
        supervisor.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    supervisor.run()
