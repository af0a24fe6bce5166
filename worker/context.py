"""The run context: what trainboard hands a recipe's `train(params, run)` in the training process.

It is the only thing a recipe needs. `run.device` and `run.data_dir` say where to train and where
the data sets are; `run.progress`, `run.log_epoch`, `run.log_step` and `run.examples` go to the
dashboard and to the W&B run trainboard set up (`run.wandb`: name, config, group and resume are
trainboard's); `run.checkpoint(state)` / `run.restore()` make the job resumable on any host and
pausable; `run.should_stop()` says a pause or a worker's stop wants it to checkpoint and return;
`run.save_artifact` keeps a file with the job. A cancel or a sweep's pruning ends the process
itself (SIGTERM), so a recipe has nothing to do for them.

Everything goes through the same events as the tutorial's training (worker/protocol.py), so the
worker slot treats every recipe alike: it uploads the files, fences the writes, judges sweeps.
"""

import math
import shutil
from pathlib import Path
from typing import Any

import numpy
import torch
from pydantic import BaseModel

from app import recipes
from app.settings import JobFiles
from worker.protocol import CheckpointSaved, ChildSpec, Event, Progress, Result, progress_at
from worker.reporter import CheckpointRequest, Reporter
from worker.tracking import Tracker
from worker.train import MAX_EXAMPLES, encode_examples, save_whole

CHECKPOINT_FORMAT = 1


class Run:
    """One attempt of one job of a recipe, as its ChildSpec says (`spec`). Also the Reporter its
    events go through, which notes whether the training reported its own result (the tutorial's does)."""

    def __init__(self, spec: ChildSpec, *, device: torch.device, reporter: Reporter, checkpoint_request: CheckpointRequest):
        self.spec = spec
        self.recipe = recipes.registry().get(spec.recipe)
        self.params = spec.params
        self.files = JobFiles(spec.job_dir)
        self.data_dir = spec.data_dir
        self.device = device
        self.checkpoint_request = checkpoint_request
        self._reporter = reporter
        self._tracker: Tracker | None = None
        self._saved: dict[str, Any] | None = None  # the checkpoint resumed from, once read
        self._progress: dict[str, Any] = {}
        self._epoch = 0
        self._step = 0
        self._metrics: dict[str, Any] = {}
        self._artifacts: dict[str, int] = {}
        self._step_keys: set[str] = set()
        self._stopped = False  # a checkpoint came after a stop was asked
        self.reported_result = False

    # ---- Reporter ---------------------------------------------------------------------------

    def report(self, event: Event) -> None:
        if isinstance(event, Result):
            self.reported_result = True
        if isinstance(event, CheckpointSaved) and self.checkpoint_request.asked:
            self._stopped = True  # the checkpoint a stop asked for: the training ends there
        self._reporter.report(event)

    # ---- What a recipe calls ------------------------------------------------------------------

    @property
    def wandb(self) -> Any:
        """The job's W&B run (None when the job's wandb_mode is disabled); started on first use."""
        return self._tracking().run

    @property
    def epoch(self) -> int:
        """Epochs finished: those restored from a checkpoint, then one per log_epoch."""
        return self._epoch

    def progress(self, epoch: int, epochs: int, batch: int | None = None, batches: int | None = None) -> None:
        """Where training is: `epoch` epochs of `epochs` finished, `batch` of `batches` into the next."""
        self._progress = progress_at(epoch, batch or 0, epochs, batches or 0)
        self.report(Progress(progress=self._progress))

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        """Per-step values (train_loss draws the job's loss chart), to the dashboard and to W&B
        with step `batch`."""
        self._step = max(self._step, step)
        values = {key: _number(value) for key, value in metrics.items()}
        self._step_keys.update(values)
        self.report(Progress(progress=self._progress, points=[("train", step, values)]))
        if (run := self.wandb) is not None:
            run.log({**self._named(values), "batch": step})

    def log_epoch(self, metrics: dict[str, float], epoch: int | None = None) -> None:
        """An epoch's metrics (the recipe's declared ones, and any others), to the dashboard and to
        W&B under their W&B names; the sweep judges them. `epoch` defaults to the next one."""
        self._epoch = epoch if epoch is not None else self._epoch + 1
        values = {"epoch": self._epoch, **{key: _number(value) for key, value in metrics.items()}}
        self._metrics = values
        epochs = self._progress.get("epochs") or getattr(self.params, "epochs", self._epoch)
        self._progress = progress_at(self._epoch, 0, epochs, 0)
        self.report(Progress(progress=self._progress, metrics=values, points=[("epoch", self._epoch, values)]))
        if (run := self.wandb) is not None:
            # A key also logged per step gets an epoch series of its own in W&B.
            per_epoch = {(f"{key} (epoch)" if key in self._step_keys else key): value for key, value in self._named(values).items()}
            run.log({**per_epoch, "epoch": self._epoch})

    def examples(self, images: list[Any], captions: list[str]) -> None:
        """Example predictions for the job's page and W&B's "Examples": HxW or HxWxC images (uint8,
        or floats in 0..1; torch tensors CxHxW too), at most 64."""
        pictures = [(_picture(image), str(caption)[:256]) for image, caption in zip(images, captions)][:MAX_EXAMPLES]
        self.report(encode_examples(self._epoch, pictures))
        if (run := self.wandb) is not None:
            import wandb

            run.log({"Examples": [wandb.Image(image, caption=caption) for image, caption in pictures], "epoch": self._epoch})

    def checkpoint(self, state: dict[str, Any], *, force: bool = False) -> bool:
        """Save `state` (tensors, numbers, strings, lists and dicts: restore() reads it back as data
        only) after the epoch log_epoch last reported: every
        checkpoint_every epochs, when a stop is asked, or with `force`. Written whole under a
        temporary name, uploaded by the worker to the store; the next attempt's run.restore()
        returns it. Says whether it was saved."""
        every = getattr(self.params, "checkpoint_every", 0)
        due = force or self.should_stop() or (every and self._epoch % every == 0)
        if not due:
            return False
        folder = self.files.root / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"checkpoint-{self._epoch}-{self._step}.pt"
        save_whole({
            "format": CHECKPOINT_FORMAT, "recipe": self.recipe.name, "version": self.recipe.version, "state": state,
            "epoch": self._epoch, "step": self._step, "metrics": self._metrics, "progress": self._progress,
            "wandb_run_id": self._tracking().run_id,
        }, path)
        self.report(CheckpointSaved(path=path, epoch=self._epoch, batch=0, step=self._step, progress=self._progress))
        return True

    def restore(self) -> dict[str, Any] | None:
        """The state the job's last checkpoint saved (None: a fresh start); the run continues from
        its epoch, and run.epoch says which that is."""
        saved = self._checkpoint()
        if saved is None:
            return None
        self._epoch, self._step, self._metrics = saved["epoch"], saved["step"], saved["metrics"]
        self._progress = saved["progress"]
        print(f"trainboard: resumed {self.recipe.name} from the checkpoint after epoch {self._epoch}", flush=True)
        return saved["state"]

    def should_stop(self) -> bool:
        """A pause, or the worker stopping: checkpoint (run.checkpoint) and return."""
        return self.checkpoint_request.asked

    def save_artifact(self, path: Path | str, name: str | None = None) -> Path:
        """Keep a file with the job (downloadable from its page; model.pth by convention for the model)."""
        source = Path(path)
        name = name or source.name
        if not JobFiles.plain_name(name):
            raise ValueError(f"artifact name {name!r} must be a plain file name")
        target = self.files.artifact(name)
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        self._artifacts[name] = target.stat().st_size
        if (run := self.wandb) is not None:
            run.save(str(target), base_path=str(target.parent), policy="now")
        return target

    # ---- What the training process calls --------------------------------------------------

    def finish(self, returned: Any = None) -> None:
        """The recipe's train returned: its result (the metrics it returned, or its last epoch's,
        and its artifacts), unless it stopped at a checkpoint a stop asked for, or reported its
        own. One that finished without seeing the request still has its result."""
        if self._tracker is not None:
            self._tracker.finish()
        if self._stopped or self.reported_result:
            return
        metrics = {**self._metrics, **(returned if isinstance(returned, dict) else {})}
        artifacts = [{"name": name, "size": size} for name, size in self._artifacts.items()]
        self.report(Result(metrics={key: _number(value) for key, value in metrics.items()}, artifacts=artifacts))

    def fail(self) -> None:
        if self._tracker is not None:
            self._tracker.finish(exit_code=1)

    # ---- Inside ---------------------------------------------------------------------------

    def _tracking(self) -> Tracker:
        if self._tracker is None:
            saved = self._checkpoint()
            self._tracker = Tracker.start(
                self.params, name=self.spec.name, job_dir=self.files.root, reporter=self,
                run_id=saved["wandb_run_id"] if saved else None, group=self.spec.wandb_group, sweep_id=self.spec.sweep_id,
                recipe=self.recipe,
            )
        return self._tracker

    def _checkpoint(self) -> dict[str, Any] | None:
        if self._saved is None and self.spec.resume_from is not None:
            # Tensors, numbers, strings and containers only: a checkpoint never runs code.
            saved = torch.load(self.spec.resume_from, map_location="cpu", weights_only=True)
            if saved.get("format") != CHECKPOINT_FORMAT or saved.get("recipe") != self.recipe.name:
                raise RuntimeError(
                    f"the checkpoint to resume from is not one of recipe {self.recipe.name}'s "
                    f"(it says recipe {saved.get('recipe')!r}, format {saved.get('format')!r})"
                )
            self._saved = saved
        return self._saved

    def _named(self, values: dict[str, Any]) -> dict[str, Any]:
        """Values keyed by their W&B names where the recipe declares one."""
        named = {}
        for key, value in values.items():
            metric = self.recipe.metric(key)
            named[metric.logged_as if metric else key] = value
        return named


def _number(value: Any) -> float | int | None:
    """A metric as JSON takes it: a Python number (a tensor's too), NaN and infinities as None."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    value = float(value)
    return value if math.isfinite(value) else None


def _picture(image: Any) -> numpy.ndarray:
    """An image as uint8 HxW or HxWxC for PNG."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dim() == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    picture = numpy.asarray(image)
    if picture.dtype != numpy.uint8:
        picture = (numpy.clip(picture, 0.0, 1.0) * 255).round().astype(numpy.uint8)
    if picture.ndim == 3 and picture.shape[2] == 1:
        picture = picture[:, :, 0]
    return picture
