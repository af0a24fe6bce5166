"""The data model: job parameters as the API takes them, the tables, and what the API shows."""

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel, BeforeValidator, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler, SerializerFunctionWrapHandler,
    StringConstraints, ValidationInfo, field_validator, model_serializer, model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema
from sqlalchemy import JSON, BigInteger, Column, DateTime, ForeignKey, Index, Integer, LargeBinary, Text, text
from sqlmodel import SQLModel
from sqlmodel import Field as ColumnField

from app.inputs import REFUSE_CONTROL
from app.presets import PRESETS, TUTORIAL

# Where a job is in its lifecycle (the `status` column, the API, the pages and the CLI spell it so).
class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"  # by request, at a checkpoint: not finished, not claimable until resumed
    PRUNED = "pruned"  # a sweep's trial that its early termination stopped: finished, its metrics so far kept


FINISHED_STATUSES: tuple[JobStatus, ...] = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PRUNED)
ACTIVE_STATUSES: tuple[JobStatus, ...] = (JobStatus.QUEUED, JobStatus.RUNNING)
STATUSES: tuple[JobStatus, ...] = (*ACTIVE_STATUSES, JobStatus.PAUSED, *FINISHED_STATUSES)


def _shown(character: str) -> str:
    if character == " ":
        return "a space"
    return f"`{character if character.isprintable() else character.encode('unicode_escape').decode()}`"


@dataclass(frozen=True)
class Characters:
    """The characters a string may hold, as the body of a regex character class. The JSON schema
    states them as a pattern; a string with others is refused naming them and the rule in words
    ("may not contain `/` (...)"), where a pattern alone would only show its regex."""

    allowed: str
    rule: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {**handler(schema), "pattern": f"^[{self.allowed}]*$"}

    def _check(self, value: str) -> str:
        allowed = re.compile(f"[{self.allowed}]")
        found = list(dict.fromkeys(character for character in value if not allowed.fullmatch(character)))
        if found:
            raise PydanticCustomError(
                "string_characters", "may not contain {characters} ({rule})",
                {"characters": ", ".join(map(_shown, found)), "rule": self.rule},
            )
        return value


# Beyond C0: DEL and C1, and the bidi embeddings, overrides and isolates, as app/inputs.py's
# REFUSE_CONTROL refuses them, so the schema's pattern says what is accepted. (It also refuses
# unpaired surrogates, which a pattern cannot name portably.)
OTHER_CONTROLS = r"\x7f-\x9f\u202a-\u202e\u2066-\u2069"
NO_CONTROL = Characters(r"^\x00-\x1f" + OTHER_CONTROLS, "control characters such as newlines and tabs are not allowed")

# W&B's rules: project names may not contain / \ # ? % :, entities are user or team slugs.
WandbProject = Annotated[
    str, StringConstraints(min_length=1, max_length=128), REFUSE_CONTROL,
    Characters(r"^/\\#?%:\s\x00-\x1f" + OTHER_CONTROLS, "W&B project names cannot hold / \\ # ? % : or whitespace"),
]
WandbEntity = Annotated[
    str, StringConstraints(min_length=1, max_length=64), REFUSE_CONTROL,
    Characters(r"A-Za-z0-9_.-", "a W&B user or team is letters, digits, _ . and -"),
]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64), REFUSE_CONTROL, NO_CONTROL]
Tags = Annotated[list[Tag], Field(max_length=16)]
JobName = Annotated[str, StringConstraints(min_length=1, max_length=128), REFUSE_CONTROL, NO_CONTROL]
MAX_NOTES = 10_000
# Free text: lines and tabs are kept (a browser's CRLF becomes LF), other control characters refused.
Notes = Annotated[
    str,
    StringConstraints(max_length=MAX_NOTES),
    BeforeValidator(lambda value: value.replace("\r\n", "\n") if isinstance(value, str) else value),
    Characters(r"^\x00-\x08\x0b-\x1f" + OTHER_CONTROLS, "control characters other than newlines and tabs are not allowed"),
]
# A user's name: what jobs record as their owner, and what `trainboard user add` takes.
UserName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
# TRAINBOARD_TOKEN acts as this user, an admin; jobs from before users existed are theirs too.
ADMIN_NAME = "admin"
# The recipe a job trains when it names none: the tutorial's (app/recipes.py).
TUTORIAL_RECIPE = "cifar10-resnet18"


# Ids and the columns that point at them are 64-bit, as the API's ids are. SQLite's INTEGER is
# already 64-bit, and only an INTEGER primary key numbers new rows there.
RowId = BigInteger().with_variant(Integer, "sqlite")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# The sections a person meets the job's fields in (the form, the command line's help), in order,
# with their headings. Each JobCreate field names its section in its schema ("x-group"), beside
# its label ("title").
FIELD_GROUPS: dict[str, str] = {
    "tutorial": "The tutorial's settings",
    "recipe": "Recipe",
    "wandb": "Weights & Biases",
    "advanced": "Advanced",
}
IN_TUTORIAL = {"x-group": "tutorial"}
IN_RECIPE = {"x-group": "recipe"}
IN_WANDB = {"x-group": "wandb"}
IN_ADVANCED = {"x-group": "advanced"}

# Training images in each data set (worker/data.py loads or generates them): `epochs` passes over
# these, or over the first `train_subset` of them.
TRAIN_IMAGES: dict[str, int] = {"cifar10": 50_000, "synthetic": 10_000}


# The hyperparameters of a job: every field optional. Defaults are the tutorial's config; a preset
# replaces some of them, and fields given explicitly win over the preset.
class JobCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {"lr": 0.05, "epochs": 3},
                {"name": "smoke", "dataset": "synthetic", "pretrained": False, "epochs": 2, "train_subset": 2000},
                {"preset": "fast94", "epochs": 20},
            ]
        },
    )

    name: JobName | None = Field(
        default=None, title="Name", json_schema_extra=IN_TUTORIAL, description="Job and W&B run name (default: job-<id>)"
    )
    preset: Literal["tutorial", "fast94"] = Field(
        default="tutorial",
        title="Preset",
        description=(
            "tutorial: the tutorial's settings (the defaults shown here). fast94: resnet18_cifar, batch 500, "
            "26 epochs, Nesterov SGD lr 0.2 on a one-cycle schedule, weight decay 5e-4, label smoothing 0.1, "
            "flip/crop/cutout, flip TTA, aimed at 94% on CIFAR-10. Fields given explicitly override the preset"
        ),
    )
    batch_size: int = Field(
        default=TUTORIAL["batch_size"], ge=1, le=4096, title="Batch size", json_schema_extra=IN_TUTORIAL,
        description="Training batch size",
    )
    test_batch_size: int = Field(
        default=TUTORIAL["test_batch_size"], ge=1, le=10000, title="Test batch size", json_schema_extra=IN_TUTORIAL,
        description="Evaluation batch size",
    )
    epochs: int = Field(
        default=TUTORIAL["epochs"], ge=1, le=1000, title="Epochs", json_schema_extra=IN_TUTORIAL,
        description="Passes over the training set",
    )
    optimizer: Literal["sgd", "adamw"] = Field(
        default=TUTORIAL["optimizer"], title="Optimizer", json_schema_extra=IN_RECIPE,
        description="sgd, as in the tutorial, or adamw (momentum and nesterov apply to sgd only)",
    )
    lr: float = Field(
        default=TUTORIAL["lr"], gt=0, le=10, title="Learning rate", json_schema_extra=IN_TUTORIAL,
        description="Learning rate (the peak, under a schedule)",
    )
    momentum: float = Field(
        default=TUTORIAL["momentum"], ge=0, lt=1, title="Momentum", json_schema_extra=IN_TUTORIAL,
        description="SGD momentum",
    )
    nesterov: bool = Field(
        default=TUTORIAL["nesterov"], title="Nesterov momentum", json_schema_extra=IN_RECIPE,
        description="Nesterov momentum (sgd only; needs a momentum above 0)",
    )
    weight_decay: float = Field(
        default=TUTORIAL["weight_decay"], ge=0, le=1, title="Weight decay", json_schema_extra=IN_RECIPE,
        description="L2 penalty for sgd, decoupled weight decay for adamw",
    )
    lr_schedule: Literal["constant", "onecycle", "cosine"] = Field(
        default=TUTORIAL["lr_schedule"], title="Learning-rate schedule", json_schema_extra=IN_RECIPE,
        description=(
            "After the warm-up: constant; onecycle: linear decay to zero (with the warm-up, a triangle); "
            "cosine: cosine decay to zero. Updated every batch"
        ),
    )
    warmup_fraction: float = Field(
        default=TUTORIAL["warmup_fraction"], ge=0, le=1, title="Warm-up fraction", json_schema_extra=IN_RECIPE,
        description="Fraction of the training steps spent warming up linearly from zero to lr",
    )
    label_smoothing: float = Field(
        default=TUTORIAL["label_smoothing"], ge=0, le=0.5, title="Label smoothing", json_schema_extra=IN_RECIPE,
        description="Label smoothing of the training loss (Test Loss never smooths)",
    )
    augment: Literal["none", "flip_crop", "flip_crop_cutout"] = Field(
        default=TUTORIAL["augment"], title="Augmentation", json_schema_extra=IN_RECIPE,
        description=(
            "Training augmentation, drawn batch-wise on the device: random horizontal flip, translation by up to 4 pixels "
            "(zero padded), and an 8x8 cutout"
        ),
    )
    use_cuda: bool = Field(
        default=TUTORIAL["use_cuda"], title="Train on the GPU", json_schema_extra=IN_TUTORIAL,
        description="Train on the slot's GPU when there is one",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default=TUTORIAL["precision"], title="Precision", json_schema_extra=IN_RECIPE,
        description="Autocast precision: auto is bf16 on a GPU that supports it and fp32 otherwise; fp16 uses a loss scaler",
    )
    channels_last: bool = Field(
        default=TUTORIAL["channels_last"], title="Channels-last layout", json_schema_extra=IN_ADVANCED,
        description="Channels-last memory layout: same results, faster convolutions on GPUs at bf16/fp16 (slower on CPUs)",
    )
    compile: Literal["off", "default", "reduce-overhead"] = Field(
        default=TUTORIAL["compile"], title="torch.compile", json_schema_extra=IN_ADVANCED,
        description=(
            "torch.compile the model: default fuses kernels; reduce-overhead also replays CUDA graphs, for small batches "
            "that are bound by kernel launches. Compiling adds a minute or so at the start"
        ),
    )
    deterministic: bool = Field(
        default=TUTORIAL["deterministic"], title="Deterministic cuDNN", json_schema_extra=IN_ADVANCED,
        description="cuDNN deterministic algorithms, as the tutorial sets; off lets cuDNN benchmark and pick the fastest",
    )
    seed: int = Field(
        default=TUTORIAL["seed"], ge=0, le=2**32 - 1, title="Random seed", json_schema_extra=IN_TUTORIAL,
        description="Seed for python, numpy and torch",
    )
    log_interval: int = Field(
        default=TUTORIAL["log_interval"], ge=1, le=100000, title="Log interval", json_schema_extra=IN_TUTORIAL,
        description="Log train loss every N batches",
    )
    model: Literal["resnet18", "resnet18_cifar"] = Field(
        default=TUTORIAL["model"], title="Model", json_schema_extra=IN_TUTORIAL,
        description="resnet18: torchvision's, as in the tutorial; resnet18_cifar: 3x3 stem, no max-pool",
    )
    pretrained: bool = Field(
        default=TUTORIAL["pretrained"], title="Pretrained weights", json_schema_extra=IN_TUTORIAL,
        description="Start from torchvision's ImageNet weights (resnet18 only)",
    )
    dataset: Literal["cifar10", "synthetic"] = Field(
        default=TUTORIAL["dataset"], title="Data set", json_schema_extra=IN_TUTORIAL,
        description="cifar10, or synthetic: generated and learnable, no download",
    )
    train_subset: int | None = Field(
        default=TUTORIAL["train_subset"], ge=1, le=TRAIN_IMAGES["cifar10"], title="Training images",
        json_schema_extra=IN_TUTORIAL, description="Train on the first N samples only",
    )
    test_subset: int | None = Field(
        default=TUTORIAL["test_subset"], ge=1, le=10000, title="Test images", json_schema_extra=IN_TUTORIAL,
        description="Evaluate on the first N samples only",
    )
    tta: Literal["none", "flip"] = Field(
        default=TUTORIAL["tta"], title="Test-time augmentation", json_schema_extra=IN_RECIPE,
        description="Test-time augmentation: flip averages the logits of each test image and its mirror",
    )
    wandb_project: WandbProject = Field(
        default=TUTORIAL["wandb_project"], title="W&B project", json_schema_extra=IN_WANDB, description="W&B project"
    )
    wandb_entity: WandbEntity | None = Field(
        default=TUTORIAL["wandb_entity"], title="W&B entity", json_schema_extra=IN_WANDB,
        description="W&B user or team (default: the key's)",
    )
    wandb_mode: Literal["auto", "online", "offline", "disabled"] | None = Field(
        default=TUTORIAL["wandb_mode"], title="W&B mode", json_schema_extra=IN_WANDB,
        description="auto (online when the worker has a W&B key), online, offline or disabled (default: TRAINBOARD_WANDB_MODE)",
    )
    wandb_watch: Literal["all", "gradients", "parameters", "off"] = Field(
        default=TUTORIAL["wandb_watch"], title="wandb.watch histograms", json_schema_extra=IN_ADVANCED,
        description="What wandb.watch logs as histograms: all (as the tutorial), gradients, parameters, or off",
    )
    wandb_watch_freq: int = Field(
        default=TUTORIAL["wandb_watch_freq"], ge=1, le=1_000_000, title="Histogram interval",
        json_schema_extra=IN_ADVANCED,
        description="Batches between wandb.watch histograms (each costs about a few training steps)",
    )
    tags: Tags = Field(default_factory=list, title="Tags", json_schema_extra=IN_TUTORIAL, description="W&B tags, up to 16")
    checkpoint_every: int = Field(
        default=TUTORIAL["checkpoint_every"], ge=0, le=1000, title="Checkpoint every",
        description="Write a resumable checkpoint to the artifact store every N epochs (0: never); "
        "a requeued or paused job resumes from the last one",
    )

    @model_validator(mode="before")
    @classmethod
    def apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("preset", "tutorial"), str):
            return {**PRESETS.get(data.get("preset", "tutorial"), {}), **data}
        return data

    @field_validator("nesterov")
    @classmethod
    def nesterov_needs_momentum(cls, nesterov: bool, info: ValidationInfo) -> bool:
        if nesterov and info.data.get("optimizer") == "sgd" and info.data.get("momentum") == 0:
            raise ValueError("Nesterov momentum needs a momentum above 0")
        return nesterov


# What PATCH /jobs/{id} changes: fields left out keep their values. A new name or tags change
# trainboard's record (and the W&B run of a job that has not started yet), not a W&B run that exists.
class JobUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Absent means unchanged, so None is only their default: a null is refused.
    name: JobName = Field(default=None, description="Job and W&B run name")
    tags: Tags = Field(default=None, description="W&B tags, up to 16; [] removes them all")
    notes: Notes | None = Field(
        default=None, description=f"Free text, up to {MAX_NOTES:,} characters, lines and tabs kept; null or \"\" clears it"
    )

    @field_validator("name", "tags", mode="before")
    @classmethod
    def not_null(cls, value: Any) -> Any:
        if value is None:
            raise PydanticCustomError("not_null", "may not be null; leave the field out to keep its value")
        return value


# A job as stored: parameters as JSON, queue state in columns the claim and the reaper use.
class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        Index("ix_jobs_owner_id", "owner", "id"),
        Index(
            "ux_jobs_sweep_trial", "sweep_id", "trial_number", unique=True,
            sqlite_where=text("sweep_id IS NOT NULL AND retry_of IS NULL"),
            postgresql_where=text("sweep_id IS NOT NULL AND retry_of IS NULL"),
        ),
    )

    id: int | None = ColumnField(default=None, sa_column=Column(RowId, primary_key=True))
    name: str = ColumnField(max_length=128)
    owner: str = ColumnField(default=ADMIN_NAME, max_length=64, sa_column_kwargs={"server_default": ADMIN_NAME})
    status: str = ColumnField(default=JobStatus.QUEUED, max_length=16)
    # The recipe it trains (app/recipes.py), and that recipe's version its parameters were validated against.
    recipe: str = ColumnField(default=TUTORIAL_RECIPE, max_length=64, sa_column_kwargs={"server_default": TUTORIAL_RECIPE})
    recipe_version: str | None = ColumnField(default=None, max_length=32)
    params: dict[str, Any] = ColumnField(default_factory=dict, sa_column=Column(JSON, nullable=False))
    progress: dict[str, Any] = ColumnField(default_factory=dict, sa_column=Column(JSON, nullable=False))
    metrics: dict[str, Any] = ColumnField(default_factory=dict, sa_column=Column(JSON, nullable=False))
    artifacts: list[dict[str, Any]] = ColumnField(default_factory=list, sa_column=Column(JSON, nullable=False))
    wandb_mode: str | None = ColumnField(default=None, max_length=16)
    wandb_url: str | None = ColumnField(default=None, max_length=512)
    wandb_run_id: str | None = ColumnField(default=None, max_length=128)
    wandb_dir: str | None = ColumnField(default=None, max_length=1024)
    note: str | None = ColumnField(default=None, max_length=1024)
    notes: str | None = ColumnField(default=None, sa_column=Column(Text))
    error: str | None = ColumnField(default=None, max_length=2048)
    attempts: int = ColumnField(default=0)
    max_attempts: int = ColumnField(default=3)
    worker_id: str | None = ColumnField(default=None, max_length=128)
    cancel_requested: bool = ColumnField(default=False)
    retry_of: int | None = ColumnField(default=None, sa_column=Column(RowId, ForeignKey("jobs.id"), nullable=True))
    pause_requested: bool = ColumnField(default=False)
    # The last checkpoint in the store: {"epoch", "batch", "step", "at", "key", "size", "attempt"}.
    checkpoint: dict[str, Any] | None = ColumnField(default=None, sa_column=Column(JSON, nullable=True))
    resumed_from_epoch: int | None = ColumnField(default=None)
    resumed_from_batch: int | None = ColumnField(default=None)
    host: str | None = ColumnField(default=None, max_length=255)
    # Every attempt's W&B run folder, in order: [{"attempt", "host", "dir", "mode"}].
    wandb_attempts: list[dict[str, Any]] = ColumnField(default_factory=list, sa_column=Column(JSON, nullable=False))
    # Where each attempt trained, in order: [{"attempt", "worker", "host", "device"}].
    runs: list[dict[str, Any]] = ColumnField(
        default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]")
    )
    # A sweep's trial: the sweep, the trial's number in it (a retry keeps it), and what Optuna's
    # storage would hold of it ({"params": as sampled, "system_attrs": ...}; app/sweeps.py).
    sweep_id: int | None = ColumnField(default=None, sa_column=Column(RowId, ForeignKey("sweeps.id"), nullable=True))
    trial_number: int | None = ColumnField(default=None)
    trial: dict[str, Any] | None = ColumnField(default=None, sa_column=Column(JSON, nullable=True))
    # Why early termination stopped it: {"rule", "epoch", "rung", "value", "message"}.
    pruned: dict[str, Any] | None = ColumnField(default=None, sa_column=Column(JSON, nullable=True))
    lease_expires_at: datetime | None = ColumnField(default=None, sa_column=Column(DateTime(timezone=True)))
    created_at: datetime = ColumnField(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False, index=True))
    started_at: datetime | None = ColumnField(default=None, sa_column=Column(DateTime(timezone=True)))
    finished_at: datetime | None = ColumnField(default=None, sa_column=Column(DateTime(timezone=True)))


# Where a sweep is: trials still to run or running, all run, cancelled by request, or stopped
# after too many failed trials in a row.
class SweepStatus(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"


# A search over job parameters (app/sweeps.py): its trials are jobs with its id.
class Sweep(SQLModel, table=True):
    __tablename__ = "sweeps"

    id: int | None = ColumnField(default=None, sa_column=Column(RowId, primary_key=True))
    name: str = ColumnField(max_length=128)
    owner: str = ColumnField(default=ADMIN_NAME, max_length=64)
    status: str = ColumnField(default=SweepStatus.RUNNING, max_length=16, index=True)
    recipe: str = ColumnField(default=TUTORIAL_RECIPE, max_length=64, sa_column_kwargs={"server_default": TUTORIAL_RECIPE})
    method: str = ColumnField(max_length=16)
    metric: str = ColumnField(max_length=32)
    goal: str = ColumnField(max_length=16)
    run_cap: int
    parallel: int
    seed: int = ColumnField(sa_column=Column(BigInteger, nullable=False))
    # The config as given (JSON of the W&B sweep config, YAML parsed), and as validated.
    config: dict[str, Any] = ColumnField(default_factory=dict, sa_column=Column(JSON, nullable=False))
    reason: str | None = ColumnField(default=None, max_length=1024)
    created_at: datetime = ColumnField(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    finished_at: datetime | None = ColumnField(default=None, sa_column=Column(DateTime(timezone=True)))


# What /metrics still counts of a deleted job: how it ended and when (its row, metric points and
# files are gone). Its id also keeps SQLite, which numbers a new row max(id) + 1, from giving it out again.
class DeletedJob(SQLModel, table=True):
    __tablename__ = "deleted_jobs"

    id: int = ColumnField(sa_column=Column(RowId, primary_key=True, autoincrement=False))
    status: str = ColumnField(max_length=16)
    created_at: datetime = ColumnField(sa_column=Column(DateTime(timezone=True), nullable=False))
    started_at: datetime | None = ColumnField(default=None, sa_column=Column(DateTime(timezone=True)))
    finished_at: datetime | None = ColumnField(default=None, sa_column=Column(DateTime(timezone=True)))


# One row per reported point: kind "epoch" (evaluation after an epoch) or "train" (loss every log_interval).
class JobMetric(SQLModel, table=True):
    __tablename__ = "job_metrics"
    # Every read of a job's points names its attempt and kind and walks them in step order.
    __table_args__ = (Index("ix_job_metrics_job_attempt_kind_step", "job_id", "attempt", "kind", "step"),)

    id: int | None = ColumnField(default=None, sa_column=Column(RowId, primary_key=True))
    job_id: int = ColumnField(sa_column=Column(RowId, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False))
    attempt: int
    kind: str = ColumnField(max_length=16)
    step: int
    values: dict[str, Any] = ColumnField(default_factory=dict, sa_column=Column(JSON, nullable=False))


# A job's training output, in chunks as its worker relays them; per attempt only the last
# TRAINBOARD_LOG_MAX_BYTES are kept (`offset` is where a chunk starts in the attempt's output).
class JobLog(SQLModel, table=True):
    __tablename__ = "job_logs"
    __table_args__ = (Index("ix_job_logs_job_attempt_offset", "job_id", "attempt", "offset"),)

    id: int | None = ColumnField(default=None, sa_column=Column(RowId, primary_key=True))
    job_id: int = ColumnField(sa_column=Column(RowId, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False))
    attempt: int
    offset: int = ColumnField(sa_column=Column(BigInteger, nullable=False))
    text: str = ColumnField(sa_column=Column(Text, nullable=False))


# The last evaluated epoch's example predictions (small PNGs), kept with the job.
class JobExample(SQLModel, table=True):
    __tablename__ = "job_examples"

    job_id: int = ColumnField(sa_column=Column(RowId, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True))
    position: int = ColumnField(primary_key=True)
    epoch: int
    caption: str = ColumnField(max_length=256)
    png: bytes = ColumnField(sa_column=Column(LargeBinary, nullable=False))


# A worker process as registered: its slots and what each is running, refreshed by heartbeats.
class Worker(SQLModel, table=True):
    __tablename__ = "workers"

    id: str = ColumnField(primary_key=True, max_length=128)
    host: str = ColumnField(max_length=255)
    pid: int
    store: str | None = ColumnField(default=None, max_length=1024)  # its artifact store's URL, without credentials
    slots: list[dict[str, Any]] = ColumnField(default_factory=list, sa_column=Column(JSON, nullable=False))
    # The recipes it can run, {name: version}, and those that failed to load there, {source: error}.
    recipes: dict[str, str] | None = ColumnField(default=None, sa_column=Column(JSON, nullable=True))
    recipe_errors: dict[str, str] | None = ColumnField(default=None, sa_column=Column(JSON, nullable=True))
    started_at: datetime = ColumnField(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    heartbeat_at: datetime = ColumnField(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    stopped_at: datetime | None = ColumnField(default=None, sa_column=Column(DateTime(timezone=True)))


# One attempt's W&B run folder (offline runs: each attempt has its own, synced in order).
class WandbAttemptPublic(BaseModel):
    attempt: int
    host: str | None
    dir: str | None
    sync_command: str | None


# Where one attempt trained: its worker, that worker's host, and the device ("cuda:0 NVIDIA H100
# 80GB HBM3" or "cpu").
class RunPublic(BaseModel):
    attempt: int
    worker: str
    host: str
    device: str


# What W&B knows of a job's run; `mode`, `dir` and `sync_command` describe the latest attempt.
class WandbPublic(BaseModel):
    mode: str | None
    url: str | None
    run_id: str | None
    dir: str | None
    sync_command: str | None
    # Present once an attempt has started a run.
    attempts: list[WandbAttemptPublic] = []

    @model_serializer(mode="wrap")
    def _attempts_once_started(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if not data.get("attempts"):
            data.pop("attempts", None)
        return data


# The last checkpoint the job can resume from: after `epoch` epochs and `batch` batches of the next.
class CheckpointPublic(BaseModel):
    epoch: int
    batch: int
    at: datetime


# Why early termination stopped a trial: the rule, the epoch it was checked at, the rung (hyperband)
# and the metric's value then, in one line.
class PrunedPublic(BaseModel):
    rule: str
    epoch: int
    rung: int | None = None
    value: float | None = None
    message: str


# Why a queued job is not about to start.
class WaitingReason(BaseModel):
    code: Literal["no_worker", "no_recipe", "all_busy"]
    message: str


class ArtifactPublic(BaseModel):
    name: str
    url: str
    size: int


# A job as the API shows it.
class JobPublic(BaseModel):
    id: int
    name: str
    owner: str
    status: JobStatus
    recipe: str = Field(default=TUTORIAL_RECIPE, description="The recipe it trains (GET /recipes)")
    recipe_version: str | None = Field(default=None, description="The recipe's version its parameters were validated against")
    params: dict[str, Any]
    progress: dict[str, Any]
    metrics: dict[str, Any]
    wandb: WandbPublic
    artifacts: list[ArtifactPublic]
    note: str | None
    notes: str | None
    error: str | None
    attempts: int
    max_attempts: int
    retry_of: int | None
    cancel_requested: bool
    pause_requested: bool
    checkpoint: CheckpointPublic | None
    resumed_from_epoch: int | None
    resumed_from_batch: int | None
    host: str | None
    runs: list[RunPublic] = Field(description="Where each attempt trained, in order")
    device: str | None = Field(description="The latest attempt's device (\"cuda:0 NVIDIA H100 80GB HBM3\" or \"cpu\"); null before one starts")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queue_position: int | None = Field(description="1-based among queued jobs, in the order workers take them; null unless queued")
    waiting_reason: WaitingReason | None = Field(description="Why a queued job waits; null when a worker takes it next")
    sweep_id: int | None = Field(default=None, description="The sweep this job is a trial of")
    trial_number: int | None = Field(default=None, description="Its trial's number in the sweep, from 0 (a retry keeps it)")
    pruned: PrunedPublic | None = Field(default=None, description="Why the sweep's early termination stopped it")

    @classmethod
    def from_job(
        cls, job: Job, queue_position: int | None = None, waiting_reason: WaitingReason | None = None
    ) -> "JobPublic":
        sync_command = f"wandb sync {job.wandb_dir}" if job.wandb_mode == "offline" and job.wandb_dir else None
        attempts = [
            WandbAttemptPublic(
                attempt=entry["attempt"], host=entry.get("host"), dir=entry.get("dir"),
                sync_command=f"wandb sync {entry['dir']}" if entry.get("mode") == "offline" and entry.get("dir") else None,
            )
            for entry in job.wandb_attempts or []
        ]
        checkpoint = job.checkpoint
        return cls(
            id=job.id,
            name=job.name,
            owner=job.owner,
            status=job.status,
            recipe=job.recipe,
            recipe_version=job.recipe_version,
            params=job.params,
            progress=job.progress,
            metrics=job.metrics,
            wandb=WandbPublic(
                mode=job.wandb_mode, url=job.wandb_url, run_id=job.wandb_run_id, dir=job.wandb_dir,
                sync_command=sync_command, attempts=attempts,
            ),
            artifacts=[
                ArtifactPublic(name=a["name"], url=f"/jobs/{job.id}/artifacts/{a['name']}", size=a["size"])
                for a in job.artifacts
            ],
            note=job.note,
            notes=job.notes,
            error=job.error,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            retry_of=job.retry_of,
            cancel_requested=job.cancel_requested,
            pause_requested=job.pause_requested,
            checkpoint=CheckpointPublic(
                epoch=checkpoint["epoch"], batch=checkpoint["batch"], at=datetime.fromisoformat(checkpoint["at"])
            ) if checkpoint else None,
            resumed_from_epoch=job.resumed_from_epoch,
            resumed_from_batch=job.resumed_from_batch,
            host=job.host,
            runs=[RunPublic.model_validate(run) for run in job.runs or []],
            device=job.runs[-1]["device"] if job.runs else None,
            created_at=as_utc(job.created_at),
            started_at=as_utc(job.started_at),
            finished_at=as_utc(job.finished_at),
            queue_position=queue_position,
            waiting_reason=waiting_reason,
            sweep_id=job.sweep_id,
            trial_number=job.trial_number,
            pruned=PrunedPublic.model_validate(job.pruned) if job.pruned else None,
        )


# A worker slot as its worker reports it: the device, the job it runs, and its GPU's load with NVML.
class SlotPublic(BaseModel):
    index: int
    device: str
    gpu_name: str | None = None
    job_id: int | None = None
    gpu: dict[str, float] | None = None
    problem: str | None = None


# A worker as the API shows it; `alive` from its heartbeats.
class WorkerPublic(BaseModel):
    id: str
    host: str
    pid: int
    store: str | None
    slots: list[SlotPublic]
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    alive: bool
    recipes: dict[str, str] = Field(default_factory=dict, description="The recipes it can run: {name: version}")
    recipe_errors: dict[str, str] = Field(
        default_factory=dict, description="Recipes that failed to load there: {where from: the error}"
    )


class RecipeMetricPublic(BaseModel):
    name: str
    goal: Literal["maximize", "minimize"]
    wandb_name: str


# A recipe as GET /recipes lists it: what it is, its fields' JSON schema, and who can run it.
class RecipePublic(BaseModel):
    name: str
    title: str
    version: str
    description: str
    checkpoints: bool = Field(description="It checkpoints: its jobs resume where they stopped and can be paused")
    metrics: list[RecipeMetricPublic]
    json_schema: dict[str, Any] = Field(alias="schema", description="Its job fields (trainboard's and its own)")
    workers: list[str] = Field(description="Live workers that can run it; none: its jobs wait")

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


# One trial of a sweep as the sweep shows it: the swept parameters and the metric it is scored by.
class SweepTrialPublic(BaseModel):
    id: int
    trial_number: int
    status: JobStatus
    params: dict[str, Any] = Field(description="The swept parameters")
    value: float | None = Field(description="The sweep's metric: final, or a pruned trial's last epoch's")
    epochs_trained: int
    pruned_at_epoch: int | None = None
    wandb_url: str | None = None


class SweepSummary(BaseModel):
    id: int
    name: str
    owner: str
    status: str = Field(description="running, finished, cancelled or failed")
    reason: str | None = Field(description="Why a sweep stopped early (failed trials in a row), or was cancelled")
    recipe: str = Field(default=TUTORIAL_RECIPE, description="The recipe its trials train")
    method: str
    metric: str
    goal: str
    run_cap: int = Field(description="The trials it runs (a grid: its size, or run_cap if smaller)")
    parallel: int
    seed: int
    counts: dict[str, int] = Field(description="Its trials by status")
    trials: int = Field(description="Trials created so far, out of run_cap")
    best_job_id: int | None
    best_value: float | None
    best_params: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None


class SweepPublic(SweepSummary):
    config: dict[str, Any] = Field(description="The config as given")
    jobs: list[SweepTrialPublic] = Field(description="Its trials, best first by the metric; trials without a value last")


class SweepPage(BaseModel):
    items: list[SweepSummary]
    total: int
    limit: int
    offset: int


class JobPage(BaseModel):
    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class MetricPoint(BaseModel):
    attempt: int
    kind: str
    step: int
    values: dict[str, Any]


def as_utc(moment: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything stored is UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment
