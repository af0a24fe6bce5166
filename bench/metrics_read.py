"""Metric reads at a million points: GET /jobs/{id}/metrics and the job's page, on SQLite and (with
--postgres) PostgreSQL.

Fills a fresh database with one running job of 1,000 epochs: a train-loss point every batch,
1,000 batches an epoch (1,000,000 rows), and 1,000 epoch points. Starts a real `trainboard serve`
and times sequential requests after a warm-up (median and p95); GET /healthz is the baseline of
the same run. "first" is each request's first time: for the job page that is the one full
summing of the million points, which later views reuse. The live fragment is timed the way a
browser polls it while the job runs: before each request the job reports 100 new points (as its
worker would, through app.queue), so each poll sums only those. The app's peak resident memory
is read after these sequential requests, and again after a few clients at once sent them all.

    .venv/bin/python -m bench.metrics_read
    .venv/bin/python -m bench.metrics_read --postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres

Targets: median <= 100 ms for GET /jobs/{id}/metrics?kind=train&max_points=2000; app peak
resident memory <= 150 MB after the sequential requests. The exit status is 1 when a target is
missed.
"""

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from sqlalchemy import insert, text

from app import queue
from app.db import make_engine, migrate, session_scope
from app.models import JobCreate, JobMetric
from bench.dashboard_load import HTML, epoch_values, memory_mb, percentile, running_app, time_requests
from bench.queue_latency import postgres_database

TARGET_MS = 100
TARGET_RSS_MB = 150
BATCHES = 1000
INSERT_ROWS = 50_000


def fill(database_url: str, epochs: int, seed: int = 0) -> tuple[int, queue.Claim]:
    """One running job with a train-loss point every batch; returns its id and its worker's claim."""
    rng = random.Random(seed)
    engine = make_engine(database_url)
    migrate(engine)
    job = queue.submit(engine, JobCreate(name="a-million-points", epochs=epochs, log_interval=1),
                       default_wandb_mode="disabled", max_attempts=1)
    claim = queue.claim(engine, "bench-worker", 3600)
    rows = []
    with session_scope(engine) as session:
        for epoch in range(1, epochs + 1):
            for batch in range(1, BATCHES + 1):
                step = (epoch - 1) * BATCHES + batch
                rows.append({"job_id": job.id, "attempt": 1, "kind": "train", "step": step,
                             "values": {"epoch": epoch, "batch": batch, "train_loss": 2.3 / (1 + step / 5000) + rng.uniform(0, 0.1)}})
            rows.append({"job_id": job.id, "attempt": 1, "kind": "epoch", "step": epoch, "values": epoch_values(epoch, epochs, rng)})
            if len(rows) >= INSERT_ROWS or epoch == epochs:
                session.execute(insert(JobMetric), rows)
                rows = []
        session.commit()
    assert queue.record_progress(engine, claim, progress={"epoch": epochs, "epochs": epochs, "batch": BATCHES, "batches": BATCHES})
    if engine.dialect.name == "postgresql":
        # What autovacuum does within a minute of a large insert: without statistics the planner
        # takes the job's million rows for a handful and sorts them instead of walking the index.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("ANALYZE job_metrics"))
    engine.dispose()
    return job.id, claim


def time_live_refreshes(client: httpx.Client, database_url: str, claim: queue.Claim, count: int, first_step: int) -> list[float]:
    """The live fragment's time while the job runs: 100 new points reported before each request."""
    engine = make_engine(database_url)
    timings = []
    step = first_step
    for _ in range(count):
        points = [("train", step + offset, {"train_loss": 0.5}) for offset in range(1, 101)]
        step += 100
        assert queue.record_progress(engine, claim, progress={"epoch": 0, "batch": step}, points=points)
        started = time.perf_counter()
        client.get(f"/jobs/{claim.job_id}/live", headers=HTML).raise_for_status()
        timings.append((time.perf_counter() - started) * 1000)
    engine.dispose()
    return timings


def measure(database_url: str, workdir: Path, args) -> tuple[list[tuple], tuple[float, float, float]]:
    """The timings, and the app's resident memory: idle, peak after the sequential requests, peak
    after several clients at once."""
    started = time.perf_counter()
    job_id, claim = fill(database_url, args.epochs)
    print(f"  filled {args.epochs * (BATCHES + 1):,} metric rows in {time.perf_counter() - started:.0f}s")
    metrics = f"/jobs/{job_id}/metrics"
    requests = [
        ("GET /healthz (baseline)", "/healthz", {}, None),
        ("metrics?kind=train&max_points=2000", f"{metrics}?kind=train&max_points=2000", {}, TARGET_MS),
        ("metrics?max_points=2000 (both kinds)", f"{metrics}?max_points=2000", {}, None),
        ("metrics?kind=train&after_step=500000&limit=1000 (a page)", f"{metrics}?kind=train&after_step=500000&limit=1000", {}, None),
        ("metrics (no parameters: the first 10,000)", metrics, {}, None),
        ("the job's page (HTML)", f"/jobs/{job_id}", HTML, None),
    ]
    results = []
    with running_app(database_url, workdir) as (server, base):
        idle_rss, _ = memory_mb(server.pid)
        with httpx.Client(base_url=base, timeout=300) as client:
            for label, path, headers, target in requests:
                first, timings = time_requests(client, path, headers, args.requests, args.warmup)
                results.append((label, first, statistics.median(timings), percentile(timings, 0.95), target))
            live = time_live_refreshes(client, database_url, claim, args.requests, args.epochs * BATCHES)
            results.append(("the job's live fragment, 100 new points each time", live[0], statistics.median(live[1:]),
                            percentile(live[1:], 0.95), None))
        _, sequential_peak = memory_mb(server.pid)

        def reader() -> None:
            with httpx.Client(base_url=base, timeout=300) as client:
                for _ in range(3):
                    for _, path, headers, _ in requests:
                        client.get(path, headers=headers).raise_for_status()

        readers = [threading.Thread(target=reader) for _ in range(args.clients)]
        for thread in readers:
            thread.start()
        for thread in readers:
            thread.join()
        _, concurrent_peak = memory_mb(server.pid)
    return results, (idle_rss, sequential_peak, concurrent_peak)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL server to measure on as well (a database is made and dropped)")
    parser.add_argument("--epochs", type=int, default=1000, help=f"epochs of {BATCHES} train-loss points each")
    parser.add_argument("--requests", type=int, default=30, help="timed requests each")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients in the memory phase")
    args = parser.parse_args()

    missed = []
    with tempfile.TemporaryDirectory(prefix="trainboard-bench-") as tmp, ExitStack() as databases:
        urls = [("SQLite", f"sqlite:///{Path(tmp) / 'bench.db'}")]
        if args.postgres:
            urls.append(("PostgreSQL", databases.enter_context(postgres_database(args.postgres))))
        for name, url in urls:
            print(f"{name}:")
            workdir = Path(tmp) / name
            workdir.mkdir()
            results, (idle_rss, peak, concurrent_peak) = measure(url, workdir, args)
            print(f"\n{name}, {args.epochs * BATCHES:,} train-loss points, {args.requests} sequential requests each after {args.warmup} warm-up\n")
            print("| request | first ms | median ms | p95 ms | target |")
            print("|---|---:|---:|---:|---|")
            for label, first, median, p95, target in results:
                verdict = "" if target is None else f"median <= {target} ms: {'met' if median <= target else 'MISSED'}"
                if target is not None and median > target:
                    missed.append(f"{name} {label}")
                print(f"| {label} | {first:.1f} | {median:.1f} | {p95:.1f} | {verdict} |")
            print(f"\napp resident memory: {idle_rss:.0f} MB idle, peak {peak:.0f} MB after these requests "
                  f"(target <= {TARGET_RSS_MB} MB: {'met' if peak <= TARGET_RSS_MB else 'MISSED'}), "
                  f"peak {concurrent_peak:.0f} MB after {args.clients} clients at once sent them all three times\n")
            if peak > TARGET_RSS_MB:
                missed.append(f"{name} resident memory")
    if missed:
        print("missed:", ", ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
