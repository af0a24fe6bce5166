"""Train ResNet-18 on CIFAR-10 with W&B logging: the thorough-pytorch tutorial (7.4), its bugs fixed.

What the tutorial does, kept: SGD with its lr and momentum, cross-entropy, torchvision's resnet18,
inputs normalised with mean 0.5 and std 0.5, and per epoch a wandb.log of "Examples" (the first
test image of each test batch, captioned "Pred:x Truth:y"), "Test Accuracy" (percent) and
"Test Loss", wandb.watch(model, log="all"), then model.pth saved locally and to W&B.

What is fixed: the seed argument is honoured (python, numpy and torch); test_batch_size is used
for evaluation; Test Loss is averaged per sample rather than summed over batches; pretrained
weights come through torchvision's weights API with a 10-class head; log_interval logs the train
loss.

What is added, each a job field whose default keeps the tutorial's results: AdamW, Nesterov,
weight decay, a per-batch lr schedule with warm-up, label smoothing, flip/crop/cutout drawn on
the device, autocast (bf16 on GPUs that have it), channels_last, torch.compile, flip TTA, and
the fast94 preset that combines them (app/presets.py).

Where the time goes: the whole data set sits on the training device as uint8 and every batch is
gathered, augmented and normalised there, so there is no DataLoader and no per-image Python. The
loop never waits for the device except every log_interval batches, when the train loss (summed
on the device) is read. On the CPU the model's convolutions skip the kernel taps that only ever
meet zero padding (worker/nets.py): on 32x32 images layer4's 3x3 convolutions see 1x1 maps.
What all that buys depends on the device. On this project's 2-core CPU the tutorial config
trains 1.11 to 1.14 times as fast as the tutorial's own loop: in fp32 both spend most of a step in
the same convolution arithmetic, and the tutorial's per-image PIL work (about 70 us an image) is
a few percent of it. On a GPU that per-image work is the bottleneck, and small batches are bound
by kernel launches (compile=reduce-overhead replays them as CUDA graphs). Measured with
`python -m bench.train_speed` (CPU) and `bash bench/gpu.sh` (GPU); BENCHMARKS.md has the figures.
"""

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy
import torch
import torch.nn.functional as F
from PIL import Image

from app.models import JobCreate
from app.settings import JobFiles
from worker.data import ImageSet, load
from worker.nets import build_model, skip_padding_taps
from worker.protocol import Progress, Result
from worker.reporter import Reporter
from worker.tracking import Tracker

MAX_EXAMPLES = 64
CROP_PADDING = 4
CUTOUT_SIZE = 8
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def set_seed(seed: int) -> None:
    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)


def resolve_precision(requested: str, device: torch.device) -> torch.dtype:
    """auto: bf16 where the GPU computes it natively (compute capability 8.0 and up), else fp32."""
    if requested == "auto":
        native_bf16 = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8
        return torch.bfloat16 if native_bf16 else torch.float32
    return PRECISIONS[requested]


def run(
    params: JobCreate,
    *,
    name: str,
    files: JobFiles,
    data_dir: Path,
    cifar_verify: bool,
    reporter: Reporter,
    data: ImageSet | None = None,
) -> None:
    """Train and evaluate as `params` say, writing the job's files and reporting progress and the
    result through `reporter`. `data` replaces the job's dataset (benchmarks bring their own images); subsets still apply."""
    # ---- Setup ---------------------------------------------------------------------------------
    set_seed(params.seed)
    use_cuda = params.use_cuda and torch.cuda.is_available()
    device = torch.device("cuda:0" if use_cuda else "cpu")
    # The tutorial asks cuDNN for deterministic algorithms; without that, let cuDNN time its
    # algorithms on the first batches and keep the fastest.
    torch.backends.cudnn.deterministic = params.deterministic
    torch.backends.cudnn.benchmark = not params.deterministic

    if data is None:
        data = load(params.dataset, data_dir, verify=cifar_verify)
    data = data.subset(params.train_subset, params.test_subset).to(device)
    epochs, batches = params.epochs, -(-len(data.train_labels) // params.batch_size)
    model = build_model(params.model, pretrained=params.pretrained)
    training = Training(model, params, device, steps=epochs * batches)
    print(
        f"trainboard: {params.model} on {params.dataset} ({len(data.train_labels)} train, "
        f"{len(data.test_labels)} test images) on {device}, precision {str(training.precision).removeprefix('torch.')}, "
        f"compile {params.compile}",
        flush=True,
    )

    tracker = Tracker.start(params, name=name, job_dir=files.root, reporter=reporter)
    try:
        tracker.watch(model, log=params.wandb_watch, log_freq=params.wandb_watch_freq)
        metrics: dict[str, Any] = {}
        for epoch in range(1, epochs + 1):
            # ---- Train -------------------------------------------------------------------------
            started = time.perf_counter()
            train_loss = train_epoch(training, data, params, epoch, batches, tracker, reporter)
            if device.type == "cuda":
                torch.cuda.synchronize()
            train_seconds = time.perf_counter() - started

            # ---- Evaluate ----------------------------------------------------------------------
            accuracy, test_loss, examples = evaluate(training, data, params.test_batch_size, params.tta)
            tracker.log_epoch(epoch, accuracy, test_loss, examples)
            save_examples(files, epoch, examples)
            metrics = {
                "epoch": epoch,
                "test_accuracy": accuracy,
                "test_loss": test_loss,
                "train_loss": train_loss,
                "train_images_per_second": len(data.train_labels) / train_seconds,
                "epoch_seconds": time.perf_counter() - started,
            }
            reporter.report(Progress(
                progress={"epoch": epoch, "epochs": epochs, "batch": batches, "batches": batches},
                metrics=metrics,
                points=[("epoch", epoch, metrics)],
            ))
            print(f"trainboard: epoch {epoch}/{epochs} test accuracy {accuracy:.2f}% test loss {test_loss:.4f}", flush=True)

        # ---- Save ------------------------------------------------------------------------------
        model_path = save_model(model, files.model)
        tracker.save(model_path)
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    tracker.finish()
    reporter.report(Result(metrics=metrics, artifacts=[{"name": model_path.name, "size": model_path.stat().st_size}]))


# ---------------------------------------------------------------------------------------------
# Batches: gathered from the uint8 set on the device, augmented and normalised there, a whole
# batch per kernel
# ---------------------------------------------------------------------------------------------


def to_inputs(images: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """uint8 [0, 255] to the tutorial's Normalize((0.5,) * 3, (0.5,) * 3) range [-1, 1], in `layout`."""
    return images.to(dtype=torch.float32, memory_format=layout).div_(127.5).sub_(1.0)


def random_flip(images: torch.Tensor) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flipped = torch.rand(len(images), 1, 1, 1, device=images.device) < 0.5
    return torch.where(flipped, images.flip(3), images)


def random_crop(images: torch.Tensor, padding: int = CROP_PADDING) -> torch.Tensor:
    """Shift each image by up to `padding` pixels each way, filling with zeros: RandomCrop(32, padding=4)."""
    count, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (count, 1, 1), device=device)
    left = torch.randint(0, 2 * padding + 1, (count, 1, 1), device=device)
    rows = top + torch.arange(height, device=device).view(1, -1, 1)
    columns = left + torch.arange(width, device=device).view(1, 1, -1)
    index = (rows * (width + 2 * padding) + columns).view(count, 1, -1).expand(-1, channels, -1)
    return padded.flatten(2).gather(2, index).view(count, channels, height, width)


def cutout(inputs: torch.Tensor, size: int = CUTOUT_SIZE) -> torch.Tensor:
    """Zero (the data's mean after normalisation) a size x size square at a random centre of each image,
    clipped at the borders."""
    count, _, height, width = inputs.shape
    top = torch.randint(0, height, (count, 1, 1), device=inputs.device) - size // 2
    left = torch.randint(0, width, (count, 1, 1), device=inputs.device) - size // 2
    rows = torch.arange(height, device=inputs.device).view(1, -1, 1)
    columns = torch.arange(width, device=inputs.device).view(1, 1, -1)
    square = (rows >= top) & (rows < top + size) & (columns >= left) & (columns < left + size)
    return inputs.masked_fill(square.unsqueeze(1), 0.0)


def training_inputs(images: torch.Tensor, augment: str, layout: torch.memory_format) -> torch.Tensor:
    if augment != "none":
        images = random_crop(random_flip(images))
    inputs = to_inputs(images, layout)
    if augment == "flip_crop_cutout":
        inputs = cutout(inputs)
    return inputs


# ---------------------------------------------------------------------------------------------
# Model, optimizer, schedule: one training step
# ---------------------------------------------------------------------------------------------


class Training:
    """The model on its device and everything one optimisation step needs."""

    def __init__(self, model: torch.nn.Module, params: JobCreate, device: torch.device, steps: int):
        self.params = params
        self.device = device
        self.steps = steps
        self.precision = resolve_precision(params.precision, device)
        self.layout = torch.channels_last if params.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=self.layout)
        if device.type == "cpu":
            skip_padding_taps(model)
        # Only forward() is compiled, not the module call: hooks (wandb.watch's) stay eager
        # Python instead of forcing graph breaks and recompiles.
        self.cuda_graphs = params.compile == "reduce-overhead" and device.type == "cuda"
        if params.compile != "off":
            model.forward = torch.compile(model.forward, mode=params.compile, dynamic=False)
        loss_scaling = self.precision == torch.float16
        # Fused: one kernel per step for all parameters, and loss scaling without a host sync.
        # Except SGD under a loss scaler: torch's fused SGD does not honour a skipped step
        # (pytorch's _fused_sgd leaves the momentum uninitialised when the first step overflows).
        if params.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(
                model.parameters(), lr=params.lr, weight_decay=params.weight_decay, fused=True
            )
        else:
            self.optimizer = torch.optim.SGD(
                model.parameters(),
                lr=params.lr,
                momentum=params.momentum,
                nesterov=params.nesterov,
                weight_decay=params.weight_decay,
                fused=not loss_scaling,
                foreach=True if loss_scaling else None,
            )
        self.scaler = torch.amp.GradScaler(device.type, enabled=loss_scaling)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.precision, enabled=self.precision != torch.float32)

    def learning_rate(self, step: int) -> float:
        """The lr of 0-based `step`: a linear warm-up from zero, then the schedule down to zero."""
        peak, schedule = self.params.lr, self.params.lr_schedule
        warmup = round(self.params.warmup_fraction * self.steps)
        if step < warmup:
            return peak * (step + 1) / warmup
        progress = (step - warmup) / max(1, self.steps - warmup)
        if schedule == "onecycle":
            return peak * (1.0 - progress)
        if schedule == "cosine":
            return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
        return peak

    def step(self, step: int, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimisation step; returns the loss on the device, without waiting for it."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(step)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = F.cross_entropy(self.model(inputs), labels, label_smoothing=self.params.label_smoothing)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()


# ---------------------------------------------------------------------------------------------
# Loop
# ---------------------------------------------------------------------------------------------


def train_epoch(
    training: Training, data: ImageSet, params: JobCreate, epoch: int, batches: int, tracker: Tracker, reporter: Reporter
) -> float:
    """One pass in a random order. Losses stay on the device until a log_interval boundary."""
    training.model.train()
    batch_size, log_interval = params.batch_size, params.log_interval
    order = torch.randperm(len(data.train_labels), device=data.train_labels.device)
    interval_loss = torch.zeros((), device=order.device)
    epoch_loss = torch.zeros((), device=order.device)
    for batch, start in enumerate(range(0, len(order), batch_size), start=1):
        indices = order[start:start + batch_size]
        inputs = training_inputs(data.train_images[indices], params.augment, training.layout)
        loss = training.step((epoch - 1) * batches + batch - 1, inputs, data.train_labels[indices])
        interval_loss += loss
        epoch_loss += loss * len(indices)

        if batch % log_interval == 0 or batch == batches:
            mean_loss = interval_loss.item() / (log_interval if batch % log_interval == 0 else batch % log_interval)
            interval_loss.zero_()
            step = (epoch - 1) * batches + batch
            tracker.log_train_loss(step, mean_loss)
            reporter.report(Progress(
                progress={"epoch": epoch - 1, "epochs": params.epochs, "batch": batch, "batches": batches},
                points=[("train", step, {"epoch": epoch, "batch": batch, "train_loss": mean_loss})],
            ))
    return epoch_loss.item() / len(order)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def evaluate(
    training: Training, data: ImageSet, batch_size: int, tta: str
) -> tuple[float, float, list[tuple[numpy.ndarray, str]]]:
    """Accuracy in percent, unsmoothed cross-entropy averaged per sample, and the first image of
    each test batch. With flip TTA the logits of each image and its mirror are averaged."""
    model = training.model
    model.eval()
    total_loss = torch.zeros((), device=data.test_labels.device)
    correct = torch.zeros((), dtype=torch.int64, device=data.test_labels.device)
    firsts = []
    for start in range(0, len(data.test_labels), batch_size):
        images, labels = data.test_images[start:start + batch_size], data.test_labels[start:start + batch_size]
        inputs = to_inputs(images, training.layout)
        with training.autocast():
            logits = model(inputs).float()
            if tta == "flip":
                logits = (logits + model(inputs.flip(3)).float()) / 2
        total_loss += F.cross_entropy(logits, labels, reduction="sum")
        predicted = logits.argmax(dim=1)
        correct += (predicted == labels).sum()
        if len(firsts) < MAX_EXAMPLES:
            firsts.append((images[0], predicted[0], labels[0]))
    count = len(data.test_labels)
    examples = [
        (image.permute(1, 2, 0).cpu().numpy(), f"Pred:{data.classes[int(pred)]} Truth:{data.classes[int(truth)]}")
        for image, pred, truth in firsts
    ]
    return 100.0 * correct.item() / count, total_loss.item() / count, examples


def save_examples(files: JobFiles, epoch: int, examples: list[tuple[numpy.ndarray, str]]) -> None:
    """The epoch's "Examples" for the dashboard: PNGs, then a manifest naming them and their captions.

    Each file is written under a temporary name and renamed, and the manifest last, so a page
    never shows a half-written image or a caption for an image that is not there yet.
    """
    folder = files.examples_dir
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, (image, caption) in enumerate(examples):
        name = f"{index:02d}.png"
        Image.fromarray(image).save(folder / f"{name}.partial", format="PNG")
        os.replace(folder / f"{name}.partial", folder / name)
        entries.append({"file": name, "caption": caption})
    partial = files.examples_manifest.with_name(f"{files.examples_manifest.name}.partial")
    partial.write_text(json.dumps({"epoch": epoch, "examples": entries}))
    os.replace(partial, files.examples_manifest)


def save_model(model: torch.nn.Module, path: Path) -> Path:
    """Write to a temporary file and rename, so a crash never leaves a torn model.pth."""
    partial = path.with_suffix(".pth.partial")
    torch.save(model.state_dict(), partial)
    os.replace(partial, path)
    return path
