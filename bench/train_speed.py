"""Training speed: the tutorial's loop as written against trainboard's, on one device, in one run.

(a) tutorial: the loop of the thorough-pytorch tutorial (7.4) as written: a CIFAR10-style Dataset
    that makes a PIL image per sample, ToTensor + Normalize per image, a DataLoader with the
    tutorial's kwargs ({'num_workers': 1, 'pin_memory': True} on CUDA, none on CPU), fp32, SGD with
    the job's lr and momentum, a fresh CrossEntropyLoss per batch.
(b) trainboard: worker.train.run on the same images, model and batch size, with the preset's
    recipe (tutorial by default) and any --set overrides, W&B disabled.

Both train the same epochs in alternating rounds so load on a shared machine hits them alike; the
first epoch of every run is warm-up (cuDNN/oneDNN plans, compilation, DataLoader start) and left
out. images/s is the median of the other epochs; the ratio is the median of the rounds' ratios.
Only training is timed: the tutorial's evaluation is skipped here (its metrics are compared in
tests/test_training.py).

--wandb times (b) with W&B offline and wandb.watch as the job sets it against W&B disabled.
--schedule runs (b) once for the preset's full schedule and reports its wall time.

    .venv/bin/python -m bench.train_speed                       # tutorial config, this machine
    .venv/bin/python -m bench.train_speed --wandb               # plus the W&B overhead
    python -m bench.train_speed --device cuda --set compile=reduce-overhead
    python -m bench.train_speed --device cuda --preset fast94 --schedule --no-compare

Images are the synthetic set (CIFAR-10's shape; speed does not depend on content) unless
--data cifar10 and --data-dir point at CIFAR-10. Models start from random weights: no download.
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from app.client import ClientError, parse_assignments
from app.models import JobCreate
from app.presets import PRESETS, resolve
from app.settings import JobFiles
from tests.support.tutorial import tutorial_loader, tutorial_loop
from worker import train
from worker.data import ImageSet, cifar10, synthetic
from worker.reporter import RecordingReporter

# ---------------------------------------------------------------------------------------------
# (a) The tutorial's loop
# ---------------------------------------------------------------------------------------------


def tutorial_data_rate(data: ImageSet, params: dict[str, Any], device: torch.device, epochs: int = 3) -> float:
    """images/s of the tutorial's training loader alone, copies to the device included: the
    median of `epochs` passes after one of warm-up."""
    loader = tutorial_loader(data.train_images, data.train_labels, params["batch_size"], device, shuffle=True)
    rates = []
    for _ in range(epochs + 1):
        started = time.perf_counter()
        for images, target in loader:
            images, target = images.to(device), target.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(len(data.train_labels) / (time.perf_counter() - started))
    return statistics.median(rates[1:])


# ---------------------------------------------------------------------------------------------
# (b) trainboard's training
# ---------------------------------------------------------------------------------------------


def trainboard_run(
    data: ImageSet, params: dict[str, Any], work_dir: Path, recorder: RecordingReporter | None = None
) -> RecordingReporter:
    """`recorder`: one that records more (bench/checkpoint_cost.py's epoch clock)."""
    recorder = recorder or RecordingReporter()
    files = JobFiles(Path(tempfile.mkdtemp(dir=work_dir)))
    train.run(
        JobCreate.model_validate(params), name="bench", files=files, data_dir=work_dir, cifar_verify=False,
        reporter=recorder, data=data,
    )
    return recorder


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def compare(data: ImageSet, params: dict[str, Any], device: torch.device, rounds: int, work_dir: Path) -> dict[str, float]:
    """(a) and (b) in alternation. images/s of each: the median over the timed epochs of all rounds;
    the ratio: the median of the rounds' ratios, each taken between runs seconds apart, so that
    load from other processes mostly cancels out."""
    images = len(data.train_labels)
    tutorial_rates, trainboard_rates, ratios = [], [], []
    for round_number in range(1, rounds + 1):
        tutorial = [images / epoch["train_seconds"] for epoch in tutorial_loop(data, params, device, evaluate=False)[1:]]
        ours = timed_rates(trainboard_run(data, params, work_dir))
        tutorial_rates += tutorial
        trainboard_rates += ours
        ratios.append(statistics.median(ours) / statistics.median(tutorial))
        print(f"  round {round_number}: tutorial {fmt(tutorial)}, trainboard {fmt(ours)}, ratio {ratios[-1]:.2f}", flush=True)
    tutorial_rate = statistics.median(tutorial_rates)
    data_share = tutorial_rate / tutorial_data_rate(data, params, device)
    return {
        "tutorial": tutorial_rate,
        "trainboard": statistics.median(trainboard_rates),
        "ratio": statistics.median(ratios),
        "data_share": data_share,
    }


def wandb_overhead(data: ImageSet, params: dict[str, Any], rounds: int, work_dir: Path) -> dict[str, float]:
    """(b) with W&B offline (wandb.watch as the job sets it) against W&B disabled, alternating;
    the overhead is one minus the median of the rounds' ratios."""
    os.environ.setdefault("WANDB_SILENT", "true")
    offline_rates, disabled_rates, ratios = [], [], []
    for round_number in range(1, rounds + 1):
        offline = timed_rates(trainboard_run(data, {**params, "wandb_mode": "offline"}, work_dir))
        disabled = timed_rates(trainboard_run(data, {**params, "wandb_mode": "disabled"}, work_dir))
        offline_rates += offline
        disabled_rates += disabled
        ratios.append(statistics.median(offline) / statistics.median(disabled))
        print(f"  round {round_number}: offline {fmt(offline)}, disabled {fmt(disabled)}, ratio {ratios[-1]:.3f}", flush=True)
    batches = -(-len(data.train_labels) // params["batch_size"]) * params["epochs"]
    return {
        "offline": statistics.median(offline_rates),
        "disabled": statistics.median(disabled_rates),
        "overhead": 1.0 - statistics.median(ratios),
        "watch_logs_per_run": batches // params["wandb_watch_freq"] if params["wandb_watch"] != "off" else 0,
    }


def schedule(data: ImageSet, params: dict[str, Any], work_dir: Path) -> dict[str, float]:
    """One run of the full schedule: wall time of train.run (model build, training, every
    evaluation, saving), the time in training and evaluation epochs, and the final accuracy."""
    started = time.perf_counter()
    recorder = trainboard_run(data, params, work_dir)
    wall = time.perf_counter() - started
    epochs = recorder.epochs
    return {
        "wall_seconds": wall,
        "epoch_seconds": sum(epoch["epoch_seconds"] for epoch in epochs),
        "train_images_per_second": statistics.median(epoch["train_images_per_second"] for epoch in epochs[1:] or epochs),
        "test_accuracy": epochs[-1]["test_accuracy"],
    }


def timed_rates(recorder: RecordingReporter) -> list[float]:
    """train images/s of each epoch after the first."""
    return [epoch["train_images_per_second"] for epoch in recorder.epochs[1:]]


def fmt(rates: list[float]) -> str:
    return "[" + ", ".join(f"{rate:.0f}" for rate in rates) + "]"


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tutorial")
    parser.add_argument("--model", choices=["resnet18", "resnet18_cifar"], help="default: the preset's")
    parser.add_argument("--batch-size", type=int, help="default: the preset's")
    parser.add_argument("--train-size", type=int, help="training images per epoch (default: 512 on CPU, 50000 on CUDA)")
    parser.add_argument("--test-size", type=int, default=1000, help="test images (trainboard evaluates them every epoch)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per timed run; the first is warm-up (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of each measurement (default 5)")
    parser.add_argument("--data", choices=["synthetic", "cifar10"], default="synthetic")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TRAINBOARD_DATA_DIR", "var/data")))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE", help="job field for (b)")
    parser.add_argument("--no-compare", dest="compare", action="store_false", help="skip (a) against (b)")
    parser.add_argument("--wandb", action="store_true", help="also time W&B offline with watch against disabled")
    parser.add_argument("--schedule", action="store_true", help="also run the preset's full schedule once, timed")
    args = parser.parse_args()

    device = torch.device(args.device)
    train_size = args.train_size or (512 if device.type == "cpu" else 50000)
    fixed = {"model": args.model, "batch_size": args.batch_size}
    params = resolve(
        args.preset,
        **{key: value for key, value in fixed.items() if value is not None},
        pretrained=False,
        dataset=args.data,
        use_cuda=device.type == "cuda",
        wandb_mode="disabled",
        epochs=args.epochs,
        train_subset=None,
        test_subset=None,
    )
    try:
        params.update(parse_assignments(args.overrides))
        JobCreate.model_validate(params)
    except (ClientError, ValidationError) as exc:
        raise SystemExit(f"--set: {exc}") from None
    if args.data == "cifar10":
        full = cifar10(args.data_dir, verify=False)
        data = full.subset(train_size, args.test_size)
    else:
        data = synthetic(train_size, args.test_size)

    print(
        f"device: {describe(device)}; torch {torch.__version__}, python {platform.python_version()}\n"
        f"data: {args.data}, {len(data.train_labels)} training images per epoch, {len(data.test_labels)} test images\n"
        f"model {params['model']}, batch {params['batch_size']}, preset {args.preset}, "
        f"{args.epochs} epochs per run (first excluded), {args.rounds} rounds",
        flush=True,
    )
    defaults = resolve()
    tuned = {key: value for key, value in params.items() if value != defaults[key] and key not in ("preset", "epochs", "dataset")}
    print(f"trainboard fields that differ from the tutorial's: {tuned or 'none'}", flush=True)

    with tempfile.TemporaryDirectory(prefix="trainboard-bench-") as work:
        work_dir = Path(work)
        if args.compare:
            print("(a) tutorial loop vs (b) trainboard", flush=True)
            result = compare(data, params, device, args.rounds, work_dir)
            print(
                f"tutorial loop: {result['tutorial']:.0f} images/s\n"
                f"trainboard:    {result['trainboard']:.0f} images/s\n"
                f"ratio:         {result['ratio']:.2f}x\n"
                f"{data_path_ceiling(result['data_share'], device)}",
                flush=True,
            )
        if args.wandb:
            try:
                import wandb  # noqa: F401
            except ImportError:
                print("W&B overhead: skipped, wandb is not installed", flush=True)
            else:
                watch = f"watch {params['wandb_watch']} every {params['wandb_watch_freq']} batches"
                print(f"W&B offline ({watch}) vs disabled", flush=True)
                result = wandb_overhead(data, params, args.rounds, work_dir)
                print(
                    f"W&B offline:  {result['offline']:.0f} images/s ({result['watch_logs_per_run']} watch logs per run)\n"
                    f"W&B disabled: {result['disabled']:.0f} images/s\n"
                    f"overhead:     {100 * result['overhead']:.1f}%",
                    flush=True,
                )
        if args.schedule:
            full_schedule = {**params, "epochs": resolve(args.preset)["epochs"]}
            print(f"full schedule: {full_schedule['epochs']} epochs of {len(data.train_labels)} images", flush=True)
            result = schedule(data, full_schedule, work_dir)
            print(
                f"schedule wall time: {result['wall_seconds']:.1f} s (epochs {result['epoch_seconds']:.1f} s), "
                f"{result['train_images_per_second']:.0f} training images/s, "
                f"final test accuracy {result['test_accuracy']:.2f}% (on {args.data})",
                flush=True,
            )


def data_path_ceiling(share: float, device: torch.device) -> str:
    """How much of the tutorial's time its data path takes and, on the CPU, where the two run one
    after the other, what leaving it out alone can buy when the model's work stays the same."""
    line = f"the tutorial's data path alone (PIL, ToTensor, Normalize, DataLoader) takes {100 * share:.0f}% of its training time"
    if device.type != "cpu" or share >= 0.99:
        return line
    return line + f": the same model work without it is at most {1 / (1 - share):.2f}x as fast"


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda, {torch.cuda.get_device_name(device)}"
    name = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        name = models[0] if models else name
    return f"cpu, {name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


if __name__ == "__main__":
    sys.exit(main())
