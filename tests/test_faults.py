"""Host faults and the worker's word on them, with real workers: a host whose scratch cannot be
written hands its jobs back and stops claiming; how an attempt ended is logged as it was recorded."""

import logging
import os
import signal
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from app import queue
from app.models import utcnow
from app.settings import Settings
from tests.conftest import wait_for
from tests.test_worker import FAST_LEASES, TINY_EPOCHS, submit, wait_child, wait_finished, wait_training
from worker.jobrun import ChildLauncher, JobRun
from worker.supervisor import Slot

pytestmark = pytest.mark.slow


def unhealthy_slots(stack) -> list[dict]:
    return [slot for worker in stack.client.get("/workers").json() if worker["alive"] for slot in worker["slots"] if slot.get("problem")]


def test_a_host_whose_scratch_cannot_be_written_hands_its_jobs_back_and_stops_claiming(
    database_url: str, engine: Engine, make_stack, tmp_path: Path
):
    # A path under a regular file: no process can create it, root included.
    (tmp_path / "afile").write_text("not a folder")
    stack = make_stack(database_url=database_url, TRAINBOARD_WORK_DIR=str(tmp_path / "afile" / "work"), **FAST_LEASES)
    stack.serve()
    jobs = [submit(engine, epochs=1) for _ in range(5)]
    stack.worker()

    [slot] = wait_for(lambda: unhealthy_slots(stack), 60, message=lambda: f"the slot to report its problem; logs:\n{stack.logs()}")
    assert slot["problem"].startswith("job ") and "cannot write its scratch folder" in slot["problem"]
    assert "Not a directory" in slot["problem"]
    states = [(job.status, job.attempts) for job in (queue.get_job(engine, job.id) for job in jobs)]
    assert states == [("queued", 0)] * 5, states
    gauges = {
        sample.labels.get("worker"): sample.value
        for family in text_string_to_metric_families(stack.client.get("/metrics").text)
        for sample in family.samples if sample.name == "trainboard_worker_slots_unhealthy"
    }
    assert list(gauges.values()) == [1], gauges

    # A healthy host takes them all, while the unhealthy one still claims none.
    stack.worker(host="healthy")
    for job in jobs:
        done = wait_finished(engine, job.id, stack)
        assert (done.status, done.attempts, done.host) == ("succeeded", 1, "healthy"), done.error
    assert unhealthy_slots(stack)


def test_a_cancel_lands_within_seconds_not_at_the_next_heartbeat(database_url: str, engine: Engine, make_stack):
    # Renewals half a minute apart (the default is 10 s): only a wake-up explains a cancel within seconds.
    stack = make_stack(database_url=database_url, TRAINBOARD_HEARTBEAT_SECONDS="30", TRAINBOARD_LEASE_SECONDS="120")
    stack.serve()
    job = stack.submit(**TINY_EPOCHS, epochs=100)
    stack.worker()
    wait_for(lambda: stack.job(job["id"])["progress"].get("batch", 0) >= 1, 120, message="the job to train")

    assert stack.client.post(f"/jobs/{job['id']}/cancel").status_code == 200
    cancelled = stack.wait_status(job["id"], ("succeeded", "failed", "cancelled"), timeout=5)
    assert (cancelled["status"], cancelled["error"]) == ("cancelled", "cancelled by request")


def test_a_cancelled_child_slower_to_exit_than_the_lease_still_ends_cancelled(
    database_url: str, engine: Engine, make_stack, tmp_path: Path
):
    stack = make_stack(
        database_url=database_url, **{**FAST_LEASES, "TRAINBOARD_LEASE_SECONDS": "2", "TRAINBOARD_CANCEL_GRACE_SECONDS": "5"},
    )
    job = submit(engine, epochs=100)
    stack.worker()
    wait_training(engine, job.id, stack)
    # Stopped, the child cannot act on SIGTERM: it exits only at SIGKILL, after the grace of 5 s,
    # more than twice the lease: the worker must keep renewing meanwhile.
    child = wait_child(tmp_path, job.id)
    os.kill(child, signal.SIGSTOP)
    queue.request_cancel(engine, job.id)

    done = wait_finished(engine, job.id, stack)
    assert (done.status, done.error, done.attempts) == ("cancelled", "cancelled by request", 1)
    assert "stopping it harder" in stack.logs()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_ending_is_logged_only_when_it_was_recorded(engine: Engine, tmp_path: Path, caplog):
    settings = Settings(
        database_url=str(engine.url), work_dir=tmp_path / "work", artifacts_dir=tmp_path / "artifacts", _env_file=None,
    )
    slot = Slot(0, "cpu")
    stopping = threading.Event()
    stopping.set()  # claimed as the worker stops: the attempt ends at once with a release
    caplog.set_level(logging.INFO, logger="trainboard.worker")

    ours = submit(engine, epochs=1)
    claim = queue.claim(engine, "worker-a", settings.lease_seconds)
    JobRun(settings, engine, "worker-a", slot, claim, stopping, queue.JobWakeups(engine), ChildLauncher(settings, slot)).run()
    assert f"job {ours.id} released" in caplog.text

    # Reaped meanwhile, as if its lease had expired: the job is no longer this attempt's.
    caplog.clear()
    claim = queue.claim(engine, "worker-a", settings.lease_seconds)
    queue.reap_expired(engine, now=utcnow() + timedelta(seconds=settings.lease_seconds + 1))
    JobRun(settings, engine, "worker-a", slot, claim, stopping, queue.JobWakeups(engine), ChildLauncher(settings, slot)).run()
    assert f"job {claim.job_id}: its release was not recorded: the job is no longer this worker's" in caplog.text
    assert "released" not in caplog.text
