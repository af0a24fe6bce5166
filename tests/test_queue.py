"""The queue protocol (app/queue.py), one suite run on every database it supports: SQLite and
PostgreSQL, through the `engine` fixture. Races run in real processes."""

import multiprocessing
import random
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from app import queue, reads
from app.db import make_engine
from app.models import JobCreate, as_utc, utcnow

LEASE_SECONDS = 60
JOB_PARAMS = {"dataset": "synthetic", "pretrained": False, "epochs": 1, "wandb_mode": "disabled"}


def submit(engine: Engine, max_attempts: int = 3, **params):
    return queue.submit(engine, JobCreate(**{**JOB_PARAMS, **params}), default_wandb_mode="disabled", max_attempts=max_attempts)


def claim(engine: Engine, worker_id: str = "worker-a") -> queue.Claim:
    claimed = queue.claim(engine, worker_id, LEASE_SECONDS)
    assert claimed is not None
    return claimed


def after_lease() -> object:
    """A moment when every lease taken now has expired."""
    return utcnow() + timedelta(seconds=LEASE_SECONDS + 1)


# ---------------------------------------------------------------------------------------------
# Claiming
# ---------------------------------------------------------------------------------------------


def _claim_until_empty(database_url: str, worker_id: str, ready, start, results) -> None:
    engine = make_engine(database_url)
    with engine.connect():
        pass  # connected before the start, so the claims overlap
    ready.wait()
    start.wait()
    claimed = []
    while (job := queue.claim(engine, worker_id, LEASE_SECONDS)) is not None:
        claimed.append((job.job_id, job.attempt))
    results.put((worker_id, claimed))
    engine.dispose()


def test_four_processes_claim_each_of_200_jobs_exactly_once(engine: Engine):
    job_ids = {submit(engine).id for _ in range(200)}
    context = multiprocessing.get_context("spawn")
    ready, start, results = context.Barrier(5), context.Event(), context.Queue()
    url = engine.url.render_as_string(hide_password=False)
    processes = [
        context.Process(target=_claim_until_empty, args=(url, f"claimer-{n}", ready, start, results)) for n in range(4)
    ]
    for process in processes:
        process.start()
    ready.wait(timeout=120)
    start.set()
    by_worker = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0

    claimed = [job_id for jobs in by_worker.values() for job_id, _ in jobs]
    assert sorted(claimed) == sorted(job_ids)
    assert all(attempt == 1 for jobs in by_worker.values() for _, attempt in jobs)
    listing = reads.list_jobs(engine, status="running", limit=500, offset=0)
    jobs, total = listing.jobs, listing.total
    assert total == 200
    owner = {job_id: worker for worker, jobs in by_worker.items() for job_id, _ in jobs}
    assert all(job.worker_id == owner[job.id] and job.attempts == 1 for job in jobs)


def test_the_queued_cap_holds_exactly_under_40_concurrent_submits(engine: Engine):
    cap, submitters = 5, 40
    start = threading.Barrier(submitters)
    outcomes: list[str] = []

    def submit_capped() -> None:
        start.wait(timeout=60)
        try:
            queue.submit(
                engine, JobCreate(**JOB_PARAMS), default_wandb_mode="disabled", max_attempts=1, max_queued=cap
            )
            outcomes.append("queued")
        except queue.QueueFull:
            outcomes.append("refused")

    threads = [threading.Thread(target=submit_capped) for _ in range(submitters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(outcomes) == ["queued"] * cap + ["refused"] * (submitters - cap)
    assert reads.list_jobs(engine, status="queued", limit=100, offset=0).total == cap


def test_claim_takes_the_oldest_queued_job_and_sets_a_lease(engine: Engine):
    first, second = submit(engine), submit(engine)
    before = utcnow()
    claimed = claim(engine)
    assert (claimed.job_id, claimed.attempt, claimed.worker_id) == (first.id, 1, "worker-a")
    assert claimed.params["dataset"] == "synthetic" and claimed.name == first.name
    job = queue.get_job(engine, first.id)
    assert job.status == "running" and job.worker_id == "worker-a"
    assert before + timedelta(seconds=LEASE_SECONDS - 5) < as_utc(job.lease_expires_at) <= utcnow() + timedelta(seconds=LEASE_SECONDS)
    assert claim(engine).job_id == second.id
    assert queue.claim(engine, "worker-a", LEASE_SECONDS) is None


# ---------------------------------------------------------------------------------------------
# Fencing and the lease
# ---------------------------------------------------------------------------------------------


def test_stale_worker_is_fenced_out_after_its_job_is_handed_on(engine: Engine):
    job = submit(engine)
    stale = claim(engine, "worker-stale")
    assert queue.record_progress(engine, stale, progress={"epoch": 0, "batch": 1}, points=[("train", 1, {"train_loss": 2.3})])

    # Its lease expires (it stopped heartbeating), the reaper requeues, another worker claims.
    assert queue.reap_expired(engine, now=after_lease()) == 1
    assert queue.get_job(engine, job.id).status == "queued"
    fresh = claim(engine, "worker-fresh")
    assert (fresh.job_id, fresh.attempt) == (job.id, 2)

    # Everything the stale worker says from now on is refused and changes nothing.
    late_metrics = {"test_accuracy": 99.0, "test_loss": 0.01}
    assert not queue.record_progress(
        engine, stale, progress={"epoch": 1, "epochs": 1}, metrics=late_metrics, points=[("epoch", 1, late_metrics)]
    )
    assert not queue.record_wandb(engine, stale, mode="offline", url=None, run_id="stale", run_dir="/stale", note=None)
    assert not queue.finish(engine, stale, "succeeded", metrics=late_metrics, artifacts=[{"name": "model.pth", "size": 1}])
    assert not queue.release(engine, stale)
    assert queue.renew(engine, stale, LEASE_SECONDS) == "lost"

    current = queue.get_job(engine, job.id)
    assert (current.status, current.worker_id, current.attempts) == ("running", "worker-fresh", 2)
    assert current.metrics == {} and current.artifacts == [] and current.wandb_run_id is None
    assert [(m.attempt, m.kind) for m in reads.job_metrics(engine, job.id)] == [(1, "train")]

    # The current owner's writes go through.
    assert queue.record_progress(engine, fresh, progress={"epoch": 1, "epochs": 1}, metrics={"test_accuracy": 50.0})
    assert queue.finish(engine, fresh, "succeeded", metrics={"test_accuracy": 50.0}, artifacts=[])
    done = queue.get_job(engine, job.id)
    assert done.status == "succeeded" and done.metrics == {"test_accuracy": 50.0} and done.attempts == 2
    assert not queue.finish(engine, fresh, "failed", error="twice")


def test_each_attempt_records_where_it_trains_and_a_stale_worker_cannot(engine: Engine):
    job = submit(engine)
    first = claim(engine, "worker-a")
    assert queue.record_run(engine, first, host="box-a", device="cpu")
    assert queue.reap_expired(engine, now=after_lease()) == 1
    second = claim(engine, "worker-b")
    assert queue.record_run(engine, second, host="box-b", device="cuda:0 NVIDIA H100 80GB HBM3")

    # The first attempt's worker, fenced out, cannot rewrite where either attempt trained.
    assert not queue.record_run(engine, first, host="box-a", device="cuda:7 stale")
    assert queue.get_job(engine, job.id).runs == [
        {"attempt": 1, "worker": "worker-a", "host": "box-a", "device": "cpu"},
        {"attempt": 2, "worker": "worker-b", "host": "box-b", "device": "cuda:0 NVIDIA H100 80GB HBM3"},
    ]
    queue.finish(engine, second, "succeeded")
    assert not queue.record_run(engine, second, host="box-b", device="cpu")
    assert queue.get_job(engine, job.id).runs[-1]["device"] == "cuda:0 NVIDIA H100 80GB HBM3"


def test_renew_extends_the_lease_and_says_cancel_or_lost(engine: Engine):
    job = submit(engine)
    claimed = claim(engine)
    assert queue.renew(engine, claimed, LEASE_SECONDS * 3) == "ok"
    # A healthy job keeps its worker however long it runs: only an expired lease is reaped.
    assert queue.reap_expired(engine, now=after_lease()) == 0
    assert queue.get_job(engine, job.id).status == "running"

    queue.request_cancel(engine, job.id)
    assert queue.renew(engine, claimed, LEASE_SECONDS) == "cancel"
    assert queue.finish(engine, claimed, "cancelled", error="cancelled by request")
    assert queue.renew(engine, claimed, LEASE_SECONDS) == "lost"


def test_reaper_requeues_an_expired_job_then_fails_it_as_worker_lost(engine: Engine):
    job = submit(engine, max_attempts=2)
    claim(engine, "worker-a")
    assert queue.reap_expired(engine) == 0  # not expired yet

    assert queue.reap_expired(engine, now=after_lease()) == 1
    requeued = queue.get_job(engine, job.id)
    assert (requeued.status, requeued.attempts, requeued.worker_id) == ("queued", 1, None)

    assert claim(engine, "worker-b").attempt == 2
    assert queue.reap_expired(engine, now=after_lease()) == 1
    lost = queue.get_job(engine, job.id)
    assert lost.status == "failed" and lost.attempts == 2
    assert lost.error.startswith("worker lost")
    assert lost.finished_at is not None and lost.lease_expires_at is None
    assert queue.claim(engine, "worker-c", LEASE_SECONDS) is None


def test_reaper_ends_a_cancelled_job_whose_worker_was_lost(engine: Engine):
    job = submit(engine)
    claim(engine)
    queue.request_cancel(engine, job.id)
    assert queue.reap_expired(engine, now=after_lease()) == 1
    assert queue.get_job(engine, job.id).status == "cancelled"


# ---------------------------------------------------------------------------------------------
# Cancel, release, retry
# ---------------------------------------------------------------------------------------------


def test_cancel_of_a_queued_job_ends_it_at_once(engine: Engine):
    job = submit(engine)
    cancelled = queue.request_cancel(engine, job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert queue.get_job(engine, job.id).status == "cancelled"
    assert queue.claim(engine, "worker-a", LEASE_SECONDS) is None


def test_cancel_of_a_running_job_flags_it_for_its_worker(engine: Engine):
    job = submit(engine)
    claim(engine)
    flagged = queue.request_cancel(engine, job.id)
    assert flagged.status == "running" and flagged.cancel_requested
    assert queue.request_cancel(engine, job.id).cancel_requested  # asking twice is harmless


def test_cancel_refuses_unknown_and_finished_jobs(engine: Engine):
    with pytest.raises(queue.JobNotFound):
        queue.request_cancel(engine, 424242)
    job = submit(engine)
    queue.finish(engine, claim(engine), "succeeded", metrics={}, artifacts=[])
    with pytest.raises(queue.JobStateConflict, match="is succeeded") as conflict:
        queue.request_cancel(engine, job.id)
    assert conflict.value.status == "succeeded"


def test_train_points_past_the_cap_are_thinned_evenly_over_the_whole_run(engine: Engine):
    job = submit(engine)
    claimed = claim(engine)
    for first in range(1, 8001, 200):  # 8000 steps reported as a worker flushes them, 200 at a time
        points = [("train", step, {"train_loss": 1 / step}) for step in range(first, first + 200)]
        assert queue.record_progress(engine, claimed, progress={}, points=points, max_points=1000)
    assert queue.record_progress(engine, claimed, progress={}, points=[("epoch", 1, {"test_accuracy": 50.0})], max_points=1000)

    steps = [point.step for point in reads.job_metrics(engine, job.id, "train")]
    assert len(steps) <= 1000
    assert steps[0] == 1 and steps[-1] > 8000 - 16  # from the start to the latest point
    assert {later - earlier for earlier, later in zip(steps, steps[1:])} <= {15, 16}  # every 16th step: evenly
    assert [point.step for point in reads.job_metrics(engine, job.id, "epoch")] == [1]
    kept = reads.job_metrics(engine, job.id, "train")[5]
    assert kept.values == {"train_loss": 1 / kept.step}  # each kept point is one the training reported


def test_the_point_cap_holds_whatever_steps_a_training_reports(engine: Engine):
    job = submit(engine)
    claimed = claim(engine)
    rng = random.Random(7)
    reports = [
        [("train", 5, {"train_loss": 1.0})] * 3000,  # one step, over and over
        [("train", rng.randrange(0, 2**31), {"train_loss": 1.0}) for _ in range(3000)],  # anywhere, in any order
        [("train", step, {"train_loss": 1.0}) for step in (-1, 2**31, 2**40)],  # steps no column holds
        [("train", step, {"train_loss": 1.0}) for step in range(2**30, 2**30 + 3000)],
    ]
    for points in reports:
        assert queue.record_progress(engine, claimed, progress={}, points=points, max_points=1000)
        assert len(reads.job_metrics(engine, job.id, "train")) <= 1000
    assert queue.record_progress(engine, claimed, progress={}, points=reports[-1])  # no cap: every point
    assert len(reads.job_metrics(engine, job.id, "train")) > 3000


def test_release_requeues_without_spending_an_attempt(engine: Engine):
    job = submit(engine, max_attempts=1)
    claimed = claim(engine)
    queue.record_progress(engine, claimed, progress={"epoch": 0, "batch": 3}, points=[("train", 3, {"train_loss": 2.0})])
    assert queue.release(engine, claimed)

    released = queue.get_job(engine, job.id)
    assert (released.status, released.attempts, released.worker_id) == ("queued", 0, None)
    assert released.progress == {} and reads.job_metrics(engine, job.id) == []
    again = claim(engine, "worker-b")
    assert (again.job_id, again.attempt) == (job.id, 1)
    assert not queue.release(engine, claimed)  # the old claim no longer owns it


def test_a_resumed_attempt_takes_its_history_from_the_attempt_that_checkpointed(engine: Engine):
    """Attempt 1 is lost after epoch 1 but before its checkpoint; attempt 2 starts from scratch,
    checkpoints epoch 1, records epoch 2 and is lost; attempt 3 resumes with each epoch once."""
    job = submit(engine, max_attempts=4, epochs=3)

    def epoch(claimed, number):
        assert queue.record_progress(engine, claimed, progress={"epoch": number}, metrics={"test_accuracy": number},
                                     points=[("epoch", number, {"test_accuracy": number})])

    first = claim(engine)
    epoch(first, 1)
    assert queue.reap_expired(engine, now=after_lease()) == 1
    second = claim(engine, "worker-b")
    assert second.checkpoint is None
    epoch(second, 1)
    assert queue.record_checkpoint(engine, second, {"key": "k", "epoch": 1, "batch": 0, "step": 10})
    epoch(second, 2)
    assert queue.reap_expired(engine, now=after_lease()) == 1

    third = claim(engine, "worker-c")
    assert queue.start_from_checkpoint(engine, third)
    assert [m.step for m in reads.job_metrics(engine, job.id, "epoch", attempt=3)] == [1]
    assert queue.get_job(engine, job.id).metrics == {"test_accuracy": 1}
    epoch(third, 2)
    # Lost again before a checkpoint of its own: the next resume finds the history in attempt 3.
    assert queue.reap_expired(engine, now=after_lease()) == 1
    fourth = claim(engine, "worker-d")
    assert fourth.checkpoint["attempt"] == 3
    assert queue.start_from_checkpoint(engine, fourth)
    assert [(m.attempt, m.step) for m in reads.job_metrics(engine, job.id, "epoch", attempt=4)] == [(4, 1)]
    # The attempt that never reached a checkpoint keeps its own point.
    assert [(m.attempt, m.step) for m in reads.job_metrics(engine, job.id, "epoch", attempt=1)] == [(1, 1)]


def test_release_of_a_job_with_a_cancel_request_cancels_it(engine: Engine):
    job = submit(engine)
    claimed = claim(engine)
    queue.request_cancel(engine, job.id)
    assert queue.release(engine, claimed)
    assert queue.get_job(engine, job.id).status == "cancelled"
    assert queue.claim(engine, "worker-b", LEASE_SECONDS) is None


def test_retry_makes_a_linked_job_only_for_failed_or_cancelled_ones(engine: Engine):
    failed = submit(engine, lr=0.05, name="to-retry")
    queue.finish(engine, claim(engine), "failed", error="boom")
    retried = queue.retry(engine, failed.id, max_attempts=3)
    assert retried.id != failed.id and retried.retry_of == failed.id
    assert (retried.status, retried.attempts, retried.name) == ("queued", 0, "to-retry")
    assert retried.params["lr"] == 0.05 and retried.params["dataset"] == "synthetic"

    cancelled = submit(engine)
    queue.request_cancel(engine, cancelled.id)
    assert queue.retry(engine, cancelled.id, max_attempts=3).retry_of == cancelled.id

    with pytest.raises(queue.JobStateConflict, match="is queued"):
        queue.retry(engine, retried.id, max_attempts=3)
    running = claim(engine)
    with pytest.raises(queue.JobStateConflict, match="is running"):
        queue.retry(engine, running.job_id, max_attempts=3)
    queue.finish(engine, running, "succeeded", metrics={}, artifacts=[])
    with pytest.raises(queue.JobStateConflict, match="is succeeded"):
        queue.retry(engine, running.job_id, max_attempts=3)
    with pytest.raises(queue.JobNotFound):
        queue.retry(engine, 424242, max_attempts=3)


def test_offline_runs_are_the_finished_offline_jobs_and_a_sync_marks_them_online(engine: Engine):
    def ran(status: str | None, mode: str, run_dir: str | None) -> int:
        job = submit(engine)
        claimed = claim(engine)
        queue.record_wandb(engine, claimed, mode=mode, url=None, run_id="run", run_dir=run_dir, note=None)
        if status is not None:
            queue.finish(engine, claimed, status)
        return job.id

    succeeded = ran("succeeded", "offline", "/runs/a/wandb/offline-run-1")
    running = ran(None, "offline", "/runs/b/wandb/offline-run-2")
    failed = ran("failed", "offline", "/runs/c/wandb/offline-run-3")
    ran("succeeded", "online", None)
    ran("cancelled", "disabled", None)
    queue.request_cancel(engine, submit(engine).id)  # never ran: no W&B run at all

    assert [job.id for job in reads.offline_runs(engine)] == [succeeded, failed]
    assert [job.id for job in reads.offline_runs(engine, failed)] == [failed]
    assert reads.offline_runs(engine, running) == []

    url = "https://wandb.ai/lab/thorough-pytorch/runs/run"
    assert queue.record_synced(engine, succeeded, url=url)
    job = queue.get_job(engine, succeeded)
    assert (job.wandb_mode, job.wandb_url, job.wandb_dir) == ("online", url, "/runs/a/wandb/offline-run-1")
    assert [job.id for job in reads.offline_runs(engine)] == [failed]
    assert not queue.record_synced(engine, succeeded, url=url)  # already online
    assert not queue.record_synced(engine, running, url=url)  # still being written
    assert queue.get_job(engine, running).wandb_mode == "offline"


# ---------------------------------------------------------------------------------------------
# Wake-ups
# ---------------------------------------------------------------------------------------------


def seconds_taken(operation) -> float:
    started = time.monotonic()
    operation()
    return time.monotonic() - started


def test_an_idle_slot_wakes_for_a_new_job_or_a_stop(engine: Engine):
    """LISTEN/NOTIFY on PostgreSQL, PRAGMA data_version on SQLite; the timeout is the fallback."""
    wakeups, stop = queue.JobWakeups(engine), threading.Event()
    wakeups.listen()
    try:
        assert 0.3 <= seconds_taken(lambda: wakeups.wait(0.3, stop)) < 5  # nothing new: the timeout

        wakeups.listen()
        submit(engine)  # between the look at the queue and the wait: not missed
        assert seconds_taken(lambda: wakeups.wait(30, stop)) < 5

        wakeups.listen()
        submitter = threading.Timer(0.2, submit, args=(engine,))
        submitter.start()
        assert seconds_taken(lambda: wakeups.wait(30, stop)) < 5
        submitter.join()

        wakeups.listen()
        stopper = threading.Timer(0.2, stop.set)
        stopper.start()
        assert seconds_taken(lambda: wakeups.wait(30, stop)) < 5
        stopper.join()
    finally:
        wakeups.close()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_postgres_leases_follow_the_database_clock_not_the_hosts(engine: Engine, monkeypatch):
    submit(engine)
    # This host's clock runs two hours slow: its leases would look long expired to every other host.
    slow = utcnow() - timedelta(hours=2)
    monkeypatch.setattr(queue, "utcnow", lambda: slow)
    held = claim(engine)
    assert queue.renew(engine, held, 60) == "ok"
    monkeypatch.undo()
    # Another host, with the right time, reaps nothing: the lease was stamped by PostgreSQL's clock.
    assert queue.reap_expired(engine) == 0
    job = queue.get_job(engine, held.job_id)
    assert job.status == "running"
    assert timedelta(seconds=50) < as_utc(job.lease_expires_at) - utcnow() < timedelta(seconds=70)
