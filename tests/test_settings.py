"""What a job's training process is given of the worker's environment."""

import pytest

from app.settings import wandb_environment

WORKER_ENVIRONMENT = {"PATH": "/usr/bin", "WANDB_API_KEY": "local-0123456789abcdef", "WANDB_ENTITY": "lab"}


@pytest.mark.parametrize("mode", ["offline", "disabled"])
def test_a_job_that_never_uploads_gets_no_wandb_key(mode: str):
    assert wandb_environment(WORKER_ENVIRONMENT, mode) == {"PATH": "/usr/bin", "WANDB_ENTITY": "lab"}


@pytest.mark.parametrize("mode", ["online", "auto", None])
def test_a_job_that_may_upload_keeps_the_key(mode: str | None):
    assert wandb_environment(WORKER_ENVIRONMENT, mode) == WORKER_ENVIRONMENT
