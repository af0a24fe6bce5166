"""The data model: job parameters as the API takes them, the tables, and what the API shows."""

from datetime import datetime, timezone
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator, model_validator
from sqlalchemy import JSON, BigInteger, Column, DateTime, ForeignKey, Index, Integer
from sqlmodel import SQLModel
from sqlmodel import Field as ColumnField

from app.inputs import PlainText
from app.presets import PRESETS, TUTORIAL

# Where a job is in its lifecycle (the `status` column, the API, the pages and the CLI spell it so).
class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_STATUSES: tuple[JobStatus, ...] = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
ACTIVE_STATUSES: tuple[JobStatus, ...] = (JobStatus.QUEUED, JobStatus.RUNNING)
STATUSES: tuple[JobStatus, ...] = (*ACTIVE_STATUSES, *FINISHED_STATUSES)

# W&B's rules: project names may not contain / \ # ? % :, entities are user or team slugs.
WandbProject = Annotated[PlainText, StringConstraints(min_length=1, max_length=128, pattern=r"^[^/\\#?%:\s]+$")]
WandbEntity = Annotated[PlainText, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Tag = Annotated[PlainText, StringConstraints(min_length=1, max_length=64)]
JobName = Annotated[PlainText, StringConstraints(min_length=1, max_length=128)]


# Ids and the columns that point at them are 64-bit, as the API's ids are. SQLite's INTEGER is
# already 64-bit, and only an INTEGER primary key numbers new rows there.
RowId = BigInteger().with_variant(Integer, "sqlite")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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

    name: JobName | None = Field(default=None, description="Job and W&B run name (default: job-<id>)")
    preset: Literal["tutorial", "fast94"] = Field(
        default="tutorial",
        description=(
            "tutorial: the tutorial's settings (the defaults shown here). fast94: resnet18_cifar, batch 500, "
            "26 epochs, Nesterov SGD lr 0.2 on a one-cycle schedule, weight decay 5e-4, label smoothing 0.1, "
            "flip/crop/cutout, flip TTA, aimed at 94% on CIFAR-10. Fields given explicitly override the preset"
        ),
    )
    batch_size: int = Field(default=TUTORIAL["batch_size"], ge=1, le=4096, description="Training batch size")
    test_batch_size: int = Field(default=TUTORIAL["test_batch_size"], ge=1, le=10000, description="Evaluation batch size")
    epochs: int = Field(default=TUTORIAL["epochs"], ge=1, le=1000, description="Passes over the training set")
    optimizer: Literal["sgd", "adamw"] = Field(
        default=TUTORIAL["optimizer"], description="sgd, as in the tutorial, or adamw (momentum and nesterov apply to sgd only)"
    )
    lr: float = Field(default=TUTORIAL["lr"], gt=0, le=10, description="Learning rate (the peak, under a schedule)")
    momentum: float = Field(default=TUTORIAL["momentum"], ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(default=TUTORIAL["nesterov"], description="Nesterov momentum (sgd only; needs a momentum above 0)")
    weight_decay: float = Field(
        default=TUTORIAL["weight_decay"], ge=0, le=1, description="L2 penalty for sgd, decoupled weight decay for adamw"
    )
    lr_schedule: Literal["constant", "onecycle", "cosine"] = Field(
        default=TUTORIAL["lr_schedule"],
        description=(
            "After the warm-up: constant; onecycle: linear decay to zero (with the warm-up, a triangle); "
            "cosine: cosine decay to zero. Updated every batch"
        ),
    )
    warmup_fraction: float = Field(
        default=TUTORIAL["warmup_fraction"], ge=0, le=1,
        description="Fraction of the training steps spent warming up linearly from zero to lr",
    )
    label_smoothing: float = Field(
        default=TUTORIAL["label_smoothing"], ge=0, le=0.5,
        description="Label smoothing of the training loss (Test Loss never smooths)",
    )
    augment: Literal["none", "flip_crop", "flip_crop_cutout"] = Field(
        default=TUTORIAL["augment"],
        description=(
            "Training augmentation, drawn batch-wise on the device: random horizontal flip, translation by up to 4 pixels "
            "(zero padded), and an 8x8 cutout"
        ),
    )
    use_cuda: bool = Field(default=TUTORIAL["use_cuda"], description="Train on the slot's GPU when there is one")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default=TUTORIAL["precision"],
        description="Autocast precision: auto is bf16 on a GPU that supports it and fp32 otherwise; fp16 uses a loss scaler",
    )
    channels_last: bool = Field(
        default=TUTORIAL["channels_last"],
        description="Channels-last memory layout: same results, faster convolutions on GPUs at bf16/fp16 (slower on CPUs)",
    )
    compile: Literal["off", "default", "reduce-overhead"] = Field(
        default=TUTORIAL["compile"],
        description=(
            "torch.compile the model: default fuses kernels; reduce-overhead also replays CUDA graphs, for small batches "
            "that are bound by kernel launches. Compiling adds a minute or so at the start"
        ),
    )
    deterministic: bool = Field(
        default=TUTORIAL["deterministic"],
        description="cuDNN deterministic algorithms, as the tutorial sets; off lets cuDNN benchmark and pick the fastest",
    )
    seed: int = Field(default=TUTORIAL["seed"], ge=0, le=2**32 - 1, description="Seed for python, numpy and torch")
    log_interval: int = Field(default=TUTORIAL["log_interval"], ge=1, le=100000, description="Log train loss every N batches")
    model: Literal["resnet18", "resnet18_cifar"] = Field(
        default=TUTORIAL["model"],
        description="resnet18: torchvision's, as in the tutorial; resnet18_cifar: 3x3 stem, no max-pool",
    )
    pretrained: bool = Field(
        default=TUTORIAL["pretrained"], description="Start from torchvision's ImageNet weights (resnet18 only)"
    )
    dataset: Literal["cifar10", "synthetic"] = Field(
        default=TUTORIAL["dataset"], description="cifar10, or synthetic: generated and learnable, no download"
    )
    train_subset: int | None = Field(
        default=TUTORIAL["train_subset"], ge=1, le=50000, description="Train on the first N samples only"
    )
    test_subset: int | None = Field(
        default=TUTORIAL["test_subset"], ge=1, le=10000, description="Evaluate on the first N samples only"
    )
    tta: Literal["none", "flip"] = Field(
        default=TUTORIAL["tta"], description="Test-time augmentation: flip averages the logits of each test image and its mirror"
    )
    wandb_project: WandbProject = Field(default=TUTORIAL["wandb_project"], description="W&B project")
    wandb_entity: WandbEntity | None = Field(
        default=TUTORIAL["wandb_entity"], description="W&B user or team (default: the key's)"
    )
    wandb_mode: Literal["auto", "online", "offline", "disabled"] | None = Field(
        default=TUTORIAL["wandb_mode"],
        description="auto (online when the worker has a W&B key), online, offline or disabled (default: TRAINBOARD_WANDB_MODE)",
    )
    wandb_watch: Literal["all", "gradients", "parameters", "off"] = Field(
        default=TUTORIAL["wandb_watch"],
        description="What wandb.watch logs as histograms: all (as the tutorial), gradients, parameters, or off",
    )
    wandb_watch_freq: int = Field(
        default=TUTORIAL["wandb_watch_freq"],
        ge=1,
        le=1_000_000,
        description="Batches between wandb.watch histograms (each costs about a few training steps)",
    )
    tags: list[Tag] = Field(default_factory=list, max_length=16, description="W&B tags, up to 16")

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


# A job as stored: parameters as JSON, queue state in columns the claim and the reaper use.
class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
    )

    id: int | None = ColumnField(default=None, sa_column=Column(RowId, primary_key=True))
    name: str = ColumnField(max_length=128)
    status: str = ColumnField(default=JobStatus.QUEUED, max_length=16)
    params: dict[str, Any] = ColumnField(default_factory=dict, sa_column=Column(JSON, nullable=False))
    progress: dict[str, Any] = ColumnField(default_factory=dict, sa_column=Column(JSON, nullable=False))
    metrics: dict[str, Any] = ColumnField(default_factory=dict, sa_column=Column(JSON, nullable=False))
    artifacts: list[dict[str, Any]] = ColumnField(default_factory=list, sa_column=Column(JSON, nullable=False))
    wandb_mode: str | None = ColumnField(default=None, max_length=16)
    wandb_url: str | None = ColumnField(default=None, max_length=512)
    wandb_run_id: str | None = ColumnField(default=None, max_length=128)
    wandb_dir: str | None = ColumnField(default=None, max_length=1024)
    note: str | None = ColumnField(default=None, max_length=1024)
    error: str | None = ColumnField(default=None, max_length=2048)
    attempts: int = ColumnField(default=0)
    max_attempts: int = ColumnField(default=3)
    worker_id: str | None = ColumnField(default=None, max_length=128)
    cancel_requested: bool = ColumnField(default=False)
    retry_of: int | None = ColumnField(default=None, sa_column=Column(RowId, ForeignKey("jobs.id"), nullable=True))
    lease_expires_at: datetime | None = ColumnField(default=None, sa_column=Column(DateTime(timezone=True)))
    created_at: datetime = ColumnField(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False, index=True))
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


# A worker process as registered: its slots and what each is running, refreshed by heartbeats.
class Worker(SQLModel, table=True):
    __tablename__ = "workers"

    id: str = ColumnField(primary_key=True, max_length=128)
    host: str = ColumnField(max_length=255)
    pid: int
    slots: list[dict[str, Any]] = ColumnField(default_factory=list, sa_column=Column(JSON, nullable=False))
    started_at: datetime = ColumnField(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    heartbeat_at: datetime = ColumnField(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    stopped_at: datetime | None = ColumnField(default=None, sa_column=Column(DateTime(timezone=True)))


# What W&B knows of a job's run.
class WandbPublic(BaseModel):
    mode: str | None
    url: str | None
    run_id: str | None
    dir: str | None
    sync_command: str | None


class ArtifactPublic(BaseModel):
    name: str
    url: str
    size: int


# A job as the API shows it.
class JobPublic(BaseModel):
    id: int
    name: str
    status: JobStatus
    params: dict[str, Any]
    progress: dict[str, Any]
    metrics: dict[str, Any]
    wandb: WandbPublic
    artifacts: list[ArtifactPublic]
    note: str | None
    error: str | None
    attempts: int
    max_attempts: int
    retry_of: int | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_job(cls, job: Job) -> "JobPublic":
        sync_command = f"wandb sync {job.wandb_dir}" if job.wandb_mode == "offline" and job.wandb_dir else None
        return cls(
            id=job.id,
            name=job.name,
            status=job.status,
            params=job.params,
            progress=job.progress,
            metrics=job.metrics,
            wandb=WandbPublic(
                mode=job.wandb_mode, url=job.wandb_url, run_id=job.wandb_run_id, dir=job.wandb_dir, sync_command=sync_command
            ),
            artifacts=[
                ArtifactPublic(name=a["name"], url=f"/jobs/{job.id}/artifacts/{a['name']}", size=a["size"])
                for a in job.artifacts
            ],
            note=job.note,
            error=job.error,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            retry_of=job.retry_of,
            cancel_requested=job.cancel_requested,
            created_at=as_utc(job.created_at),
            started_at=as_utc(job.started_at),
            finished_at=as_utc(job.finished_at),
        )


# A worker slot as its worker reports it: the device, the job it runs, and its GPU's load with NVML.
class SlotPublic(BaseModel):
    index: int
    device: str
    gpu_name: str | None = None
    job_id: int | None = None
    gpu: dict[str, float] | None = None


# A worker as the API shows it; `alive` from its heartbeats.
class WorkerPublic(BaseModel):
    id: str
    host: str
    pid: int
    slots: list[SlotPublic]
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    alive: bool


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
