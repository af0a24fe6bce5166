"""Train the CNN: imported only in trainboard's training process, with the job's `params` (the
recipe's Params plus trainboard's fields) and `run`, trainboard's run context."""

import gzip
import math
import struct
from pathlib import Path

import numpy
import torch
import torch.nn.functional as F
from torch import nn

# Where torchvision's MNIST and FashionMNIST put their files under a root.
FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataMissing(RuntimeError):
    pass


def read_idx(path: Path) -> numpy.ndarray:
    """An IDX file (raw or .gz): unsigned bytes, big-endian dimensions."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        zero, kind, dims = struct.unpack(">HBB", file.read(4))
        if zero != 0 or kind != 0x08:
            raise DataMissing(f"{path} is not an IDX file of unsigned bytes")
        shape = struct.unpack(f">{dims}I", file.read(4 * dims))
        return numpy.frombuffer(file.read(), dtype=numpy.uint8).reshape(shape)


def find(raw: Path, name: str) -> Path | None:
    return next((path for path in (raw / name, raw / f"{name}.gz") if path.exists()), None)


def load(data_dir: Path, dataset: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train": (images, labels), "test": ...} as uint8 and int64 tensors, from
    <data_dir>/<MNIST|FashionMNIST>/raw, downloaded there by torchvision when missing."""
    raw = data_dir / FOLDERS[dataset] / "raw"
    if not all(find(raw, name) for pair in FILES.values() for name in pair):
        try:
            import torchvision

            getattr(torchvision.datasets, FOLDERS[dataset])(str(data_dir), download=True)
        except Exception as exc:
            raise DataMissing(
                f"{dataset} is not in {raw} and could not be downloaded ({exc}); put its four IDX files there"
            ) from exc
    return {
        split: (torch.from_numpy(read_idx(find(raw, images)).copy()), torch.from_numpy(read_idx(find(raw, labels)).astype(numpy.int64)))
        for split, (images, labels) in FILES.items()
    }


class Net(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels * 2, 3, padding=1)
        self.head = nn.Linear(channels * 2 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


def inputs(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return ((images.to(device).float() / 255.0) - 0.5).div(0.5).unsqueeze(1)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> tuple[float, float]:
    model.eval()
    correct, total_loss = 0, 0.0
    for start in range(0, len(labels), 1000):
        logits = model(inputs(images[start:start + 1000], device))
        target = labels[start:start + 1000].to(device)
        total_loss += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(1) == target).sum().item()
    return 100.0 * correct / len(labels), total_loss / len(labels)


def train(params, run) -> None:
    torch.manual_seed(params.seed)
    data = load(run.data_dir, params.dataset)
    train_images, train_labels = (t[:params.train_subset] for t in data["train"])
    test_images, test_labels = (t[:params.test_subset] for t in data["test"])
    model = Net(params.channels).to(run.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum)

    # A resumed job continues from its last checkpoint: weights, optimizer, random state.
    state = run.restore()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
    batches = math.ceil(len(train_labels) / params.batch_size)
    step = run.epoch * batches
    print(f"mnist-cnn: {params.dataset}, {len(train_labels)} train and {len(test_labels)} test images on {run.device}", flush=True)

    for epoch in range(run.epoch + 1, params.epochs + 1):
        model.train()
        order = torch.randperm(len(train_labels))
        epoch_loss = 0.0
        for batch in range(batches):
            chosen = order[batch * params.batch_size:(batch + 1) * params.batch_size]
            loss = F.cross_entropy(model(inputs(train_images[chosen], run.device)), train_labels[chosen].to(run.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            epoch_loss += loss.item() * len(chosen)
            if step % params.log_interval == 0:
                run.log_step(step, {"train_loss": loss.item()})
                run.progress(epoch - 1, params.epochs, batch=batch + 1, batches=batches)

        accuracy, test_loss = evaluate(model, test_images, test_labels, run.device)
        run.log_epoch({"test_accuracy": accuracy, "test_loss": test_loss, "train_loss": epoch_loss / len(train_labels)})
        with torch.no_grad():
            shown = test_images[:8]
            predicted = model(inputs(shown, run.device)).argmax(1).tolist()
        run.examples([image.numpy() for image in shown], [f"Pred:{p} Truth:{t}" for p, t in zip(predicted, test_labels[:8].tolist())])
        print(f"mnist-cnn: epoch {epoch}/{params.epochs} test accuracy {accuracy:.2f}% test loss {test_loss:.4f}", flush=True)
        run.checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()})
        if run.should_stop():
            return  # paused, or the worker is stopping: the checkpoint above is where the next attempt starts

    torch.save(model.state_dict(), "model.pth")
    run.save_artifact("model.pth")
