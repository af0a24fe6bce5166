"""The data model: job parameters as the API takes them, the tables, and what the API shows."""

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import JSON, Column, DateTime, ForeignKey, Index, Integer
from sqlmodel import SQLModel
from sqlmodel import Field as ColumnField

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED_STATUSES: tuple[str, ...] = ("succeeded", "failed", "cancelled")
STATUSES: tuple[str, ...] = ("queued", "running", *FINISHED_STATUSES)

# W&B's rules: project names may not contain / \ # ? % :, entities are user or team slugs.
WandbProject = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^/\\#?%:\s]+$")]
WandbEntity = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")]
JobName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# The hyperparameters of a job: every field optional, defaults are the tutorial's config.
class JobCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"lr": 0.05, "epochs": 3},
                {"name": "smoke", "dataset": "synthetic", "pretrained": False, "epochs": 2, "train_subset": 2000},
            ]
        },
    )

    name: JobName | None = Field(default=None, description="Job and W&B run name (default: job-<id>)")
    batch_size: int = Field(default=64, ge=1, le=4096, description="Training batch size")
    test_batch_size: int = Field(default=1000, ge=1, le=10000, description="Evaluation batch size")
    epochs: int = Field(default=5, ge=1, le=1000, description="Passes over the training set")
    lr: float = Field(default=0.01, gt=0, le=10, description="SGD learning rate")
    momentum: float = Field(default=0.1, ge=0, lt=1, description="SGD momentum")
    use_cuda: bool = Field(default=True, description="Train on the slot's GPU when there is one")
    seed: int = Field(default=2043, ge=0, le=2**32 - 1, description="Seed for python, numpy and torch")
    log_interval: int = Field(default=10, ge=1, le=100000, description="Log train loss every N batches")
    model: Literal["resnet18", "resnet18_cifar"] = Field(
        default="resnet18",
        description="resnet18: torchvision's, as in the tutorial; resnet18_cifar: 3x3 stem, no max-pool",
    )
    pretrained: bool = Field(default=True, description="Start from torchvision's ImageNet weights (resnet18 only)")
    dataset: Literal["cifar10", "synthetic"] = Field(
        default="cifar10", description="cifar10, or synthetic: generated and learnable, no download"
    )
    train_subset: int | None = Field(default=None, ge=1, le=50000, description="Train on the first N samples only")
    test_subset: int | None = Field(default=None, ge=1, le=10000, description="Evaluate on the first N samples only")
    wandb_project: WandbProject = Field(default="thorough-pytorch", description="W&B project")
    wandb_entity: WandbEntity | None = Field(default=None, description="W&B user or team (default: the key's)")
    wandb_mode: Literal["auto", "online", "offline", "disabled"] | None = Field(
        default=None,
        description="auto (online when the worker has a W&B key), online, offline or disabled (default: TRAINBOARD_WANDB_MODE)",
    )
    tags: list[Tag] = Field(default_factory=list, max_length=16, description="W&B tags, up to 16")


# A job as stored: parameters as JSON, queue state in columns the claim and the reaper use.
class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
    )

    id: int | None = ColumnField(default=None, primary_key=True)
    name: str = ColumnField(max_length=128)
    status: str = ColumnField(default="queued", max_length=16)
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
