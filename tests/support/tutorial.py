"""The thorough-pytorch tutorial's (7.4) training loop as written: the baseline that the speed
benchmark (bench/train_speed.py) times and that tests/test_training.py compares metrics against."""

import random
import time
from typing import Any

import numpy
import torch
from PIL import Image
from torch import nn, optim
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from worker.data import ImageSet
from worker.nets import build_model


class TutorialCIFAR(Dataset):
    """What torchvision's CIFAR10 does per sample: HWC uint8 array -> PIL image -> transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def tutorial_loop(
    data: ImageSet, params: dict[str, Any], device: torch.device, *, evaluate: bool = True
) -> list[dict[str, float]]:
    """The tutorial's main(): seeds, loaders, model, SGD, then train() and test() per epoch.

    Returns per epoch the training seconds and, with `evaluate`, Test Accuracy (percent) and Test
    Loss averaged per sample (the tutorial sums batch means; per sample is trainboard's definition,
    so the two compare)."""
    random.seed(params["seed"])
    torch.manual_seed(params["seed"])
    numpy.random.seed(params["seed"])
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    train_loader = tutorial_loader(data.train_images, data.train_labels, params["batch_size"], device, shuffle=True)
    test_loader = tutorial_loader(data.test_images, data.test_labels, params["batch_size"], device, shuffle=False)
    model = build_model(params["model"], pretrained=params["pretrained"]).to(device)
    optimizer = optim.SGD(model.parameters(), lr=params["lr"], momentum=params["momentum"])

    epochs = []
    for _ in range(params["epochs"]):
        started = time.perf_counter()
        model.train()
        for images, target in train_loader:
            images, target = images.to(device), target.to(device)
            optimizer.zero_grad()
            output = model(images)
            criterion = nn.CrossEntropyLoss()
            loss = criterion(output, target)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch = {"train_seconds": time.perf_counter() - started}
        if evaluate:
            epoch.update(tutorial_test(model, device, test_loader))
        epochs.append(epoch)
    return epochs


def tutorial_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device, *, shuffle: bool) -> DataLoader:
    """The tutorial's loader: ToTensor and Normalize per PIL image, its DataLoader kwargs."""
    kwargs = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    return DataLoader(TutorialCIFAR(images, labels, transform), batch_size=batch_size, shuffle=shuffle, **kwargs)


def tutorial_test(model: nn.Module, device: torch.device, test_loader: DataLoader) -> dict[str, float]:
    model.eval()
    test_loss = 0.0
    correct = 0
    with torch.no_grad():
        for images, target in test_loader:
            images, target = images.to(device), target.to(device)
            output = model(images)
            criterion = nn.CrossEntropyLoss(reduction="sum")
            test_loss += criterion(output, target).item()
            pred = output.max(1, keepdim=True)[1]
            correct += pred.eq(target.view_as(pred)).sum().item()
    count = len(test_loader.dataset)
    return {"test_accuracy": 100.0 * correct / count, "test_loss": test_loss / count}
