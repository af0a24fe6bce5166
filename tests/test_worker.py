"""Workers as real processes on SQLite and PostgreSQL: killed mid-job, cancelled, stopped, lost.

Leases and heartbeats are short here, so a lost worker is noticed in seconds; the jobs are small
synthetic ones that run long enough to be interrupted.
"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from app import queue, reads
from app.models import Job, JobCreate
from app.settings import JobFiles, Settings
from tests.conftest import POSTGRES_URL, wait_for

pytestmark = pytest.mark.slow

FAST_LEASES = {
    "TRAINBOARD_HEARTBEAT_SECONDS": "0.5",
    "TRAINBOARD_LEASE_SECONDS": "3",
    "TRAINBOARD_POLL_SECONDS": "0.2",
    "TRAINBOARD_CANCEL_GRACE_SECONDS": "5",
}
# Four batches an epoch, a progress report after each: interruptible from its first seconds.
TINY_EPOCHS = {
    "dataset": "synthetic", "pretrained": False, "batch_size": 16, "train_subset": 64, "test_subset": 32,
    "test_batch_size": 32, "log_interval": 1, "wandb_mode": "disabled",
}
FINISHED = ("succeeded", "failed", "cancelled")


def submit(engine: Engine, **params) -> Job:
    return queue.submit(engine, JobCreate(**{**TINY_EPOCHS, **params}), default_wandb_mode="disabled", max_attempts=3)


def wait_job(engine: Engine, job_id: int, condition, what: str, stack, timeout: float = 240) -> Job:
    return wait_for(
        lambda: job if condition(job := queue.get_job(engine, job_id)) else None,
        timeout, interval=0.1, message=lambda: f"job {job_id} {what}; logs:\n{stack.logs()}",
    )


def wait_finished(engine: Engine, job_id: int, stack) -> Job:
    return wait_job(engine, job_id, lambda job: job.status in FINISHED, "to finish", stack)


def wait_training(engine: Engine, job_id: int, stack) -> Job:
    """Until the job runs and its child has reported a trained batch."""
    job = wait_job(
        engine, job_id, lambda job: job.status in FINISHED or job.status == "running" and job.progress.get("batch", 0) >= 1,
        "to train", stack,
    )
    assert job.status == "running", f"job {job_id} ended before it could be interrupted: {job.status} {job.error}"
    return job


def training_child(job_dir: Path) -> int | None:
    """The pid of the training process working in job_dir (a slot starts its child there)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"worker.child" in (entry / "cmdline").read_bytes() and (entry / "cwd").resolve() == job_dir.resolve():
                return int(entry.name)
        except OSError:
            continue
    return None


def training_processes(worker_pid: int) -> list[int]:
    """The pids of the training processes a worker started, with a job or waiting for one."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit() and b"worker.child" in (entry / "cmdline").read_bytes()
                and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == worker_pid and alive(int(entry.name))
            ):
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_child(tmp_path: Path, job_id: int) -> int:
    """The pid of the job's training process, once a slot of the stack in tmp_path has started it."""
    folder = Settings(work_dir=tmp_path / "work", _env_file=None).scratch_dir(job_id)
    return wait_for(lambda: training_child(folder), 10, message="the training child")


def test_a_worker_killed_mid_job_takes_its_child_with_it_and_another_finishes_the_job(
    database_url: str, engine: Engine, make_stack, tmp_path: Path
):
    stack = make_stack(database_url=database_url, **FAST_LEASES)
    job = submit(engine, epochs=3)
    doomed = stack.worker()
    wait_training(engine, job.id, stack)
    child = wait_child(tmp_path, job.id)

    doomed.kill()
    doomed.wait()
    wait_for(lambda: not alive(child), 10, message=f"training child {child} to die with its worker")

    stack.worker()
    done = wait_finished(engine, job.id, stack)
    assert done.status == "succeeded", done.error
    assert done.attempts == 2
    epochs = [(m.attempt, m.step) for m in reads.job_metrics(engine, job.id, "epoch")]
    assert [step for attempt, step in epochs if attempt == 2] == [1, 2, 3]


def test_cancel_and_retry_through_the_api(database_url: str, make_stack, tmp_path: Path):
    stack = make_stack(database_url=database_url, **FAST_LEASES)
    stack.serve()
    client = stack.client

    # Queued (no worker yet): cancelled at once.
    queued = stack.submit(**TINY_EPOCHS, epochs=100)
    response = client.post(f"/jobs/{queued['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"

    # Running: the worker stops its child and records cancelled, keeping the metrics so far.
    running = stack.submit(**TINY_EPOCHS, epochs=100)
    stack.worker()
    stack.wait_status(running["id"], ("running",))
    wait_for(lambda: "test_accuracy" in stack.job(running["id"])["metrics"], 240, message="a first epoch")
    child = wait_child(tmp_path, running["id"])
    refused = client.post(f"/jobs/{running['id']}/retry")
    assert refused.status_code == 409 and "running" in refused.json()["detail"]

    response = client.post(f"/jobs/{running['id']}/cancel")
    assert response.status_code == 200 and response.json()["cancel_requested"]
    cancelled = stack.wait_status(running["id"], FINISHED, timeout=60)
    assert cancelled["status"] == "cancelled" and cancelled["error"] == "cancelled by request"
    assert cancelled["metrics"]["test_accuracy"] >= 0 and cancelled["progress"]["epoch"] >= 1
    assert client.get(f"/jobs/{running['id']}/metrics", params={"kind": "epoch"}).json()
    wait_for(lambda: not alive(child), 10, message="the cancelled job's child to exit")

    again = client.post(f"/jobs/{running['id']}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]

    retried = client.post(f"/jobs/{running['id']}/retry")
    assert retried.status_code == 201, retried.text
    retry = retried.json()
    assert retry["retry_of"] == running["id"] and retry["status"] in ("queued", "running")
    assert {**retry["params"], "name": None} == {**cancelled["params"], "name": None}
    assert retried.headers["location"] == f"/jobs/{retry['id']}"
    assert client.post(f"/jobs/{retry['id']}/cancel").status_code == 200

    for action in ("cancel", "retry"):
        missing = client.post(f"/jobs/987654/{action}")
        assert missing.status_code == 404 and "987654" in missing.json()["detail"]


def test_a_stopping_worker_puts_its_job_back_without_spending_an_attempt(
    database_url: str, engine: Engine, make_stack, tmp_path: Path
):
    stack = make_stack(database_url=database_url, **FAST_LEASES)
    job = submit(engine, epochs=100)
    worker = stack.worker()
    wait_training(engine, job.id, stack)
    child = wait_child(tmp_path, job.id)

    worker.send_signal(signal.SIGTERM)
    try:
        assert worker.wait(timeout=30) == 0
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not stop within 30 s of SIGTERM; logs:\n{stack.logs()}")
    assert not alive(child)
    requeued = queue.get_job(engine, job.id)
    assert (requeued.status, requeued.attempts, requeued.worker_id) == ("queued", 0, None)
    [registered] = reads.list_workers(engine)
    assert registered.stopped_at is not None


def test_a_lease_lost_on_the_last_attempt_fails_the_job_and_fences_out_its_frozen_worker(
    database_url: str, engine: Engine, make_stack, tmp_path: Path
):
    stack = make_stack(database_url=database_url, TRAINBOARD_MAX_ATTEMPTS="1", **FAST_LEASES)
    stack.serve()
    job = stack.submit(**TINY_EPOCHS, epochs=100)
    assert job["max_attempts"] == 1
    frozen = stack.worker()
    wait_training(engine, job["id"], stack)
    child = wait_child(tmp_path, job["id"])

    # The worker stops heartbeating while its child trains on; another worker's reaper sees the
    # lease expire and, with no attempt left, fails the job.
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        stack.worker()
        lost = stack.wait_status(job["id"], FINISHED, timeout=60)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert lost["status"] == "failed" and lost["error"].startswith("worker lost"), lost["error"]
    assert lost["attempts"] == 1

    # Woken, the frozen worker finds the job is no longer its own: it stops the child and
    # writes nothing more, and carries on as a worker.
    wait_for(lambda: not alive(child), 20, message="the frozen worker to stop its training child")
    assert frozen.poll() is None
    after = stack.job(job["id"])
    for field in ("status", "error", "attempts", "progress", "metrics", "finished_at"):
        assert after[field] == lost[field], field


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_child_that_dies_without_a_result_fails_its_job_with_the_signal_and_its_last_output(
    database_url: str, engine: Engine, make_stack, tmp_path: Path
):
    stack = make_stack(database_url=database_url, **FAST_LEASES)
    job = submit(engine, epochs=100)
    worker = stack.worker()
    wait_training(engine, job.id, stack)
    os.kill(wait_child(tmp_path, job.id), signal.SIGKILL)

    failed = wait_finished(engine, job.id, stack)
    assert failed.status == "failed" and failed.attempts == 1
    assert failed.error.startswith("the training process was killed by SIGKILL (out of memory?) without a result")
    assert "; last output: " in failed.error and "trainboard: " in failed.error  # what the child printed
    assert worker.poll() is None  # the worker carries on


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_job_over_its_memory_ceiling_fails_in_one_line_and_the_worker_goes_on_to_the_next(
    database_url: str, engine: Engine, make_stack
):
    stack = make_stack(database_url=database_url, TRAINBOARD_JOB_MEMORY="1536MiB", **FAST_LEASES)
    # resnet18_cifar takes about 5.4 MiB a training image on the CPU: 2.7 GiB for this batch.
    hungry = submit(engine, model="resnet18_cifar", batch_size=512, train_subset=512, epochs=1, use_cuda=False)
    after = submit(engine, epochs=1)
    worker = stack.worker()

    failed = wait_finished(engine, hungry.id, stack)
    assert (failed.status, failed.attempts) == ("failed", 1)
    assert failed.error == (
        "out of memory at batch_size 512 on cpu (the memory ceiling per training process is 1.5GiB, "
        "TRAINBOARD_JOB_MEMORY): lower batch_size"
    )
    done = wait_finished(engine, after.id, stack)
    assert done.status == "succeeded", done.error
    assert worker.poll() is None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_job_whose_files_exceed_the_store_limit_fails_naming_it_and_stores_nothing(
    database_url: str, engine: Engine, make_stack, tmp_path: Path
):
    stack = make_stack(database_url=database_url, TRAINBOARD_MAX_ARTIFACT_BYTES="1MiB", **FAST_LEASES)
    checkpointed = submit(engine, epochs=2, checkpoint_every=1)
    uncheckpointed = submit(engine, epochs=1, checkpoint_every=0)
    worker = stack.worker()

    over = r"\d+\.\dMiB \([\d,]+ bytes\), over the 1\.0MiB a job may store \(TRAINBOARD_MAX_ARTIFACT_BYTES\); nothing of it was stored"
    failed = wait_finished(engine, checkpointed.id, stack)
    assert failed.status == "failed"
    assert re.fullmatch(f"its checkpoint checkpoint-e1-b0.pt is {over}", failed.error), failed.error
    assert failed.checkpoint is None and failed.artifacts == []
    failed = wait_finished(engine, uncheckpointed.id, stack)
    assert failed.status == "failed"
    assert re.fullmatch(f"training finished, but its files \\(model.pth\\) are {over}", failed.error), failed.error
    assert failed.artifacts == []
    stored = [path for path in (tmp_path / "artifacts").rglob("*") if path.is_file()]
    assert stored == []
    assert worker.poll() is None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_training_child_gets_only_the_environment_it_needs(
    database_url: str, engine: Engine, make_stack, tmp_path: Path
):
    stack = make_stack(
        database_url=database_url, TRAINBOARD_TOKEN="worker-side-token-0123456789", UNRELATED_SECRET="s3cret",
        WANDB_ENTITY="team-x", **FAST_LEASES,
    )
    job = submit(engine, epochs=50)
    stack.worker()
    wait_training(engine, job.id, stack)
    child = wait_child(tmp_path, job.id)
    environment = dict(
        entry.split("=", 1) for entry in Path(f"/proc/{child}/environ").read_text().split("\0") if "=" in entry
    )
    queue.request_cancel(engine, job.id)
    assert "TRAINBOARD_DATABASE_URL" not in environment and "TRAINBOARD_TOKEN" not in environment
    assert "UNRELATED_SECRET" not in environment
    assert environment["WANDB_ENTITY"] == "team-x" and environment["PATH"]
    assert environment["CUDA_VISIBLE_DEVICES"] == ""  # a CPU slot hides any GPU from its child
    assert wait_finished(engine, job.id, stack).status == "cancelled"


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_worker_rides_out_dropped_database_connections(database_url: str, engine: Engine, make_stack, tmp_path: Path):
    stack = make_stack(database_url=database_url, **{**FAST_LEASES, "TRAINBOARD_LEASE_SECONDS": "15"})
    job = submit(engine, epochs=4)
    worker = stack.worker()
    wait_training(engine, job.id, stack)

    # For three seconds the test's database refuses new connections and PostgreSQL drops the open
    # ones: heartbeats, progress writes and the LISTEN connection all fail and must be retried.
    name = make_url(database_url).database
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    terminate = text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"
    )
    dropped = 0
    deadline = time.monotonic() + 3
    with admin.connect() as connection:
        connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        try:
            while time.monotonic() < deadline:
                dropped += connection.execute(terminate, {"name": name}).scalar_one()
                time.sleep(0.05)
        finally:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
    admin.dispose()
    assert dropped > 0

    done = wait_finished(engine, job.id, stack)
    assert done.status == "succeeded", done.error
    assert worker.poll() is None, stack.logs()
    assert "database unavailable" in stack.logs()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_second_signal_stops_the_worker_at_once_and_its_child_with_it(
    database_url: str, engine: Engine, make_stack, tmp_path: Path
):
    # A long grace, so only the second signal can explain a quick exit.
    stack = make_stack(database_url=database_url, **{**FAST_LEASES, "TRAINBOARD_CANCEL_GRACE_SECONDS": "60"})
    job = submit(engine, epochs=100)
    worker = stack.worker()
    wait_training(engine, job.id, stack)
    child = wait_child(tmp_path, job.id)
    # The child ignores the worker's polite SIGTERM, as a training step stuck in a kernel would.
    os.kill(child, signal.SIGSTOP)

    worker.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping" in stack.logs(), 10, message="the worker to start stopping")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 128 + signal.SIGTERM
    wait_for(lambda: not alive(child), 10, message=f"training child {child} to die with its worker")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_each_job_trains_in_its_own_process_started_before_its_claim(
    database_url: str, engine: Engine, make_stack, tmp_path: Path
):
    stack = make_stack(database_url=database_url, **FAST_LEASES)
    worker = stack.worker()
    waiting = wait_for(lambda: training_processes(worker.pid), 60, message="a training process waiting for a job")

    for _ in range(2):
        job = submit(engine, epochs=100)
        wait_training(engine, job.id, stack)
        assert wait_child(tmp_path, job.id) == waiting[-1]  # started before the claim, it trains the job
        # Its first batches trained, the slot starts the next job's process.
        [following] = wait_for(
            lambda: [pid for pid in training_processes(worker.pid) if pid not in waiting], 60,
            message="the next job's process",
        )
        waiting.append(following)
        queue.request_cancel(engine, job.id)
        assert wait_finished(engine, job.id, stack).status == "cancelled"
        wait_for(lambda: not alive(waiting[-2]), 10, message="the job's process to exit with its job")

    assert len(set(waiting)) == 3  # two jobs, two processes, and one waiting for a third
    assert "before the claim" in stack.logs()

    # A stopped worker stops the process waiting for a job too.
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert not alive(waiting[-1])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_training_process_that_died_waiting_is_replaced_not_handed_a_job(
    database_url: str, engine: Engine, make_stack, tmp_path: Path
):
    stack = make_stack(database_url=database_url, **FAST_LEASES)
    worker = stack.worker()
    [doomed] = wait_for(lambda: training_processes(worker.pid), 60, message="a training process waiting for a job")
    os.kill(doomed, signal.SIGKILL)
    wait_for(lambda: "waiting for a job" in stack.logs(), 20, message="the worker to notice")
    assert f"(pid {doomed}) was killed by SIGKILL" in stack.logs()

    job = submit(engine, epochs=1)
    done = wait_finished(engine, job.id, stack)
    assert done.status == "succeeded", done.error
    [replacement] = wait_for(lambda: training_processes(worker.pid), 60, message="a new process waiting for a job")
    assert replacement != doomed


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_what_a_process_printed_before_its_job_is_marked_as_such_in_the_jobs_log(
    database_url: str, engine: Engine, make_stack, tmp_path: Path
):
    # Python reports every import's time on stderr: the waiting process prints a lot (more than a
    # pipe holds) before its job, and a few lines more during it.
    stack = make_stack(database_url=database_url, PYTHONPROFILEIMPORTTIME="1", **FAST_LEASES)
    worker = stack.worker()
    [waiting] = wait_for(lambda: training_processes(worker.pid), 60, message="a training process waiting for a job")
    job = submit(engine, epochs=1)
    done = wait_finished(engine, job.id, stack)
    assert done.status == "succeeded", done.error

    log = JobFiles(Settings(work_dir=tmp_path / "work", _env_file=None).scratch_dir(job.id)).log.read_text()
    header, marker, rest = log.partition(
        f"trainboard: output of the training process (pid {waiting}) from its start, before it took this job:\n"
    )
    assert marker, log[:2000]
    assert header.startswith("==== attempt 1 on ") and header.count("\n") == 1
    assert "import time:" in rest.split("trainboard: resnet18 on synthetic")[0]
    assert "trainboard: epoch 1/1" in rest


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_without_warm_processes_each_job_starts_its_own_at_its_claim(database_url: str, engine: Engine, make_stack):
    stack = make_stack(database_url=database_url, TRAINBOARD_WARM_CHILD="false", **FAST_LEASES)
    worker = stack.worker()
    for _ in range(2):
        job = submit(engine, epochs=1)
        done = wait_finished(engine, job.id, stack)
        assert done.status == "succeeded", done.error
        assert training_processes(worker.pid) == []
    assert stack.logs().count("in a process started for it") == 2


def test_a_worker_takes_wandb_settings_from_env_file_without_overriding_the_environment(tmp_path: Path, monkeypatch):
    from worker.cli import load_wandb_environment

    (tmp_path / ".env").write_text("WANDB_API_KEY=from-file\nWANDB_ENTITY=team-file\nTRAINBOARD_TOKEN=not-exported\n")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_ENTITY", "team-env")
    monkeypatch.delenv("TRAINBOARD_TOKEN", raising=False)
    load_wandb_environment(tmp_path / ".env")
    assert os.environ["WANDB_API_KEY"] == "from-file"
    assert os.environ["WANDB_ENTITY"] == "team-env"
    assert "TRAINBOARD_TOKEN" not in os.environ
