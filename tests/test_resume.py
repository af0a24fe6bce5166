"""Many hosts, nothing lost, with real processes: the app and two workers "on different hosts"
(each its own name, scratch and local folder) share only the database and an S3 API (moto's
server). A worker SIGKILLed after epoch 2 of 4 leaves the job to the other host, which resumes it
from the checkpoint and ends with the metrics of an uninterrupted twin. Pause and resume too."""

import math
import signal
from pathlib import Path

import pytest
import torch

from tests.conftest import wait_for
from tests.test_worker import FAST_LEASES

pytestmark = pytest.mark.slow

# Deterministic on the CPU, a few seconds an epoch, W&B offline (each attempt its own folder).
RESUMABLE = {
    "pretrained": False, "epochs": 4, "batch_size": 32, "train_subset": 192, "test_subset": 96,
    "test_batch_size": 96, "log_interval": 2, "deterministic": True, "seed": 7, "checkpoint_every": 1,
}


def epoch_steps(stack, job_id: int) -> list[int]:
    return [point["step"] for point in stack.client.get(f"/jobs/{job_id}/metrics", params={"kind": "epoch"}).json()]


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_job_killed_on_one_host_resumes_on_another_with_the_same_result(database, request, make_stack, s3_env, tmp_path: Path):
    database_url = request.getfixturevalue("sqlite_url" if database == "sqlite" else "postgres_url")
    stack = make_stack(database_url=database_url, **FAST_LEASES, **s3_env)
    stack.serve()
    job = stack.submit(**RESUMABLE, name="interrupted")
    alpha = stack.worker(host="alpha")
    checkpointed = wait_for(
        lambda: (current := stack.job(job["id"]))["checkpoint"] and current["checkpoint"]["epoch"] >= 2 and current,
        300, interval=0.1, message=lambda: f"a checkpoint after epoch 2; logs:\n{stack.logs()}",
    )
    alpha.send_signal(signal.SIGKILL)
    alpha.wait()
    # The checkpoint the next attempt resumes from: the last one committed before the kill.
    saved_at = stack.job(job["id"])["checkpoint"]["epoch"]
    assert 2 <= saved_at < RESUMABLE["epochs"] and checkpointed["host"] == "alpha"

    stack.worker(host="beta")
    resumed = stack.wait_status(job["id"], ("succeeded", "failed"), timeout=300)
    assert resumed["status"] == "succeeded", resumed["error"]
    assert resumed["attempts"] == 2 and resumed["host"] == "beta"
    assert resumed["resumed_from_epoch"] == saved_at and resumed["resumed_from_batch"] == 0
    assert epoch_steps(stack, job["id"]) == [1, 2, 3, 4]

    # Its log (from the database) has both attempts, on their hosts, and says where it resumed.
    log = stack.client.get(f"/jobs/{job['id']}/log").text
    assert "attempt 1 on alpha" in log and "attempt 2 on beta" in log
    assert f"resuming from the checkpoint after epoch {saved_at}" in log
    # W&B: one run id, an offline folder per attempt, in order, each on its host.
    attempts = resumed["wandb"]["attempts"]
    assert [(entry["attempt"], entry["host"]) for entry in attempts] == [(1, "alpha"), (2, "beta")]
    assert all(entry["sync_command"] == f"wandb sync {entry['dir']}" for entry in attempts)
    assert "/alpha/" in attempts[0]["dir"] and "/beta/" in attempts[1]["dir"]

    # The twin, never interrupted, ends with the same metrics.
    twin = stack.submit(**RESUMABLE, name="twin")
    twin = stack.wait_status(twin["id"], ("succeeded", "failed"), timeout=300)
    assert twin["status"] == "succeeded", twin["error"]
    for metric in ("test_accuracy", "test_loss"):
        assert math.isclose(resumed["metrics"][metric], twin["metrics"][metric], abs_tol=1e-6), metric

    # The app (its own local folder) serves the model from the store, whole and by range.
    [artifact] = resumed["artifacts"]
    download = stack.client.get(artifact["url"])
    assert download.status_code == 200 and int(download.headers["content-length"]) == artifact["size"]
    (tmp_path / "model.pth").write_bytes(download.content)
    assert torch.load(tmp_path / "model.pth", weights_only=True)
    part = stack.client.get(artifact["url"], headers={"Range": "bytes=10-29"})
    assert part.status_code == 206 and part.content == download.content[10:30]
    assert part.headers["content-range"] == f"bytes 10-29/{artifact['size']}"
    # Example predictions come from the database.
    page = stack.client.get(f"/jobs/{job['id']}", headers={"Accept": "text/html"}).text
    assert f"/jobs/{job['id']}/examples/00.png" in page
    png = stack.client.get(f"/jobs/{job['id']}/examples/00.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    # Nothing of the store's credentials reaches the job, its log or the workers page.
    workers = stack.client.get("/workers").text
    assert s3_env["TRAINBOARD_ARTIFACTS_URL"] in workers
    for text in (str(stack.job(job["id"])), log, workers):
        assert s3_env["AWS_SECRET_ACCESS_KEY"] not in text


def test_pause_checkpoints_mid_run_and_resume_continues_from_there(make_stack, s3_env):
    stack = make_stack(**FAST_LEASES, **s3_env)
    stack.serve()
    job = stack.submit(**{**RESUMABLE, "epochs": 3, "checkpoint_every": 0, "wandb_mode": "disabled"})
    stack.worker(host="alpha")
    wait_for(lambda: stack.job(job["id"])["progress"].get("batch", 0) >= 2, 300, message=lambda: stack.logs())

    paused = stack.client.post(f"/jobs/{job['id']}/pause")
    assert paused.status_code == 200 and paused.json()["pause_requested"]
    paused = stack.wait_status(job["id"], ("paused", "failed", "succeeded"), timeout=120)
    assert paused["status"] == "paused" and paused["attempts"] == 0  # a pause spends no attempt
    assert paused["checkpoint"] is not None
    refused = stack.client.post(f"/jobs/{job['id']}/pause")
    assert refused.status_code == 409 and "paused" in refused.json()["detail"]

    resumed = stack.client.post(f"/jobs/{job['id']}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    done = stack.wait_status(job["id"], ("succeeded", "failed"), timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert (done["resumed_from_epoch"], done["resumed_from_batch"]) == (
        paused["checkpoint"]["epoch"], paused["checkpoint"]["batch"]
    )
    assert epoch_steps(stack, job["id"]) == [1, 2, 3]
    assert stack.client.post(f"/jobs/{job['id']}/resume").status_code == 409


def test_a_queued_job_pauses_at_once_and_a_paused_job_can_be_cancelled(make_stack):
    stack = make_stack()
    stack.serve()
    job = stack.submit(**RESUMABLE)
    paused = stack.client.post(f"/jobs/{job['id']}/pause").json()
    assert paused["status"] == "paused" and paused["checkpoint"] is None
    cancelled = stack.client.post(f"/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert stack.client.post(f"/jobs/{job['id']}/resume").status_code == 409


def test_a_worker_whose_store_is_its_own_disk_is_named_when_the_model_is_missing(make_stack):
    stack = make_stack()
    stack.serve()
    job = stack.submit(**{**RESUMABLE, "epochs": 1, "wandb_mode": "disabled", "checkpoint_every": 0})
    stack.worker(host="gamma")
    done = stack.wait_status(job["id"], ("succeeded", "failed"), timeout=300)
    assert done["status"] == "succeeded", done["error"]
    missing = stack.client.get(done["artifacts"][0]["url"])
    assert missing.status_code == 404
    assert "stored on host gamma's local disk" in missing.json()["detail"]
    assert "TRAINBOARD_ARTIFACTS_URL" in missing.json()["detail"]
