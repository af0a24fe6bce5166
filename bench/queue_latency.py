"""Queue latency: how long a job waits between its submit and its claim by an idle worker.

A real `trainboard worker --gpus none` process waits for work; this script submits one job at a
time through app.queue (as POST /jobs does), reads the moment the worker claimed it
(started_at - created_at, both stamped on this host's clock), cancels it, lets the worker go
idle for a random while (so submits land at every phase of its polling), and repeats.
PostgreSQL workers are woken by LISTEN/NOTIFY; SQLite workers read PRAGMA data_version every
50 ms and claim when it changes. Both still poll the queue every TRAINBOARD_POLL_SECONDS as the
fallback; without the wake-ups that polling alone gives a p50 of about half the interval.
Warm-up samples (first connections, first claim) are left out.

    .venv/bin/python -m bench.queue_latency
    .venv/bin/python -m bench.queue_latency --postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres

Targets: p50 <= 0.5 s on SQLite, <= 0.1 s on PostgreSQL.
"""

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app import queue, reads
from app.db import make_engine, migrate
from app.models import JobCreate, as_utc
from app.settings import Settings
from bench.stats import percentile
from tests.support.databases import postgres_database

JOB = JobCreate(dataset="synthetic", pretrained=False, epochs=1, train_subset=16, test_subset=16, wandb_mode="disabled")


@contextmanager
def sqlite_database(workdir: Path) -> Iterator[str]:
    yield f"sqlite:///{workdir / 'bench.db'}"


@contextmanager
def idle_worker(database_url: str, workdir: Path, poll_seconds: float) -> Iterator[subprocess.Popen]:
    env = {
        **os.environ,
        "TRAINBOARD_DATABASE_URL": database_url,
        "TRAINBOARD_ARTIFACTS_DIR": str(workdir / "artifacts"),
        "TRAINBOARD_DATA_DIR": str(workdir / "data"),
        "TRAINBOARD_POLL_SECONDS": str(poll_seconds),
        # A short heartbeat so each cancelled job frees the slot quickly; claims do not depend on it.
        "TRAINBOARD_HEARTBEAT_SECONDS": "0.5",
        "TRAINBOARD_CANCEL_GRACE_SECONDS": "0",
        "TRAINBOARD_LOG_LEVEL": "WARNING",
    }
    log = open(workdir / "worker.log", "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--gpus", "none"], env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield worker
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        log.close()


def wait_until(condition, timeout: float, what: str, worker: subprocess.Popen, workdir: Path):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}; worker log:\n{(workdir / 'worker.log').read_text()[-3000:]}")
        time.sleep(0.005)
    return value


def measure(database_url: str, workdir: Path, samples: int, warmup: int, poll_seconds: float) -> list[float]:
    engine = make_engine(database_url)
    migrate(engine)
    latencies = []
    with idle_worker(database_url, workdir, poll_seconds) as worker:
        wait_until(lambda: reads.list_workers(engine), 120, "the worker to register", worker, workdir)
        for _ in range(warmup + samples):
            time.sleep(random.uniform(0.3, 0.3 + max(poll_seconds, 0.5)))
            job = queue.submit(engine, JOB, default_wandb_mode="disabled", max_attempts=1)
            claimed = wait_until(
                lambda: (current := queue.get_job(engine, job.id)).started_at and current, 60, "a claim", worker, workdir
            )
            latencies.append((as_utc(claimed.started_at) - as_utc(claimed.created_at)).total_seconds())
            queue.request_cancel(engine, job.id)
            wait_until(lambda: queue.get_job(engine, job.id).status == "cancelled", 60, "the cancel", worker, workdir)
    engine.dispose()
    return latencies[warmup:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL server to measure on as well (a database is made and dropped)")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--poll-seconds", type=float, default=Settings.model_fields["poll_seconds"].default,
                        help="the workers' TRAINBOARD_POLL_SECONDS (default: the setting's default)")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="trainboard-bench-") as tmp:
        databases = [("sqlite", "data_version", sqlite_database(Path(tmp)))]
        if args.postgres:
            databases.append(("postgresql", "LISTEN/NOTIFY", postgres_database(args.postgres, prefix="trainboard_bench")))
        for name, wakeup, database in databases:
            workdir = Path(tmp) / name
            workdir.mkdir()
            with database as url:
                latencies = measure(url, workdir, args.samples, args.warmup, args.poll_seconds)
            rows.append((name, wakeup, latencies))

    print(f"submit -> claimed by an idle worker, {args.samples} samples each after {args.warmup} warm-up")
    print(f"{'database':<12}{'wake-up':<20}{'p50':>9}{'p95':>9}{'max':>9}")
    for name, wakeup, latencies in rows:
        print(f"{name:<12}{wakeup:<20}{percentile(latencies, 0.5):>8.3f}s{percentile(latencies, 0.95):>8.3f}s{max(latencies):>8.3f}s")


if __name__ == "__main__":
    main()
