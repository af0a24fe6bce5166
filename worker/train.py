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

Checkpoints, every checkpoint_every epochs and wherever the training is when the slot asks, hold
everything the rest of the run depends on: weights, optimizer, loss scaler, position, the epoch's
sample order, the RNG states. A resumed attempt continues as if never stopped: on the CPU with
deterministic=true it ends with the same weights and metrics (tests/test_training.py). The
training waits only for the copy of the state to host memory; a thread writes the file
(`python -m bench.checkpoint_cost` measures both).
"""

import base64
import errno
import io
import math
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel

from app.models import JobCreate
from app.settings import JobFiles
from worker import memory
from worker.data import ImageSet, load
from worker.nets import build_model, skip_padding_taps
from worker.protocol import CheckpointSaved, Example, Examples, Progress, Result, progress_at
from worker.reporter import CheckpointRequest, Reporter
from worker.tracking import Tracker

if TYPE_CHECKING:
    from worker.context import Run

MAX_EXAMPLES = 64
# The most test images evaluated at once, whatever test_batch_size says: evaluation memory grows
# with it (about 1.3 MiB an image for resnet18_cifar on the CPU) and the results do not.
EVALUATION_CHUNK = 1000
CROP_PADDING = 4
CUTOUT_SIZE = 8
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def set_seed(seed: int) -> None:
    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)


def training_device(params: BaseModel) -> torch.device:
    """The slot's GPU for a job that asks for it (use_cuda, a field every recipe's jobs have), else the CPU."""
    return torch.device("cuda:0" if params.use_cuda and torch.cuda.is_available() else "cpu")


def resolve_precision(requested: str, device: torch.device) -> torch.dtype:
    """auto: bf16 where the GPU computes it natively (compute capability 8.0 and up), else fp32."""
    if requested == "auto":
        native_bf16 = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8
        return torch.bfloat16 if native_bf16 else torch.float32
    return PRECISIONS[requested]


def train(params: JobCreate, context: "Run") -> None:
    """The tutorial as the recipe cifar10-resnet18 (app/recipes.py): the run context's job, folders,
    events and requests, with the tutorial's own W&B logging and mid-epoch checkpoints."""
    spec = context.spec
    run(
        params,
        name=spec.name,
        files=context.files,
        data_dir=spec.data_dir,
        cifar_verify=spec.cifar_verify,
        reporter=context,
        resume_from=spec.resume_from,
        checkpoint_request=context.checkpoint_request,
        wandb_group=spec.wandb_group,
        sweep_id=spec.sweep_id,
        max_histograms=spec.max_histograms,
    )


def run(
    params: JobCreate,
    *,
    name: str,
    files: JobFiles,
    data_dir: Path,
    cifar_verify: bool,
    reporter: Reporter,
    data: ImageSet | None = None,
    resume_from: Path | None = None,
    checkpoint_request: CheckpointRequest | None = None,
    wandb_group: str | None = None,
    sweep_id: int | None = None,
    max_histograms: int | None = None,
) -> None:
    """Train and evaluate as `params` say, reporting progress, examples, checkpoints and the result
    through `reporter`; model.pth and the checkpoints go to the job's scratch folder. `data`
    replaces the job's dataset (benchmarks bring their own images); subsets still apply.
    `resume_from` is a checkpoint to continue from. Once `checkpoint_request` is asked, it
    checkpoints where it is and returns without a result. `max_histograms` bounds the W&B
    histogram sets of the run. Running out of memory raises memory.OutOfMemory naming the batch
    size to lower."""
    request = checkpoint_request or CheckpointRequest()
    # ---- Setup ---------------------------------------------------------------------------------
    set_seed(params.seed)
    device = training_device(params)
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
    resumed = load_checkpoint(resume_from, training) if resume_from is not None else None

    tracker = Tracker.start(
        params, name=name, job_dir=files.root, reporter=reporter, run_id=resumed["wandb_run_id"] if resumed else None,
        group=wandb_group, sweep_id=sweep_id,
    )
    checkpoints = CheckpointWriter(files.root / "checkpoints", reporter, epochs, batches)
    stopped = False
    try:
        tracker.watch(model, log=params.wandb_watch, log_freq=params.wandb_watch_freq, steps=epochs * batches,
                      max_sets=max_histograms)
        metrics: dict[str, Any] = {}
        first_epoch, interrupted_epoch = 1, None
        if resumed is not None:
            # Last: the setup above (W&B's included) may draw random numbers an uninterrupted run drew before.
            restore_rng_states(resumed["rng"])
            metrics, first_epoch, interrupted_epoch = resumed["metrics"], resumed["epoch"] + 1, resumed["epoch_state"]
            print(f"trainboard: resumed from the checkpoint after epoch {resumed['epoch']}, batch {resumed['batch']}", flush=True)
        for epoch in range(first_epoch, epochs + 1):
            # ---- Train -------------------------------------------------------------------------
            started = time.perf_counter()
            state = interrupted_epoch or EpochState.start(len(data.train_labels), device)
            interrupted_epoch = None
            trained_images = state.order[state.batch * params.batch_size:].numel()  # fewer in a resumed epoch
            stopped = not memory.naming_batch_size("batch_size", params.batch_size, str(device), lambda: train_epoch(
                training, data, params, epoch, batches, state, tracker, reporter, request
            ))
            if stopped:
                checkpoints.write(training, epoch - 1, state, metrics, tracker.run_id, background=False)
                break
            train_loss = state.epoch_loss.item() / len(state.order)
            if device.type == "cuda":
                torch.cuda.synchronize()
            train_seconds = time.perf_counter() - started

            # ---- Evaluate ----------------------------------------------------------------------
            accuracy, test_loss, examples = memory.naming_batch_size(
                "test_batch_size", min(params.test_batch_size, EVALUATION_CHUNK), str(device),
                lambda: evaluate(training, data, params.test_batch_size, params.tta),
            )
            tracker.log_epoch(epoch, accuracy, test_loss, examples)
            reporter.report(encode_examples(epoch, examples))
            metrics = {
                "epoch": epoch,
                "test_accuracy": accuracy,
                "test_loss": test_loss,
                "train_loss": train_loss,
                "train_images_per_second": trained_images / train_seconds,
                "epoch_seconds": time.perf_counter() - started,
            }
            reporter.report(Progress(
                progress=progress_at(epoch, batches, epochs, batches),
                metrics=metrics,
                points=[("epoch", epoch, metrics)],
            ))
            print(f"trainboard: epoch {epoch}/{epochs} test accuracy {accuracy:.2f}% test loss {test_loss:.4f}", flush=True)

            # ---- Checkpoint --------------------------------------------------------------------
            # Asked for by the slot: here and now, complete before the process ends. Otherwise
            # every checkpoint_every epochs, written while the next epoch trains.
            stopped = request.asked
            if stopped or (params.checkpoint_every and epoch % params.checkpoint_every == 0):
                checkpoints.write(training, epoch, None, metrics, tracker.run_id, background=not stopped)
            if stopped:
                break

        if not stopped:
            # ---- Save --------------------------------------------------------------------------
            model_path = save_model(model, files.model)
            tracker.save(model_path)
        checkpoints.wait()
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    # Stopped for a checkpoint too: a run finished cleanly is one the next attempt can continue.
    tracker.finish()
    if not stopped:
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


@dataclass
class EpochState:
    """An epoch under way: its sample order, the batches done, and the loss sums not yet read
    (on the device). A mid-epoch checkpoint keeps it, so that a resumed attempt repeats no batch."""

    order: torch.Tensor
    interval_loss: torch.Tensor
    epoch_loss: torch.Tensor
    batch: int = 0

    @classmethod
    def start(cls, size: int, device: torch.device) -> "EpochState":
        """A new epoch in a random order."""
        order = torch.randperm(size, device=device)
        return cls(order, torch.zeros((), device=device), torch.zeros((), device=device))


def train_epoch(
    training: Training,
    data: ImageSet,
    params: JobCreate,
    epoch: int,
    batches: int,
    state: EpochState,
    tracker: Tracker,
    reporter: Reporter,
    request: CheckpointRequest,
) -> bool:
    """The epoch's batches after `state.batch`. Losses stay on the device until a log_interval
    boundary. Returns False, `state` where it stopped, when a checkpoint was asked for."""
    training.model.train()
    batch_size, log_interval = params.batch_size, params.log_interval
    order, interval_loss, epoch_loss = state.order, state.interval_loss, state.epoch_loss
    for batch in range(state.batch + 1, batches + 1):
        indices = order[(batch - 1) * batch_size:batch * batch_size]
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
                progress=progress_at(epoch - 1, batch, params.epochs, batches),
                points=[("train", step, {"epoch": epoch, "batch": batch, "train_loss": mean_loss})],
            ))
        if request.asked:
            state.batch = batch
            return False
    state.batch = batches
    return True


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def evaluate(
    training: Training, data: ImageSet, batch_size: int, tta: str
) -> tuple[float, float, list[tuple[numpy.ndarray, str]]]:
    """Accuracy in percent, unsmoothed cross-entropy averaged per sample, and the first image of
    each test batch. With flip TTA the logits of each image and its mirror are averaged. A test
    batch larger than EVALUATION_CHUNK is evaluated a chunk at a time: in eval mode each image's
    logits do not depend on the others in its batch."""
    model = training.model
    model.eval()
    total_loss = torch.zeros((), device=data.test_labels.device)
    correct = torch.zeros((), dtype=torch.int64, device=data.test_labels.device)
    firsts = []
    count = len(data.test_labels)
    for batch_start in range(0, count, batch_size):
        batch_end = min(batch_start + batch_size, count)
        for start in range(batch_start, batch_end, EVALUATION_CHUNK):
            end = min(start + EVALUATION_CHUNK, batch_end)
            images, labels = data.test_images[start:end], data.test_labels[start:end]
            inputs = to_inputs(images, training.layout)
            with training.autocast():
                logits = model(inputs).float()
                if tta == "flip":
                    logits = (logits + model(inputs.flip(3)).float()) / 2
            total_loss += F.cross_entropy(logits, labels, reduction="sum")
            predicted = logits.argmax(dim=1)
            correct += (predicted == labels).sum()
            if start == batch_start and len(firsts) < MAX_EXAMPLES:
                firsts.append((images[0], predicted[0], labels[0]))
    examples = [
        (image.permute(1, 2, 0).cpu().numpy(), f"Pred:{data.classes[int(pred)]} Truth:{data.classes[int(truth)]}")
        for image, pred, truth in firsts
    ]
    return 100.0 * correct.item() / count, total_loss.item() / count, examples


def encode_examples(epoch: int, examples: list[tuple[numpy.ndarray, str]]) -> Examples:
    """The epoch's "Examples" for the dashboard, as PNGs made in memory: the slot stores them with the job."""
    encoded = []
    for image, caption in examples:
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        encoded.append(Example(caption=caption, png_base64=base64.b64encode(png.getvalue()).decode("ascii")))
    return Examples(epoch=epoch, examples=encoded)


# ---------------------------------------------------------------------------------------------
# Checkpoints and model.pth: written under a temporary name and renamed, so a crash never leaves
# a torn file
# ---------------------------------------------------------------------------------------------


class CheckpointWriter:
    """Writes checkpoints into the job's scratch folder, each under a new name so that the slot can
    upload one while the next is written, and reports each once its file is complete.

    The training's thread copies the state to host memory; the file is written there (`background=False`)
    or by a thread of its own while the training goes on. One write at a time. The thread is not a
    daemon: a process that ends early still completes the file before it exits.
    """

    def __init__(self, folder: Path, reporter: Reporter, epochs: int, batches: int):
        self.folder = folder
        self.reporter = reporter
        self.epochs = epochs
        self.batches = batches
        self._writing: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(
        self,
        training: Training,
        epoch: int,
        state: EpochState | None,
        metrics: dict[str, Any],
        wandb_run_id: str | None,
        *,
        background: bool,
    ) -> None:
        """After `epoch` finished epochs, and with `state` the batches done of the next."""
        self.wait()
        batch = state.batch if state is not None else 0
        checkpoint = {
            "epoch": epoch,
            "batch": batch,
            "step": epoch * self.batches + batch,
            "model": to_host(training.model.state_dict()),
            "optimizer": to_host(training.optimizer.state_dict()),
            "scaler": training.scaler.state_dict(),
            "epoch_state": to_host(vars(state)) if state is not None else None,
            "rng": rng_states(),
            "wandb_run_id": wandb_run_id,
            "metrics": metrics,
        }
        path = self.folder / f"checkpoint-e{epoch}-b{batch}.pt"
        progress = progress_at(epoch, batch if state is not None else self.batches, self.epochs, self.batches)
        saved = CheckpointSaved(path=path, epoch=epoch, batch=batch, step=checkpoint["step"], progress=progress)
        if background:
            self._writing = threading.Thread(target=self._write_catching, args=(checkpoint, saved), name="checkpoint")
            self._writing.start()
        else:
            self._write(checkpoint, saved)

    def wait(self) -> None:
        """Until the write under way is complete; raises what it failed with."""
        if self._writing is not None:
            self._writing.join()
            self._writing = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _write(self, checkpoint: dict[str, Any], saved: CheckpointSaved) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        save_whole(checkpoint, saved.path)
        self.reporter.report(saved)

    def _write_catching(self, checkpoint: dict[str, Any], saved: CheckpointSaved) -> None:
        try:
            self._write(checkpoint, saved)
        except BaseException as exc:  # raised in the training's thread by the next wait()
            self._error = exc


def load_checkpoint(path: Path, training: Training) -> dict[str, Any]:
    """Restore the model, optimizer and loss scaler from a checkpoint; returns it for the rest
    (where to continue, the RNG states, the W&B run), its epoch under way as an EpochState on the
    training's device. weights_only: a checkpoint holds no code."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    training.model.load_state_dict(checkpoint["model"])
    training.optimizer.load_state_dict(checkpoint["optimizer"])
    training.scaler.load_state_dict(checkpoint["scaler"])
    if checkpoint["epoch_state"] is not None:
        unfinished = checkpoint["epoch_state"]
        checkpoint["epoch_state"] = EpochState(
            order=unfinished["order"].to(training.device),
            interval_loss=unfinished["interval_loss"].to(training.device),
            epoch_loss=unfinished["epoch_loss"].to(training.device),
            batch=unfinished["batch"],
        )
    return checkpoint


def to_host(value: Any) -> Any:
    """A copy in host memory of the tensors in nested dicts, lists and tuples: the training goes on
    changing the originals while the copy is written."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: to_host(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_host(item) for item in value)
    return value


def rng_states() -> dict[str, Any]:
    """Every generator the training may draw from. CUDA's only once it is in use (asking would
    start it); numpy's keys as a tensor, which weights_only loading accepts."""
    kind, keys, position, has_gauss, gauss = numpy.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(numpy.int64)), position, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    numpy.random.set_state((kind, keys.numpy().astype(numpy.uint32), position, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"][:torch.cuda.device_count()])


def save_model(model: torch.nn.Module, path: Path) -> Path:
    save_whole(model.state_dict(), path)
    return path


class DiskFull(RuntimeError):
    """A file could not be written for want of space: the job ends saying where."""


def save_whole(value: Any, path: Path) -> None:
    """torch.save to a temporary file renamed over `path`, so a crash never leaves a torn file; a
    failed write leaves no partial file behind. A full disk raises DiskFull naming the folder
    (torch reports it as "enforce fail at inline_container.cc" or as ENOSPC)."""
    partial = path.with_name(f"{path.name}.partial")
    try:
        torch.save(value, partial)
        os.replace(partial, path)
    except (OSError, RuntimeError) as exc:
        partial.unlink(missing_ok=True)
        if getattr(exc, "errno", None) == errno.ENOSPC or "inline_container.cc" in str(exc):
            raise DiskFull(f"no space left on {path.parent} (writing {path.name})") from exc
        raise
