"""Train ResNet-18 on CIFAR-10 with W&B logging: the thorough-pytorch tutorial (7.4), its bugs fixed.

What the tutorial does, kept: SGD with its lr and momentum, cross-entropy, torchvision's resnet18,
inputs normalised with mean 0.5 and std 0.5, and per epoch a wandb.log of "Examples" (the first
test image of each test batch, captioned "Pred:x Truth:y"), "Test Accuracy" (percent) and
"Test Loss", wandb.watch(model, log="all"), then model.pth saved locally and to W&B.

What is fixed: the seed argument is honoured (python, numpy and torch); test_batch_size is used
for evaluation; Test Loss is averaged per sample rather than summed over batches; pretrained
weights come through torchvision's weights API with a 10-class head; log_interval logs the train
loss. The whole data set sits on the training device as uint8 and batches are drawn there.

On this project's 2-core CPU a synthetic job of 2 epochs on 512 images takes a few seconds:
    curl -X POST localhost:8000/jobs -d '{"dataset":"synthetic","pretrained":false,"epochs":2,"train_subset":512}'
"""

import os
import random
import time
from pathlib import Path
from typing import Any

import numpy
import torch
import torch.nn.functional as F

from worker.data import ImageSet, load
from worker.nets import build_model
from worker.reporter import Reporter
from worker.tracking import Tracker

MAX_EXAMPLES = 64


def set_seed(seed: int) -> None:
    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] to the tutorial's Normalize((0.5,) * 3, (0.5,) * 3) range [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def run(params: dict[str, Any], *, name: str, job_dir: Path, data_dir: Path, cifar_verify: bool, reporter: Reporter) -> None:
    # ---- Setup ---------------------------------------------------------------------------------
    set_seed(params["seed"])
    use_cuda = params["use_cuda"] and torch.cuda.is_available()
    device = torch.device("cuda:0" if use_cuda else "cpu")
    torch.backends.cudnn.deterministic = True  # as the tutorial sets it

    data = load(params["dataset"], data_dir, verify=cifar_verify)
    data = data.subset(params["train_subset"], params["test_subset"]).to(device)
    model = build_model(params["model"], pretrained=params["pretrained"]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=params["lr"], momentum=params["momentum"])
    print(
        f"trainboard: {params['model']} on {params['dataset']} ({len(data.train_labels)} train, "
        f"{len(data.test_labels)} test images) on {device}",
        flush=True,
    )

    tracker = Tracker.start(params, name=name, job_dir=job_dir, reporter=reporter)
    try:
        tracker.watch(model)
        epochs = params["epochs"]
        batches_per_epoch = -(-len(data.train_labels) // params["batch_size"])
        metrics: dict[str, Any] = {}
        for epoch in range(1, epochs + 1):
            # ---- Train -------------------------------------------------------------------------
            started = time.perf_counter()
            train_loss = train_epoch(model, optimizer, data, params, epoch, batches_per_epoch, tracker, reporter)
            if device.type == "cuda":
                torch.cuda.synchronize()
            train_seconds = time.perf_counter() - started

            # ---- Evaluate ----------------------------------------------------------------------
            accuracy, test_loss, examples = evaluate(model, data, params["test_batch_size"])
            tracker.log_epoch(epoch, accuracy, test_loss, examples)
            metrics = {
                "epoch": epoch,
                "test_accuracy": accuracy,
                "test_loss": test_loss,
                "train_loss": train_loss,
                "train_images_per_second": len(data.train_labels) / train_seconds,
                "epoch_seconds": time.perf_counter() - started,
            }
            reporter.progress(
                {"epoch": epoch, "epochs": epochs, "batch": batches_per_epoch, "batches": batches_per_epoch},
                metrics=metrics,
                points=[("epoch", epoch, metrics)],
            )
            print(f"trainboard: epoch {epoch}/{epochs} test accuracy {accuracy:.2f}% test loss {test_loss:.4f}", flush=True)

        # ---- Save ------------------------------------------------------------------------------
        model_path = save_model(model, job_dir / "model.pth")
        tracker.save(model_path)
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    tracker.finish()
    reporter.result(metrics, [{"name": model_path.name, "size": model_path.stat().st_size}])


def train_epoch(model, optimizer, data: ImageSet, params, epoch: int, batches_per_epoch: int, tracker: Tracker, reporter: Reporter) -> float:
    """One pass in a random order. Losses stay on the device until a log_interval boundary."""
    model.train()
    batch_size, log_interval = params["batch_size"], params["log_interval"]
    order = torch.randperm(len(data.train_labels), device=data.train_labels.device)
    interval_loss = torch.zeros((), device=order.device)
    epoch_loss = torch.zeros((), device=order.device)
    for batch, start in enumerate(range(0, len(order), batch_size), start=1):
        indices = order[start:start + batch_size]
        images, labels = normalize(data.train_images[indices]), data.train_labels[indices]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        interval_loss += loss.detach()
        epoch_loss += loss.detach() * len(indices)

        if batch % log_interval == 0 or batch == batches_per_epoch:
            mean_loss = interval_loss.item() / (log_interval if batch % log_interval == 0 else batch % log_interval)
            interval_loss.zero_()
            step = (epoch - 1) * batches_per_epoch + batch
            tracker.log_train_loss(step, mean_loss)
            reporter.progress(
                {"epoch": epoch - 1, "epochs": params["epochs"], "batch": batch, "batches": batches_per_epoch},
                points=[("train", step, {"epoch": epoch, "batch": batch, "train_loss": mean_loss})],
            )
    return epoch_loss.item() / len(order)


@torch.inference_mode()
def evaluate(model, data: ImageSet, batch_size: int) -> tuple[float, float, list[tuple[numpy.ndarray, str]]]:
    """Accuracy in percent, loss averaged per sample, and the first image of each test batch."""
    model.eval()
    total_loss = torch.zeros((), device=data.test_labels.device)
    correct = torch.zeros((), dtype=torch.int64, device=data.test_labels.device)
    firsts = []
    for start in range(0, len(data.test_labels), batch_size):
        images, labels = data.test_images[start:start + batch_size], data.test_labels[start:start + batch_size]
        predictions = model(normalize(images))
        total_loss += F.cross_entropy(predictions, labels, reduction="sum")
        predicted = predictions.argmax(dim=1)
        correct += (predicted == labels).sum()
        if len(firsts) < MAX_EXAMPLES:
            firsts.append((images[0], predicted[0], labels[0]))
    count = len(data.test_labels)
    examples = [
        (image.permute(1, 2, 0).cpu().numpy(), f"Pred:{data.classes[int(pred)]} Truth:{data.classes[int(truth)]}")
        for image, pred, truth in firsts
    ]
    return 100.0 * correct.item() / count, total_loss.item() / count, examples


def save_model(model: torch.nn.Module, path: Path) -> Path:
    """Write to a temporary file and rename, so a crash never leaves a torn model.pth."""
    partial = path.with_suffix(".pth.partial")
    torch.save(model.state_dict(), partial)
    os.replace(partial, path)
    return path
