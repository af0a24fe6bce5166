"""Weights & Biases: which mode a job runs in, init with an offline fallback, what gets logged.

wandb is imported only for a run that uses it, so a disabled run (the benchmarks on a GPU host)
needs no wandb installed.
"""

import contextlib
import importlib
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from pydantic import BaseModel

from app.models import JobCreate
from app.recipes import TUTORIAL, Recipe
from worker.protocol import WandbStarted
from worker.reporter import Reporter, first_line

DEFAULT_BASE_URL = "https://api.wandb.ai"
# What a first wandb.init imports on demand: its public API, through wandb.sdk.launch.
WANDB_LAZY_MODULES = ("wandb.sdk.launch", "wandb.apis.public")


def warm_up() -> None:
    """Do ahead what a process's first W&B run costs once, where wandb is installed (about a
    second on a CPU): its imports, and a first pass of wandb's config sanitizing over a throwaway
    config of default parameters (slow in a process that holds torch, fast once done). Nothing
    that reads W&B's settings: wandb.setup() would fix them before the job adds its API key."""
    try:
        import wandb
    except ImportError:
        return  # a disabled run needs no wandb
    for name in WANDB_LAZY_MODULES:
        with contextlib.suppress(ImportError):  # moved in another wandb version: imported at init as before
            importlib.import_module(name)
    wandb.Config().update(JobCreate().model_dump(mode="json"))


def api_key_configured() -> bool:
    """A key in WANDB_API_KEY or in ~/.netrc (where `wandb login` puts it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_mode(requested: str | None) -> str:
    if requested in (None, "auto"):
        return "online" if api_key_configured() else "offline"
    return requested


def histogram_interval(requested: int, steps: int, max_sets: int | None) -> int:
    """The batches between histogram sets: the requested interval, or the smallest one that logs
    at most `max_sets` over `steps` batches (None: no bound)."""
    if max_sets is None:
        return requested
    return max(requested, -(-steps // max_sets))


class Tracker:
    """One W&B run for one job; in `disabled` mode there is no run and every call does nothing."""

    def __init__(self, run: Any, mode: str):
        self.run = run
        self.mode = mode

    @classmethod
    def start(
        cls, params: BaseModel, *, name: str, job_dir: Path, reporter: Reporter, run_id: str | None = None,
        group: str | None = None, sweep_id: int | None = None, recipe: Recipe = TUTORIAL,
    ) -> "Tracker":
        """A new run, or with `run_id` (a resumed attempt's) the same run continued: online W&B
        appends to its history, offline starts a new folder under the same id. A sweep's trial
        joins the sweep's `group`, with the sweep's id in its config. `params` are the recipe's
        job model's; its metrics are logged per epoch, its step points per "batch"."""
        mode = resolve_mode(params.wandb_mode)
        if mode == "disabled":
            reporter.report(WandbStarted(mode=mode))
            return cls(None, mode)

        import wandb

        note = None
        init = {
            "project": params.wandb_project,
            "entity": params.wandb_entity,
            "name": name,
            "config": {
                **params.model_dump(mode="json"),
                **({"recipe": recipe.name, "recipe_version": recipe.version} if recipe is not TUTORIAL else {}),
                **({"sweep_id": sweep_id} if sweep_id is not None else {}),
            },
            "group": group,
            "tags": params.tags or None,
            "dir": str(job_dir),
        }
        if run_id is not None:
            init.update(id=run_id, resume="allow")
        try:
            run = wandb.init(mode=mode, **init)
        except Exception as exc:
            if mode != "online":
                raise
            reason = first_line(exc)
            note = f"W&B online init failed ({reason}); the run was logged offline: upload it with its wandb sync command"
            print(f"trainboard: {note}", flush=True)
            mode = "offline"
            run = wandb.init(mode=mode, **init)
        run.define_metric("batch")
        run.define_metric("Train Loss", step_metric="batch")
        run.define_metric("epoch")
        per_epoch = [metric.logged_as for metric in recipe.metrics if metric.logged_as != "Train Loss"]
        for metric in (*per_epoch, "Examples"):
            run.define_metric(metric, step_metric="epoch")
        reporter.report(WandbStarted(
            mode=mode,
            url=run.url if mode == "online" else None,
            run_id=run.id,
            run_dir=str(run.settings.sync_dir) if mode == "offline" else None,
            note=note,
        ))
        return cls(run, mode)

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def watch(self, model: torch.nn.Module, log: str, log_freq: int, steps: int, max_sets: int | None) -> None:
        """Histograms of gradients and/or parameters every `log_freq` batches, as the tutorial's
        wandb.watch(model, log="all"). Each costs a few syncs and a copy of the weights to the host,
        so log_freq is what bounds its share of the training time; and each set is a few hundred
        KB in the run, so at most `max_sets` over the run's `steps` batches: past that the
        interval is raised, and the job's log says so."""
        if self.run is None or log == "off":
            return
        interval = histogram_interval(log_freq, steps, max_sets)
        if interval != log_freq:
            print(
                f"trainboard: wandb_watch_freq {log_freq} would log {steps // log_freq:,} histogram sets; logging every "
                f"{interval:,} batches instead, at most {max_sets:,} a job (TRAINBOARD_MAX_HISTOGRAMS)",
                flush=True,
            )
        self.run.watch(model, log=log, log_freq=interval)

    def log_train_loss(self, batch: int, loss: float) -> None:
        if self.run is not None:
            self.run.log({"Train Loss": loss, "batch": batch})

    def log_epoch(self, epoch: int, accuracy: float, loss: float, examples: list[tuple[np.ndarray, str]]) -> None:
        if self.run is None:
            return
        import wandb

        self.run.log({
            "Examples": [wandb.Image(image, caption=caption) for image, caption in examples],
            "Test Accuracy": accuracy,
            "Test Loss": loss,
            "epoch": epoch,
        })

    def save(self, path: Path) -> None:
        if self.run is not None:
            self.run.save(str(path), base_path=str(path.parent), policy="now")

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
