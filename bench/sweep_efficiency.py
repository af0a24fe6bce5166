"""Sweep efficiency: the epochs hyperband early termination saves in a random search, and what it
costs in the best result.

The same random search (N trials, lr log-uniform from 1e-4 to 1: too small learns little in the
budget, too large does not converge) with the same seed, so both draw the same lrs in the same
order, runs twice through a real `trainboard serve` and one `trainboard worker --gpus none` (one
CPU slot, one trial at a time), each time on a fresh SQLite file: without early termination, then
with W&B's `early_terminate: {type: hyperband, min_iter: 1, eta: 3}` (or --min-iter, --eta).

The data set is made here in the CIFAR-10 python format: ten classes of coarse colour patterns,
shifted by up to 4 pixels, at a random contrast on a random background, with noise.
`dataset: synthetic` is too easy for this: every lr from 0.01 to 0.1 reaches 100% within two
epochs, so no search could miss its best. Its decoded cache is built before the first sweep.

Reported per search: epochs trained (all trials together), wall time from POST /sweeps to the
sweep's end (each trial's training process start included), and the sweep's best test accuracy
(a pruned trial's is that of the epoch it stopped at).

    .venv/bin/python -m bench.sweep_efficiency
    .venv/bin/python -m bench.sweep_efficiency --trials 12 --epochs 9 --train-size 512 --test-size 500 --seed 0
    .venv/bin/python -m bench.sweep_efficiency --min-iter 3    # hyperband's first judgement after epoch 3

Target: hyperband trains at least 40% fewer epochs, with a best test accuracy within 1 percentage
point of the search without it. The exit status is 1 when the target is missed.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app import reads
from app.client import Client, best_trial, follow_sweep
from app.db import make_engine, migrate
from app.formatting import duration
from bench.dashboard_load import running_app
from tests.support.cifar import write_batches
from worker.data import cifar10

TARGET_SAVED = 0.40
TARGET_GAP_POINTS = 1.0


# ---------------------------------------------------------------------------------------------
# The data set: where lr matters
# ---------------------------------------------------------------------------------------------


def patterned_images(count: int, rng: np.random.Generator, templates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image its class's pattern, shifted, at a random contrast on a random colour, plus noise."""
    labels = rng.integers(0, len(templates), size=count)
    shifts = rng.integers(-4, 5, size=(count, 2))
    patterns = np.stack([np.roll(templates[label], tuple(shift), axis=(1, 2)) for label, shift in zip(labels, shifts)])
    contrast = rng.uniform(0.25, 0.75, size=(count, 1, 1, 1))
    background = rng.uniform(0.25, 0.75, size=(count, 3, 1, 1))
    images = background + contrast * (patterns - 0.5) + rng.normal(0, 0.2, size=(count, 3, 32, 32))
    return (images.clip(0, 1) * 255).round().astype(np.uint8), labels


def write_data_set(root: Path, train_size: int, test_size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    # A 4x4 grid of random colours per class, each cell 8x8 pixels.
    templates = rng.random((10, 3, 4, 4)).repeat(8, axis=2).repeat(8, axis=3)
    return write_batches(root, patterned_images(train_size, rng, templates), patterned_images(test_size, rng, templates))


# ---------------------------------------------------------------------------------------------
# One search on real processes
# ---------------------------------------------------------------------------------------------


def sweep_config(args, name: str, early_terminate: str) -> str:
    """The search as a W&B user writes it; every trial's fixed fields as constants."""
    return f"""\
name: {name}
method: random
metric:
  name: Test Accuracy
  goal: maximize
run_cap: {args.trials}
parallel: 1
seed: {args.seed}
parameters:
  lr:
    distribution: log_uniform_values
    min: 0.0001
    max: 1.0
  epochs:
    value: {args.epochs}
  batch_size:
    value: 32
  train_subset:
    value: {args.train_size}
  test_subset:
    value: {args.test_size}
  dataset:
    value: cifar10
  pretrained:
    value: false
  checkpoint_every:
    value: 0
  wandb_mode:
    value: disabled
{early_terminate}"""


@contextmanager
def worker_process(database_url: str, data_dir: Path, workdir: Path) -> Iterator[subprocess.Popen]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRAINBOARD_")}
    env.update(
        TRAINBOARD_DATABASE_URL=database_url, TRAINBOARD_DATA_DIR=str(data_dir), TRAINBOARD_CIFAR_VERIFY="false",
        TRAINBOARD_ARTIFACTS_DIR=str(workdir / "artifacts"), TRAINBOARD_WORK_DIR=str(workdir / "work"),
        TRAINBOARD_WANDB_MODE="disabled", TRAINBOARD_POLL_SECONDS="0.2", TRAINBOARD_LOG_LEVEL="WARNING",
        WANDB_SILENT="true",
    )
    with open(workdir / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--gpus", "none"], env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            yield worker
        finally:
            worker.terminate()
            worker.wait(timeout=60)


def wait_for_worker(database_url: str, worker: subprocess.Popen, workdir: Path) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    deadline = time.monotonic() + 120
    while not reads.list_workers(engine):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the worker did not register:\n{(workdir / 'worker.log').read_text()[-3000:]}")
        time.sleep(0.2)
    engine.dispose()


@dataclass(frozen=True)
class Search:
    label: str
    seconds: float
    sweep: dict[str, Any]  # GET /sweeps/{id} once it ended

    @property
    def trials(self) -> list[dict[str, Any]]:
        return sorted(self.sweep["jobs"], key=lambda trial: trial["trial_number"])

    @property
    def epochs(self) -> int:
        return sum(trial["epochs_trained"] for trial in self.trials)

    @property
    def best(self) -> float | None:
        """The sweep's best test accuracy: a finished trial's final one, or a pruned trial's last."""
        return self.sweep["best_value"]


def hyperband(min_iter: int, eta: int) -> str:
    return f"early_terminate:\n  type: hyperband\n  min_iter: {min_iter}\n  eta: {eta}\n"


def run_search(args, label: str, early_terminate: str, data_dir: Path, workdir: Path) -> Search:
    """One search, on its own database, app and worker; `workdir`'s name is the sweep's."""
    workdir.mkdir()
    database_url = f"sqlite:///{workdir / 'trainboard.db'}"
    with running_app(database_url, workdir) as (_server, base), worker_process(database_url, data_dir, workdir) as worker:
        wait_for_worker(database_url, worker, workdir)
        client = Client(base)
        try:
            started = time.monotonic()
            sweep = client.create_sweep(sweep_config(args, f"lr-{workdir.name}", early_terminate), yaml=True)
            print(f"{label}: {base}/sweeps/{sweep['id']}", flush=True)
            ended = follow_sweep(client, sweep["id"], sys.stdout)
            seconds = time.monotonic() - started
        finally:
            client.close()
    return Search(label, seconds, ended)


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def accuracy(value: float | None) -> str:
    return f"{value:.2f}%" if value is not None else "none"


def found_by(sweep: dict[str, Any]) -> str:
    trial = best_trial(sweep)
    return f"trial {trial['trial_number']}, {trial['status']}, lr {trial['params']['lr']:.3g}" if trial else ""


def report(args, without: Search, pruning: Search) -> bool:
    """Print the two searches side by side and the target's verdict; whether it is met."""
    print(
        f"\nrandom search: {args.trials} trials, lr log-uniform 1e-4..1, {args.epochs} epochs, batch 32, seed {args.seed}; "
        f"{args.train_size} train / {args.test_size} test images; resnet18 from scratch; one CPU worker slot"
    )
    print(f"{'trial':<7}{'lr':>10}{'without: acc.':>16}{'hyperband: status':>22}{'epochs':>8}{'acc.':>9}")
    for plain, judged in zip(without.trials, pruning.trials):
        print(
            f"{plain['trial_number']:<7}{plain['params']['lr']:>10.3g}{accuracy(plain['value']):>16}"
            f"{judged['status']:>22}{judged['epochs_trained']:>8}{accuracy(judged['value']):>9}"
        )
    if [trial["params"] for trial in without.trials] != [trial["params"] for trial in pruning.trials]:
        print("warning: the two searches drew different parameters")
    print(f"\n{'search':<34}{'status':>10}{'epochs':>8}{'wall time':>11}{'best test acc.':>16}")
    for search in (without, pruning):
        print(
            f"{search.label:<34}{search.sweep['status']:>10}{search.epochs:>8}{duration(search.seconds):>11}"
            f"{accuracy(search.best):>16}  {found_by(search.sweep)}"
        )
    saved = 1 - pruning.epochs / without.epochs
    wall_saved = 1 - pruning.seconds / without.seconds
    print(f"saved by hyperband: {saved:.1%} of the epochs, {wall_saved:.1%} of the wall time")
    if without.best is None or pruning.best is None:
        print("target missed: a search has no trial with a test accuracy")
        return False
    gap = without.best - pruning.best
    print(f"hyperband's best test accuracy is {abs(gap):.2f} points {'below' if gap > 0 else 'above'} the other search's")
    met = saved >= TARGET_SAVED and gap <= TARGET_GAP_POINTS
    verdict = "target met" if met else "target missed"
    print(f"{verdict}: at least {TARGET_SAVED:.0%} of the epochs saved (got {saved:.1%}), best within {TARGET_GAP_POINTS:g} point (got {gap:.2f})")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12, help="run_cap of each search (default 12)")
    parser.add_argument("--epochs", type=int, default=9, help="epochs of a trial trained to the end (default 9)")
    parser.add_argument("--train-size", type=int, default=512, help="training images (default 512)")
    parser.add_argument("--test-size", type=int, default=500, help="test images (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="the sweeps' seed: which lrs they draw (default 0)")
    parser.add_argument("--min-iter", type=int, default=1, help="hyperband's min_iter: the first epoch it judges (default 1)")
    parser.add_argument("--eta", type=int, default=3, help="hyperband's eta (default 3)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="trainboard-bench-") as tmp:
        data_dir = write_data_set(Path(tmp) / "data", args.train_size, args.test_size)
        cifar10(data_dir, verify=False)  # the decoded cache, so that neither search pays for it
        without = run_search(args, "without early termination", "", data_dir, Path(tmp) / "without")
        label = f"hyperband (min_iter {args.min_iter}, eta {args.eta})"
        pruned = run_search(args, label, hyperband(args.min_iter, args.eta), data_dir, Path(tmp) / "hyperband")
    return 0 if report(args, without, pruned) else 1


if __name__ == "__main__":
    sys.exit(main())
