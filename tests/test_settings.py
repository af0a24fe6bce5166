"""Settings the app and workers refuse, and what a job's training process is given of the worker's environment."""

import pytest
from pydantic import ValidationError

from app.settings import Settings, wandb_environment

WORKER_ENVIRONMENT = {"PATH": "/usr/bin", "WANDB_API_KEY": "local-0123456789abcdef", "WANDB_ENTITY": "lab"}


@pytest.mark.parametrize("mode", ["offline", "disabled"])
def test_a_job_that_never_uploads_gets_no_wandb_key(mode: str):
    assert wandb_environment(WORKER_ENVIRONMENT, mode) == {"PATH": "/usr/bin", "WANDB_ENTITY": "lab"}


@pytest.mark.parametrize("mode", ["online", "auto", None])
def test_a_job_that_may_upload_keeps_the_key(mode: str | None):
    assert wandb_environment(WORKER_ENVIRONMENT, mode) == WORKER_ENVIRONMENT


def test_a_lease_that_cannot_outlive_two_heartbeats_is_refused():
    with pytest.raises(ValidationError) as refused:
        Settings(lease_seconds=15, heartbeat_seconds=10, _env_file=None)
    assert "TRAINBOARD_LEASE_SECONDS (15)" in str(refused.value) and "TRAINBOARD_HEARTBEAT_SECONDS (10)" in str(refused.value)
    assert Settings(lease_seconds=20, heartbeat_seconds=10, _env_file=None).lease_seconds == 20
