"""Settings for the app and the workers: environment variables prefixed TRAINBOARD_, or `.env`."""

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

WandbMode = Literal["auto", "online", "offline", "disabled"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINBOARD_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default="sqlite:///var/trainboard.db",
        description="SQLAlchemy URL: sqlite:///path for one host, postgresql+psycopg://... for many",
    )
    data_dir: Path = Field(default=Path("var/data"), description="Where data sets are downloaded and cached")
    artifacts_dir: Path = Field(
        default=Path("var/artifacts"), description="Model files, job logs and W&B run folders"
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
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="A request's line and headers must arrive within this, or the connection closes"
    )
    body_timeout_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="A request's body must arrive within this of its headers (408 past it)"
    )

    @property
    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token and self.token.get_secret_value() else None

    def job_dir(self, job_id: int) -> Path:
        return self.artifacts_dir / "jobs" / str(job_id)

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
