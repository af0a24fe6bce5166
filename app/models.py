"""The data model: job parameters as the API takes them, the tables, and what the API shows."""

from datetime import datetime, timezone
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, StringConstraints, ValidationInfo, field_validator,
    model_serializer, model_validator,
)
from sqlalchemy import JSON, BigInteger, Column, DateTime, ForeignKey, Index, Integer, LargeBinary, Text
from sqlmodel import SQLModel
from sqlmodel import Field as ColumnField

from app.presets import PRESETS, TUTORIAL



# Where a job is in its lifecycle (the `status` column, the API, the pages and the CLI spell it so).
class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"  # by request, at a checkpoint: not finished, not claimable until resumed


FINISHED_STATUSES: tuple[JobStatus, ...] = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
ACTIVE_STATUSES: tuple[JobStatus, ...] = (JobStatus.QUEUED, JobStatus.RUNNING)
STATUSES: tuple[JobStatus, ...] = (*ACTIVE_STATUSES, JobStatus.PAUSED, *FINISHED_STATUSES)

# W&B's rules: project names may not contain / \ # ? % :, entities are user or team slugs.
WandbProject = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^/\\#?%:\s]+$")]
WandbEntity = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")]
JobName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# The hyperparameters of a job: every field optional. Defaults are the tutorial's config; a preset
# replaces some of them, and fields given explicitly win over the preset.
class JobCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
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
    checkpoint_every: int = Field(
        default=1, ge=0, le=1000,
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


# A job as stored: parameters as JSON, queue state in columns the claim and the reaper use.
class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
    )

    id: int | None = ColumnField(default=None, primary_key=True)
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
    retry_of: int | None = ColumnField(default=None, sa_column=Column(Integer, ForeignKey("jobs.id"), nullable=True))
    pause_requested: bool = ColumnField(default=False)
    # The last checkpoint in the store: {"epoch", "batch", "step", "at", "key", "size", "attempt"}.
    checkpoint: dict[str, Any] | None = ColumnField(default=None, sa_column=Column(JSON, nullable=True))
    resumed_from_epoch: int | None = ColumnField(default=None)
    resumed_from_batch: int | None = ColumnField(default=None)
    host: str | None = ColumnField(default=None, max_length=255)
    # Every attempt's W&B run folder, in order: [{"attempt", "host", "dir", "mode"}].
    wandb_attempts: list[dict[str, Any]] = ColumnField(default_factory=list, sa_column=Column(JSON, nullable=False))
    lease_expires_at: datetime | None = ColumnField(default=None, sa_column=Column(DateTime(timezone=True)))
    created_at: datetime = ColumnField(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False, index=True))
    started_at: datetime | None = ColumnField(default=None, sa_column=Column(DateTime(timezone=True)))
    finished_at: datetime | None = ColumnField(default=None, sa_column=Column(DateTime(timezone=True)))


# One row per reported point: kind "epoch" (evaluation after an epoch) or "train" (loss every log_interval).
class JobMetric(SQLModel, table=True):
    __tablename__ = "job_metrics"
    __table_args__ = (Index("ix_job_metrics_job_kind_step", "job_id", "kind", "step"),)

    id: int | None = ColumnField(default=None, primary_key=True)
    job_id: int = ColumnField(sa_column=Column(Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False))
    attempt: int
    kind: str = ColumnField(max_length=16)
    step: int
    values: dict[str, Any] = ColumnField(default_factory=dict, sa_column=Column(JSON, nullable=False))


# A job's training output, in chunks as its worker relays them; per attempt only the last
# TRAINBOARD_LOG_MAX_BYTES are kept (`offset` is where a chunk starts in the attempt's output).
class JobLog(SQLModel, table=True):
    __tablename__ = "job_logs"
    __table_args__ = (Index("ix_job_logs_job_attempt_offset", "job_id", "attempt", "offset"),)

    id: int | None = ColumnField(default=None, primary_key=True)
    job_id: int = ColumnField(sa_column=Column(Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False))
    attempt: int
    offset: int = ColumnField(sa_column=Column(BigInteger, nullable=False))
    text: str = ColumnField(sa_column=Column(Text, nullable=False))


# The last evaluated epoch's example predictions (small PNGs), kept with the job.
class JobExample(SQLModel, table=True):
    __tablename__ = "job_examples"

    job_id: int = ColumnField(sa_column=Column(Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True))
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
    started_at: datetime = ColumnField(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    heartbeat_at: datetime = ColumnField(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    stopped_at: datetime | None = ColumnField(default=None, sa_column=Column(DateTime(timezone=True)))


# One attempt's W&B run folder (offline runs: each attempt has its own, synced in order).
class WandbAttemptPublic(BaseModel):
    attempt: int
    host: str | None
    dir: str | None
    sync_command: str | None


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
    pause_requested: bool
    checkpoint: CheckpointPublic | None
    resumed_from_epoch: int | None
    resumed_from_batch: int | None
    host: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_job(cls, job: Job) -> "JobPublic":
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
            status=job.status,
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
