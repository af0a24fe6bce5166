"""`trainboard worker`: slots from --gpus, signal handling, then the supervisor's loop."""

import logging
import os
import signal
from pathlib import Path

from dotenv import dotenv_values
from pydantic import ValidationError

from app.db import get_engine, migrate
from app.settings import get_settings
from worker.gpus import Nvml, visible_gpus
from worker.supervisor import Slot, Supervisor

log = logging.getLogger("trainboard.worker")


def make_slots(gpus: str, nvml: Nvml) -> list[Slot]:
    """all: a slot per visible GPU (one CPU slot without any); none: one CPU slot; 0,1: those GPUs."""
    if gpus == "none":
        return [Slot(0, "cpu")]
    available = {gpu.index: gpu.name for gpu in visible_gpus(nvml)}
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
    engine = get_engine(settings.database_url)
    migrate(engine)
    nvml = Nvml()
    supervisor = Supervisor(settings, engine, make_slots(gpus, nvml), nvml)

    def on_signal(signum, _frame):
        if supervisor.stopping.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s: stopping; running jobs go back to the queue", signal.Signals(signum).name)
        supervisor.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    supervisor.run()
