"""Settings for the app and the workers: environment variables prefixed TRAINBOARD_, or `.env`."""

import logging
import socket
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

from pydantic import ByteSize, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.store import ArtifactStore

WandbMode = Literal["auto", "online", "offline", "disabled"]
log = logging.getLogger("trainboard.settings")

# A training process needs about 0.9 GiB of private memory before its first batch (torch, its
# CUDA libraries' data, W&B); below this a memory ceiling would fail every job, however small.
MIN_JOB_MEMORY = ByteSize(1536 * 1024**2)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINBOARD_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default="sqlite:///var/trainboard.db",
        description="SQLAlchemy URL: sqlite:///path for one host, postgresql+psycopg://... for many",
    )
    data_dir: Path = Field(default=Path("var/data"), description="Where data sets are downloaded and cached")
    artifacts_dir: Path = Field(
        default=Path("var/artifacts"),
        description="The artifact store as a local directory, when TRAINBOARD_ARTIFACTS_URL is unset",
    )
    artifacts_url: str | None = Field(
        default=None, max_length=1024,
        description="The artifact store shared by the app and every worker: a local path, or s3://bucket/prefix "
        "(endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION)",
    )
    work_dir: Path = Field(
        default=Path("var/work"), description="This host's scratch: W&B run folders, checkpoint staging, job logs"
    )
    host_name: str = Field(
        default_factory=socket.gethostname, min_length=1, max_length=255,
        description="The host's name in jobs and on /workers (default: the hostname)",
    )
    log_max_bytes: int = Field(
        default=2 * 1024 * 1024, ge=4096, le=1024**3,
        description="Per job attempt, the most bytes of training output kept in the database (the last ones)",
    )
    job_memory: ByteSize | None = Field(
        default=None,
        description="The memory ceiling of each training process that trains on the CPU, e.g. 3GiB or 4G "
        "(default: 80% of the host's memory shared among the worker's slots); at least 1.5GiB",
    )
    max_train_points: int = Field(
        default=20_000, ge=1000, le=10_000_000,
        description="Per job attempt, the most train-loss points kept; past it they are thinned evenly over the run "
        "(at least 1000: a run's epoch points, at most 1000, are held to it too and never thinned)",
    )
    max_histograms: int = Field(
        default=1000, ge=1, le=1_000_000,
        description="Per job, the most wandb.watch histogram sets; a wandb_watch_freq that would log more is raised",
    )
    max_artifact_bytes: ByteSize = Field(
        default=ByteSize(1024**3), ge=1024,
        description="The most a job may store: its result files together, and each checkpoint (e.g. 1GiB)",
    )
    cifar_verify: bool = Field(default=True, description="Verify CIFAR-10 checksums")
    wandb_mode: WandbMode = Field(
        default="auto", description="auto: online when a W&B API key is configured, else offline"
    )
    token: SecretStr | None = Field(
        default=None,
        description=(
            "The admin's access token (user `admin`); serving beyond localhost needs it, at least 16 characters "
            "with 10 different ones and no whitespace, or a user added with `trainboard user add`"
        ),
    )
    max_queued: int | None = Field(default=None, ge=1, description="Refuse new jobs (429) while this many are queued")
    heartbeat_seconds: float = Field(default=10.0, gt=0, le=3600)
    lease_seconds: float = Field(default=60.0, gt=0, le=86400)
    max_attempts: int = Field(default=3, ge=1, le=100)
    poll_seconds: float = Field(default=1.0, gt=0, le=60, description="How often an idle worker looks for work")
    cancel_grace_seconds: float = Field(default=10.0, ge=0, le=600)
    warm_child: bool = Field(
        default=True,
        description="Keep each slot's next training process started ahead of its job, its imports done "
        "(one process per job all the same); false starts each at its claim",
    )
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="A request's line and headers must arrive within this, or the connection closes"
    )
    body_timeout_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="A request's body must arrive within this of its headers (408 past it)"
    )

    @field_validator("job_memory")
    @classmethod
    def job_memory_fits_a_training(cls, value: ByteSize | None) -> ByteSize | None:
        if value is not None and value < MIN_JOB_MEMORY:
            raise ValueError(
                f"TRAINBOARD_JOB_MEMORY ({value.human_readable()}) is below the {MIN_JOB_MEMORY.human_readable()} "
                "a training process needs before its first batch"
            )
        return value

    @model_validator(mode="after")
    def lease_outlives_heartbeats(self) -> "Settings":
        """A lease must outlive a late heartbeat or two, or healthy jobs would be taken away (a
        child being stopped included: its lease is renewed every heartbeat meanwhile)."""
        if self.lease_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(
                f"TRAINBOARD_LEASE_SECONDS ({self.lease_seconds:g}) must be at least twice "
                f"TRAINBOARD_HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}); the defaults are 60 and 10"
            )
        return self

    @property
    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token and self.token.get_secret_value() else None

    @property
    def store_url(self) -> str:
        """TRAINBOARD_ARTIFACTS_URL, else TRAINBOARD_ARTIFACTS_DIR."""
        return self.artifacts_url or str(self.artifacts_dir)

    @cached_property
    def store(self) -> ArtifactStore:
        if self.artifacts_url and "artifacts_dir" in self.model_fields_set:
            log.warning("TRAINBOARD_ARTIFACTS_URL is set, so TRAINBOARD_ARTIFACTS_DIR=%s is ignored", self.artifacts_dir)
        return ArtifactStore(self.store_url)

    def job_dir(self, job_id: int) -> Path:
        """A job's folder in a local store: where versions before the shared store kept its log and examples."""
        return self.artifacts_dir / "jobs" / str(job_id)

    def scratch_dir(self, job_id: int) -> Path:
        """This host's working folder for the job: its W&B run folders, checkpoints before upload, its log."""
        return self.work_dir / "jobs" / str(job_id)

    def job_files(self, job_id: int) -> "JobFiles":
        return JobFiles(self.job_dir(job_id))


@dataclass(frozen=True)
class JobFiles:
    """The layout of a job's folder: the worker and its training child write it, the app reads it."""

    root: Path

    @property
    def log(self) -> Path:
        """The output of every attempt of the job's training process."""
        return self.root / "job.log"

    @property
    def model(self) -> Path:
        return self.root / "model.pth"

    @property
    def examples_dir(self) -> Path:
        """The last evaluated epoch's example predictions (PNGs) and their manifest."""
        return self.root / "examples"

    @property
    def examples_manifest(self) -> Path:
        """{"epoch": n, "examples": [{"file", "caption"}]}"""
        return self.examples_dir / "examples.json"

    def artifact(self, name: str) -> Path:
        return self.root / name

    @staticmethod
    def plain_name(name: str) -> bool:
        """Whether an artifact's name is a file of the job's folder itself (no folder, no `..`)."""
        return name not in ("", ".", "..") and Path(name).name == name

    def read_log(self, offset: int | None, max_bytes: int) -> tuple[str, int]:
        """Up to max_bytes of the log, decoded leniently: from byte `offset` on, or its last
        max_bytes when offset is None; and the offset the text ends at ("" and 0 before there is a log)."""
        try:
            with self.log.open("rb") as log:
                size = log.seek(0, 2)
                start = max(0, size - max_bytes) if offset is None else min(offset, size)
                log.seek(start)
                data = log.read(max_bytes)
        except FileNotFoundError:
            return "", 0
        return data.decode("utf-8", errors="replace"), start + len(data)

    def log_tail(self, max_bytes: int) -> str:
        """The last max_bytes of the log, or "" before there is one."""
        return self.read_log(None, max_bytes)[0]


def wandb_environment(environment: dict[str, str], wandb_mode: str | None) -> dict[str, str]:
    """A job's training environment, less W&B's API key when the job runs offline or disabled:
    such a run never uploads, so the key has no use there and its training code need not see it.
    `wandb_mode` is the job's (auto keeps the key: it means online when there is one)."""
    if wandb_mode in ("offline", "disabled"):
        return {name: value for name, value in environment.items() if name != "WANDB_API_KEY"}
    return dict(environment)


@lru_cache
def get_settings() -> Settings:
    return Settings()
