"""What checkpoints cost: the seconds one adds to an epoch, and how much later a resumed attempt
starts training than a fresh one.

(a) An epoch with a checkpoint (checkpoint_every=1) against one without (checkpoint_every=0):
    worker.train.run in this process, the tutorial config. Each round is one run with
    checkpoint_every=2, whose epochs alternate without and with a checkpoint, so that the two of
    a pair are measured seconds apart and the load of other processes on a shared machine mostly
    cancels out (separate runs minutes apart differ by more than a checkpoint costs). An epoch is
    the wall time from one epoch's end to the next: with a checkpoint, that holds the copy of the
    state to host memory, which stalls the training, and the file written by a thread while the
    epoch trains. The first epoch of every run is warm-up and has no interval before it. The
    added seconds are the median over all pairs of (with - without). The copy and the whole
    write are also timed on their own.
(b) A real `python -m worker.child` from its start to its first training step, from scratch and
    resumed from a checkpoint of the same job, alternating; medians, and the median of the
    differences within each repeat.

    .venv/bin/python -m bench.checkpoint_cost                       # tutorial config, this machine
    .venv/bin/python -m bench.checkpoint_cost --train-size 50000 --rounds 1 --pairs 2

Images are the synthetic set (CIFAR-10's shape; speed does not depend on content); W&B disabled.
The percentage is also given against a full CIFAR-10 training epoch at the measured rate.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from app.models import JobCreate
from app.presets import resolve
from app.settings import JobFiles
from bench.train_speed import describe, trainboard_run
from tests.support.child import SpawnedChild
from worker import train
from worker.data import ImageSet, synthetic
from worker.nets import build_model
from worker.protocol import ChildSpec, Event, Progress
from worker.reporter import RecordingReporter

CIFAR10_TRAIN_IMAGES = 50000


class EpochClock(RecordingReporter):
    """Records like the fake it extends, and when each epoch ended."""

    def __init__(self):
        super().__init__()
        self.epoch_ends: list[float] = []

    def report(self, event: Event) -> None:
        if isinstance(event, Progress) and event.metrics is not None:
            self.epoch_ends.append(time.perf_counter())
        super().report(event)


# ---------------------------------------------------------------------------------------------
# (a) Seconds a checkpoint adds to an epoch
# ---------------------------------------------------------------------------------------------


def epoch_cost(data: ImageSet, params: dict[str, Any], rounds: int, pairs: int, work_dir: Path) -> dict[str, Any]:
    without, checkpointed, added, rates = [], [], [], []
    for round_number in range(1, rounds + 1):
        run_params = {**params, "epochs": 2 * pairs + 1, "checkpoint_every": 2}
        clock = trainboard_run(data, run_params, work_dir, EpochClock())
        epochs = [later - earlier for earlier, later in zip(clock.epoch_ends, clock.epoch_ends[1:])]
        # Epoch 2 follows epoch 1, which has no checkpoint; epoch 3 follows epoch 2's; and so on.
        plain, with_checkpoint = epochs[0::2], epochs[1::2]
        without += plain
        checkpointed += with_checkpoint
        added += [later - earlier for earlier, later in zip(plain, with_checkpoint)]
        rates += [epoch["train_images_per_second"] for epoch in clock.epochs if epoch["epoch"] % 2 == 0]
        print(f"  round {round_number}: epochs without {fmt(plain)} s, with a checkpoint {fmt(with_checkpoint)} s", flush=True)
    return {
        "without": statistics.median(without),
        "with": statistics.median(checkpointed),
        "added": statistics.median(added),
        "pairs": added,
        "train_rate": statistics.median(rates),
    }


def write_cost(params: dict[str, Any], work_dir: Path, repeats: int = 5) -> dict[str, float]:
    """The copy to host memory (what stalls the training) and the whole write, the tutorial
    config's model and optimizer, medians of `repeats` after one of warm-up."""
    training = train.Training(
        build_model(params["model"], pretrained=False), JobCreate.model_validate(params), torch.device("cpu"), steps=1
    )
    inputs, labels = torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.int64)
    training.step(0, inputs, labels)  # the optimizer's state exists after a first step
    writer = train.CheckpointWriter(work_dir / "write-cost", RecordingReporter(), epochs=1, batches=1)
    copies, writes = [], []
    for epoch in range(repeats + 1):
        started = time.perf_counter()
        writer.write(training, epoch, None, {}, None, background=True)
        copied = time.perf_counter()
        writer.wait()
        copies.append(copied - started)
        writes.append(time.perf_counter() - started)
    size = (writer.folder / f"checkpoint-e{repeats}-b0.pt").stat().st_size
    return {"copy": statistics.median(copies[1:]), "write": statistics.median(writes[1:]), "megabytes": size / 1e6}


# ---------------------------------------------------------------------------------------------
# (b) Process start to the first training step, fresh and resumed
# ---------------------------------------------------------------------------------------------


def first_step_seconds(spec: ChildSpec, timeout: float = 300) -> float:
    """Spawn a child as a worker slot does; seconds from the spawn to its first train-loss report."""
    started = time.perf_counter()
    with SpawnedChild(spec) as child:
        for event in child.events(timeout):
            if isinstance(event, Progress) and any(kind == "train" for kind, _, _ in event.points):
                return time.perf_counter() - started
    raise SystemExit(f"the child reported no training step (exit code {child.process.returncode})")


def resume_cost(params: dict[str, Any], repeats: int, work_dir: Path) -> dict[str, float]:
    job = JobCreate.model_validate({**params, "epochs": 2, "log_interval": 1, "checkpoint_every": 1})
    source = JobFiles(work_dir / "resume-source")
    source.root.mkdir()
    recorder = RecordingReporter()
    train.run(job, name="bench", files=source, data_dir=work_dir, cifar_verify=False, reporter=recorder)
    checkpoint = recorder.checkpoints[0].path  # after epoch 1: a resumed attempt trains epoch 2
    fresh, resumed = [], []
    for attempt in range(1, repeats + 1):
        spec = ChildSpec(name="bench", params=job, job_dir=work_dir, data_dir=work_dir, cifar_verify=False, attempt=attempt)
        fresh.append(first_step_seconds(spec))
        resumed.append(first_step_seconds(spec.model_copy(update={"resume_from": checkpoint})))
        print(f"  repeat {attempt}: fresh {fresh[-1]:.2f} s, resumed {resumed[-1]:.2f} s", flush=True)
    return {
        "fresh": statistics.median(fresh),
        "resumed": statistics.median(resumed),
        "added": statistics.median(later - earlier for earlier, later in zip(fresh, resumed)),
    }


def fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{value:.2f}" for value in values) + "]"


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=1024, help="training images per epoch (default 1024)")
    parser.add_argument("--test-size", type=int, default=256, help="test images evaluated every epoch (default 256)")
    parser.add_argument("--pairs", type=int, default=4, help="pairs of epochs without and with a checkpoint a run (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of (a) (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="child starts of (b), each way (default 5)")
    args = parser.parse_args()

    params = resolve(
        pretrained=False, dataset="synthetic", use_cuda=False, wandb_mode="disabled", train_subset=None, test_subset=None,
    )
    data = synthetic(args.train_size, args.test_size)
    print(
        f"device: {describe(torch.device('cpu'))}; torch {torch.__version__}\n"
        f"tutorial config: model {params['model']}, batch {params['batch_size']}, {params['optimizer']}; "
        f"{args.train_size} training and {args.test_size} test images an epoch, {2 * args.pairs + 1} epochs a run",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="trainboard-bench-") as work:
        work_dir = Path(work)
        print("(a) epochs with a checkpoint against epochs without, alternating in each run", flush=True)
        cost = epoch_cost(data, params, args.rounds, args.pairs, work_dir)
        write = write_cost(params, work_dir)
        full_epoch = CIFAR10_TRAIN_IMAGES / cost["train_rate"]
        print(
            f"epoch without a checkpoint: {cost['without']:.2f} s, with: {cost['with']:.2f} s (medians)\n"
            f"added by a checkpoint:      {cost['added']:.2f} s (pairs {fmt(cost['pairs'])}), "
            f"{100 * cost['added'] / cost['without']:.1f}% of this epoch, "
            f"{100 * cost['added'] / full_epoch:.2f}% of a CIFAR-10 epoch ({full_epoch:.0f} s of training at "
            f"{cost['train_rate']:.0f} images/s)\n"
            f"a checkpoint of {write['megabytes']:.0f} MB: copy to host memory {write['copy']:.3f} s "
            f"(the training waits for this), whole write {write['write']:.3f} s",
            flush=True,
        )
        print("(b) child process start to its first training step", flush=True)
        resume = resume_cost({**params, "train_subset": args.train_size, "test_subset": args.test_size}, args.repeats, work_dir)
        print(
            f"fresh:   {resume['fresh']:.2f} s\n"
            f"resumed: {resume['resumed']:.2f} s (median of the repeats' differences {resume['added']:+.2f} s)",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
