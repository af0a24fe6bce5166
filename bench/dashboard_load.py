"""Dashboard speed with a full database: 10,000 jobs in SQLite, one of them with 500 epochs.

Fills a fresh SQLite file through the app's own models (jobs of every status, tags, metrics;
5 epoch points per finished job; one job with 500 epochs and a train-loss point every 10 of 782
batches, as the tutorial's config logs on CIFAR-10: 40,000 metric rows), starts a real
`trainboard serve`, and times sequential requests to each page after a warm-up. GET /healthz,
which touches the database but renders nothing, is the baseline of the same run. "first" is
each page's first request: for the 500-epoch job that is the uncached averaging of its 39,500
train-loss points, which later views (and the live poll) reuse, summing only points reported since.
Then several clients at once, to see the app's resident memory under load.

    .venv/bin/python -m bench.dashboard_load
    .venv/bin/python -m bench.dashboard_load --jobs 10000 --epochs 500 --requests 200

Targets: p95 <= 100 ms for GET /, GET /jobs?limit=50 and the 500-epoch job page; RSS <= 150 MB.
The exit status is 1 when a target is missed.
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import insert

from app.db import make_engine, migrate, session_scope
from app.models import Job, JobCreate, JobMetric, utcnow
from bench.stats import percentile
from tests.support.network import free_port

HTML = {"Accept": "text/html,application/xhtml+xml"}
TAGS = ("baseline", "sweep-lr", "sweep-bs", "ablation", "nightly", "cifar", "resnet18_cifar", "smoke")
TARGET_MS = 100
TARGET_RSS_MB = 150


# ---------------------------------------------------------------------------------------------
# The database
# ---------------------------------------------------------------------------------------------


def epoch_values(epoch: int, epochs: int, rng: random.Random) -> dict:
    progress = epoch / epochs
    return {
        "epoch": epoch,
        "test_accuracy": 40 + 50 * progress + rng.uniform(-1, 1),
        "test_loss": 1.6 - 1.3 * progress + rng.uniform(-0.02, 0.02),
        "train_loss": 1.5 - 1.4 * progress + rng.uniform(-0.02, 0.02),
        "train_images_per_second": rng.uniform(9000, 11000),
        "epoch_seconds": rng.uniform(5.5, 6.5),
    }


def fill(database_url: str, job_count: int, long_epochs: int, seed: int = 0) -> int:
    """Returns the id of the job with `long_epochs` epochs of metrics."""
    rng = random.Random(seed)
    engine = make_engine(database_url)
    migrate(engine)
    start = utcnow() - timedelta(days=90)
    jobs = []
    for index in range(job_count):
        created = start + timedelta(days=90) * index / job_count
        status = rng.choices(("succeeded", "failed", "cancelled", "running", "queued"), (90, 6, 3, 0.6, 0.4))[0]
        if index == job_count - 1:
            status = "running"
        epochs = rng.choice((2, 5, 5, 10, 20))
        params = JobCreate(
            name=f"{rng.choice(('baseline', 'lr-sweep', 'bs-sweep', 'ablation'))}-{index}",
            lr=rng.choice((0.01, 0.02, 0.05, 0.1)), batch_size=rng.choice((64, 128, 256)), epochs=epochs,
            tags=rng.sample(TAGS, rng.randint(0, 3)),
        ).model_dump(mode="json")
        finished = status in ("succeeded", "failed", "cancelled")
        done = epochs if status == "succeeded" else rng.randint(0, epochs - 1)
        last = epoch_values(done, epochs, rng) if done else {}
        jobs.append(Job(
            name=params["name"], status=status, params=params,
            progress={"epoch": done, "epochs": epochs, "batch": rng.randint(1, 782), "batches": 782} if status != "queued" else {},
            metrics=last,
            artifacts=[{"name": "model.pth", "size": 44_790_000}] if status == "succeeded" else [],
            wandb_mode="offline", wandb_dir=f"/var/artifacts/jobs/{index + 1}/wandb/offline-run-{index}",
            error="RuntimeError: CUDA out of memory" if status == "failed" else None,
            attempts=0 if status == "queued" else 1, worker_id=None if status == "queued" else "bench-worker",
            created_at=created,
            started_at=created + timedelta(seconds=5) if status != "queued" else None,
            finished_at=created + timedelta(seconds=5 + 6 * max(done, 1)) if finished else None,
        ))
    long_job_id = job_count // 2
    with session_scope(engine) as session:
        session.add_all(jobs)
        session.flush()
        long_job = session.get(Job, long_job_id)
        long_job.status, long_job.attempts = "succeeded", 1
        long_job.params = {**long_job.params, "epochs": long_epochs, "name": "five-hundred-epochs"}
        long_job.name = "five-hundred-epochs"
        long_job.progress = {"epoch": long_epochs, "epochs": long_epochs, "batch": 782, "batches": 782}
        metric_rows = []
        for job in jobs:
            if job.status == "succeeded" and job.id != long_job_id:
                for epoch in range(1, job.params["epochs"] + 1):
                    metric_rows.append({"job_id": job.id, "attempt": 1, "kind": "epoch", "step": epoch,
                                        "values": epoch_values(epoch, job.params["epochs"], rng)})
        for epoch in range(1, long_epochs + 1):
            for batch in range(10, 783, 10):
                step = (epoch - 1) * 782 + batch
                metric_rows.append({"job_id": long_job_id, "attempt": 1, "kind": "train", "step": step,
                                    "values": {"epoch": epoch, "batch": batch, "train_loss": 2.3 / (1 + step / 5000)}})
            values = epoch_values(epoch, long_epochs, rng)
            metric_rows.append({"job_id": long_job_id, "attempt": 1, "kind": "epoch", "step": epoch, "values": values})
        long_job.metrics = values
        session.execute(insert(JobMetric), metric_rows)
        session.commit()
    engine.dispose()
    print(f"filled {job_count} jobs and {len(metric_rows)} metric rows; job {long_job_id} has {long_epochs} epochs")
    return long_job_id


# ---------------------------------------------------------------------------------------------
# The server and the measurements
# ---------------------------------------------------------------------------------------------


@contextmanager
def running_app(database_url: str, workdir: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """A real `trainboard serve` on the database, once it answers /healthz: (process, base URL)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRAINBOARD_")}
    env.update(TRAINBOARD_DATABASE_URL=database_url, TRAINBOARD_ARTIFACTS_DIR=str(workdir / "artifacts"),
               TRAINBOARD_DATA_DIR=str(workdir / "data"), TRAINBOARD_LOG_LEVEL="WARNING")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(workdir / "serve.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
                                  env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"the app did not start:\n{(workdir / 'serve.log').read_text()}")
                time.sleep(0.1)
            yield server, base
        finally:
            server.terminate()
            server.wait(timeout=30)


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) of a process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def time_requests(client: httpx.Client, path: str, headers: dict, count: int, warmup: int) -> tuple[float, list[float]]:
    """The first request's time (cold: nothing cached), then `count` timings after the warm-up."""
    started = time.perf_counter()
    client.get(path, headers=headers).raise_for_status()
    first = (time.perf_counter() - started) * 1000
    for _ in range(warmup):
        client.get(path, headers=headers).raise_for_status()
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(path, headers=headers)
        timings.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return first, timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=500, help="epochs of metrics on the one long job")
    parser.add_argument("--requests", type=int, default=100, help="timed requests per page")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients in the memory phase")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="trainboard-bench-"))
    database_url = f"sqlite:///{workdir / 'bench.db'}"
    started = time.perf_counter()
    long_job = fill(database_url, args.jobs, args.epochs)
    print(f"fill took {time.perf_counter() - started:.1f}s; database {Path(workdir / 'bench.db').stat().st_size / 1e6:.1f} MB")

    with running_app(database_url, workdir) as (server, base):
        with httpx.Client(base_url=base, timeout=30) as client:
            idle_rss, _ = memory_mb(server.pid)

            some_jobs = ",".join(str(job_id) for job_id in [long_job, *range(args.jobs - 8, args.jobs + 1)])
            pages = [
                ("GET /healthz (baseline)", "/healthz", {}, None),
                ("GET / (list, HTML)", "/", HTML, TARGET_MS),
                ("GET /live (the list's live fragment)", "/live", HTML, None),
                ("GET /jobs?limit=50 (JSON)", "/jobs?limit=50", {}, TARGET_MS),
                (f"GET /jobs/{long_job} ({args.epochs} epochs, HTML)", f"/jobs/{long_job}", HTML, TARGET_MS),
                (f"GET /jobs/{long_job}/live (fragment)", f"/jobs/{long_job}/live", HTML, None),
                ("GET /?status=failed", "/?status=failed", HTML, None),
                ("GET /?q=sweep (search)", "/?q=sweep", HTML, None),
                (f"GET /?offset={max(args.jobs - 50, 0)} (last page)", f"/?offset={max(args.jobs - 50, 0)}", HTML, None),
                ("GET /compare (10 jobs)", f"/compare?ids={some_jobs}", HTML, None),
            ]
            results = []
            for label, path, headers, target in pages:
                first, timings = time_requests(client, path, headers, args.requests, args.warmup)
                results.append((label, first, statistics.median(timings), percentile(timings, 0.95), max(timings), target))

        # Several viewers at once: every page, from several threads, for the memory figure.
        errors: list[str] = []

        def viewer() -> None:
            with httpx.Client(base_url=base, timeout=60) as client:
                for _ in range(3):
                    for _, path, headers, _ in pages:
                        response = client.get(path, headers=headers)
                        if response.status_code != 200:
                            errors.append(f"{path}: {response.status_code}")

        threads = [threading.Thread(target=viewer) for _ in range(args.clients)]
        load_started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        load_seconds = time.perf_counter() - load_started
        rss, peak = memory_mb(server.pid)

    print(f"\n{args.jobs} jobs, SQLite, {args.requests} sequential requests per page after {args.warmup} warm-up\n")
    print("| request | first ms | p50 ms | p95 ms | max ms | target |")
    print("|---|---:|---:|---:|---:|---|")
    missed = []
    for label, first, p50, p95, worst, target in results:
        verdict = "" if target is None else ("p95 <= %d ms: met" % target if p95 <= target else "p95 <= %d ms: MISSED" % target)
        if target is not None and p95 > target:
            missed.append(label)
        print(f"| {label} | {first:.1f} | {p50:.1f} | {p95:.1f} | {worst:.1f} | {verdict} |")
    requests_made = args.clients * 3 * len(pages)
    print(f"\n{args.clients} clients at once: {requests_made} requests in {load_seconds:.1f}s, {len(errors)} errors")
    print(f"app resident memory: {idle_rss:.0f} MB idle, {rss:.0f} MB after the load, peak {peak:.0f} MB "
          f"(target <= {TARGET_RSS_MB} MB: {'met' if peak <= TARGET_RSS_MB else 'MISSED'})")
    if peak > TARGET_RSS_MB:
        missed.append("resident memory")
    if errors:
        print("errors:", *errors[:10], sep="\n  ")
    if missed or errors:
        print("\nmissed:", ", ".join(missed) or "errors under load")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
