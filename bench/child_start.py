"""Claim to first training step: a training process started at the claim (cold,
TRAINBOARD_WARM_CHILD=false) against one its slot started ahead, its imports done (warm, the default).

Two real `trainboard worker --gpus none` processes wait, idle, each on a SQLite database of its
own, one with warm processes and one without. Each round submits the same job to each in turn
(alternating which goes first, so that the load of other processes on a shared machine falls on
both alike), waits for it to finish, and reads from the worker's log the seconds from the claim to
the job's first trained batch (its first train-loss report: log_interval 1), as the slot measured
them, and from the database the seconds from the claim to the job's end (which holds what the warm
worker's next process, importing meanwhile, costs the job). After each job the script waits
`--settle` seconds, long enough for the warm worker's next process to finish its imports, as it
does while a sweep's previous trial trains. The first round is warm-up (first claims, cold file
caches) and is left out; medians of the rest. Each round's line ends with the 1-minute load
average: other processes on a 2-core machine slow every start, the warm one included.

    .venv/bin/python -m bench.child_start
    .venv/bin/python -m bench.child_start --rounds 12 --settle 15
    .venv/bin/python -m bench.child_start --torch-threads 1   # the training leaves a core idle

The job: synthetic data (2 epochs of 1024 images), W&B offline, the tutorial's model and batch
size, on the CPU. Target: warm <= 1.5 s on this project's 2-core CPU.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from sqlalchemy import Engine

from app import queue, reads
from app.db import make_engine, migrate
from app.models import JobCreate, as_utc
from bench.train_speed import describe

JOB = JobCreate(
    dataset="synthetic", pretrained=False, use_cuda=False, epochs=2, train_subset=1024, test_subset=256, log_interval=1,
    wandb_mode="offline",
)
FIRST_BATCHES = re.compile(r"job (\d+): first batches trained ([\d.]+) s after its claim, in a process started (.*)")


@dataclass
class Start:
    first_step: float  # seconds from the claim to the first trained batch
    process: str  # when its process started, as the worker's log says
    finished: float  # seconds from the claim to the end of the job


@dataclass
class Worker:
    """An idle worker on its own database, and what its log says about each job's start."""

    name: str
    process: subprocess.Popen
    engine: Engine
    log_path: Path

    def start_of(self, job_id: int) -> tuple[float, str]:
        """Seconds from the claim to the first trained batch, and when its process started."""
        for line in self.log_path.read_text().splitlines():
            try:
                message = json.loads(line)["message"]
            except (ValueError, KeyError):
                continue
            if (match := FIRST_BATCHES.match(message)) and int(match[1]) == job_id:
                return float(match[2]), match[3]
        raise SystemExit(f"the {self.name} worker logged no first batches for job {job_id}:\n{self.log_path.read_text()[-3000:]}")

    def run_job(self, timeout: float = 300) -> Start:
        job = queue.submit(self.engine, JOB, default_wandb_mode="offline", max_attempts=1)
        deadline = time.monotonic() + timeout
        while (current := queue.get_job(self.engine, job.id)).status in ("queued", "running"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the {self.name} worker did not finish job {job.id}:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        if current.status != "succeeded":
            raise SystemExit(f"job {job.id} on the {self.name} worker {current.status}: {current.error}")
        first_step, process = self.start_of(job.id)
        return Start(first_step, process, (as_utc(current.finished_at) - as_utc(current.started_at)).total_seconds())


@contextmanager
def idle_worker(name: str, workdir: Path, warm: bool, torch_threads: int | None) -> Iterator[Worker]:
    workdir.mkdir()
    database_url = f"sqlite:///{workdir / 'bench.db'}"
    engine = make_engine(database_url)
    migrate(engine)
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("TRAINBOARD_", "WANDB_"))},
        "TRAINBOARD_DATABASE_URL": database_url,
        "TRAINBOARD_ARTIFACTS_DIR": str(workdir / "artifacts"),
        "TRAINBOARD_DATA_DIR": str(workdir / "data"),
        "TRAINBOARD_WORK_DIR": str(workdir / "work"),
        "TRAINBOARD_WANDB_MODE": "offline",
        "TRAINBOARD_WARM_CHILD": str(warm).lower(),
        "TRAINBOARD_LOG_FORMAT": "json",
        "WANDB_SILENT": "true",
    }
    if torch_threads:
        env["OMP_NUM_THREADS"] = str(torch_threads)
    log_path = workdir / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--gpus", "none"], env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while not reads.list_workers(engine):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the {name} worker did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield Worker(name, process, engine, log_path)
    finally:
        process.terminate()
        process.wait(timeout=60)
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds after the warm-up one, a job on each worker each (default 8)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait after each job (default 10)")
    parser.add_argument("--torch-threads", type=int, help="the jobs' OMP_NUM_THREADS (default: torch's, one per core)")
    args = parser.parse_args()

    threads = f"; the jobs' torch threads: {args.torch_threads}" if args.torch_threads else ""
    print(f"device: {describe(torch.device('cpu'))}; torch {torch.__version__}{threads}", flush=True)
    starts: dict[str, list[Start]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="trainboard-bench-") as tmp, ExitStack() as workers:
        cold = workers.enter_context(idle_worker("cold", Path(tmp) / "cold", warm=False, torch_threads=args.torch_threads))
        warm = workers.enter_context(idle_worker("warm", Path(tmp) / "warm", warm=True, torch_threads=args.torch_threads))
        time.sleep(args.settle)  # the warm worker's first process imports meanwhile
        for round_number in range(args.rounds + 1):
            line = []
            for worker in (cold, warm) if round_number % 2 else (warm, cold):
                start = worker.run_job()
                line.append(f"{worker.name} {start.first_step:.2f} s, finished {start.finished:.2f} s (process started {start.process})")
                if round_number > 0:
                    starts[worker.name].append(start)
                time.sleep(args.settle)
            load = os.getloadavg()[0]
            print(f"  round {round_number}{' (warm-up)' if round_number == 0 else ''}: {'; '.join(line)}; load {load:.1f}", flush=True)

    medians = {
        name: (statistics.median(s.first_step for s in runs), statistics.median(s.finished for s in runs))
        for name, runs in starts.items()
    }
    (cold_step, cold_end), (warm_step, warm_end) = medians["cold"], medians["warm"]
    print(
        f"medians of {args.rounds} rounds        claim to first step   claim to finished\n"
        f"cold (TRAINBOARD_WARM_CHILD=false) {cold_step:>12.2f} s {cold_end:>18.2f} s\n"
        f"warm (the default)                 {warm_step:>12.2f} s {warm_end:>18.2f} s\n"
        f"cold / warm                        {cold_step / warm_step:>12.1f}x {cold_end / warm_end:>18.1f}x",
        flush=True,
    )


if __name__ == "__main__":
    main()
