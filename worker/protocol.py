"""What crosses between a worker slot and its training child, typed on both sides.

A training process starts with the slot's environment, imports the training and waits; the slot
writes one `ChildSpec` as JSON on its stdin (at once, or when a job is claimed for a process
started ahead of it), and the process trains that one job and exits. The child answers on a pipe
with events, one JSON line each, told apart by their `event` field: `WandbStarted`, `Progress`,
`Examples`, `CheckpointSaved`, `Result`, `Failure`. The child never touches the database nor
the artifact store (it never holds the store's credentials): it leaves files in its scratch
folder and its slot uploads them and turns the events into fenced writes.

Signals from the slot: SIGTERM stops the training now (cancel); CHECKPOINT_SIGNAL asks it to
finish the batch it is in, save a checkpoint where it is (mid-epoch too), report it and exit 0
(pause, a graceful worker stop).
"""

import signal

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, TypeAdapter, ValidationInfo, field_validator

from app import recipes
from app.models import TUTORIAL_RECIPE


CHECKPOINT_SIGNAL = signal.SIGUSR1


# What a slot tells its child: the job, its scratch folder, where the data sets are, the
# checkpoint to resume from (a verified local copy of the job's last one; None: from scratch),
# and what the job adds to the environment the process started with (W&B's API key, for a job
# that may run online: a process started ahead of its job never has it in its environment).
class ChildSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    # The recipe it trains, and its job fields as that recipe's model (app/recipes.py).
    recipe: str = TUTORIAL_RECIPE
    params: SerializeAsAny[BaseModel]
    job_dir: Path
    data_dir: Path
    cifar_verify: bool
    attempt: int = 1
    resume_from: Path | None = None
    # A sweep's trial: its W&B run joins the sweep's group, and its config names the sweep.
    wandb_group: str | None = None
    sweep_id: int | None = None
    # Its bounds: the memory ceiling in bytes when it trains on the CPU, the W&B histogram sets it
    # may log (None: unbounded).
    memory_ceiling: int | None = None
    max_histograms: int | None = None
    environment: dict[str, str] = {}

    @field_validator("params", mode="before")
    @classmethod
    def typed(cls, params: Any, info: ValidationInfo) -> BaseModel:
        """Parameters from JSON become the recipe's job model again."""
        if isinstance(params, BaseModel):
            return params
        return recipes.registry().get(info.data.get("recipe", TUTORIAL_RECIPE)).validate(params)


def progress_at(epoch: int, batch: int, epochs: int, batches: int) -> dict[str, Any]:
    """The job's progress as Progress carries it: `epoch` epochs finished and `batch` of `batches`
    batches into the next; batch == batches is also an epoch's end, which `epoch` already counts."""
    return {"epoch": epoch, "epochs": epochs, "batch": batch, "batches": batches}


# A diverged run's NaN or infinite loss is written as null: JSON, and PostgreSQL's JSON type, have no NaN.
class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, ser_json_inf_nan="null")


# Where the job's W&B run is (mode "disabled": there is none).
class WandbStarted(_Event):
    event: Literal["wandb"] = "wandb"
    mode: str
    url: str | None = None
    run_id: str | None = None
    run_dir: str | None = None
    note: str | None = None


# How far training is, the latest epoch's metrics if one just ended, and metric points
# (kind, step, values) for the job's history.
class Progress(_Event):
    event: Literal["progress"] = "progress"
    progress: dict[str, Any]
    metrics: dict[str, Any] | None = None
    points: list[tuple[str, int, dict[str, Any]]] = []


# The epoch's example predictions: PNGs (base64) with their "Pred:x Truth:y" captions.
class Example(BaseModel):
    model_config = ConfigDict(frozen=True)

    caption: str
    png_base64: str


class Examples(_Event):
    event: Literal["examples"] = "examples"
    epoch: int
    examples: list[Example]


# A checkpoint is complete at `path` (in the scratch folder, written under a temporary name and
# renamed): after `epoch` finished epochs and `batch` batches of the next (0: at an epoch's end),
# `step` optimiser steps in all. `progress` is the job's progress at that point.
class CheckpointSaved(_Event):
    event: Literal["checkpoint"] = "checkpoint"
    path: Path
    epoch: int
    batch: int
    step: int
    progress: dict[str, Any]


# Training finished: the final metrics and the files it left in the job's folder.
class Result(_Event):
    event: Literal["result"] = "result"
    metrics: dict[str, Any]
    artifacts: list[dict[str, Any]]


# Training failed, with a reason a person can act on.
class Failure(_Event):
    event: Literal["error"] = "error"
    reason: str


Event = Annotated[
    WandbStarted | Progress | Examples | CheckpointSaved | Result | Failure, Field(discriminator="event")
]
_EVENT = TypeAdapter(Event)


def encode(event: Event) -> str:
    """One line of the pipe."""
    return event.model_dump_json() + "\n"


def decode(line: str | bytes) -> Event:
    """Raises pydantic.ValidationError for a line that is not an event."""
    return _EVENT.validate_json(line)
