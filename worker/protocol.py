"""What crosses between a worker slot and its training child, typed on both sides.

The slot writes one `ChildSpec` as JSON on the child's stdin. The child answers on a pipe with
events, one JSON line each, told apart by their `event` field: `WandbStarted`, `Progress`,
`Result`, `Failure`. The child never touches the database; its slot turns these events into
fenced writes.
"""

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from app.models import JobCreate


# What a slot tells its child: the job, where its folder is, and where the data sets are.
class ChildSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    params: JobCreate
    job_dir: Path
    data_dir: Path
    cifar_verify: bool


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


# Training finished: the final metrics and the files it left in the job's folder.
class Result(_Event):
    event: Literal["result"] = "result"
    metrics: dict[str, Any]
    artifacts: list[dict[str, Any]]


# Training failed, with a reason a person can act on.
class Failure(_Event):
    event: Literal["error"] = "error"
    reason: str


Event = Annotated[WandbStarted | Progress | Result | Failure, Field(discriminator="event")]
_EVENT = TypeAdapter(Event)


def encode(event: Event) -> str:
    """One line of the pipe."""
    return event.model_dump_json() + "\n"


def decode(line: str | bytes) -> Event:
    """Raises pydantic.ValidationError for a line that is not an event."""
    return _EVENT.validate_json(line)
