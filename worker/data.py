"""Data sets as uint8 tensors: CIFAR-10 through torchvision (decoded once, then cached), or synthetic.

The training loop never touches PIL: the whole set lives on the training device as one uint8
tensor, and batches are gathered and normalised there.
"""

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import datasets

from worker.reporter import first_line

CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_CACHE_NAME = "cifar10-uint8.pt"
TENSOR_NAMES = ("train_images", "train_labels", "test_images", "test_labels")
SYNTHETIC_TRAIN_SIZE = 10000
SYNTHETIC_TEST_SIZE = 2000


class DataError(RuntimeError):
    """A data set could not be had; the message says what to do."""


@dataclass
class ImageSet:
    train_images: torch.Tensor  # uint8, N x 3 x 32 x 32
    train_labels: torch.Tensor  # int64, N
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...] = CLASSES

    def to(self, device: torch.device) -> "ImageSet":
        return ImageSet(
            *(t.to(device, non_blocking=True) for t in (self.train_images, self.train_labels, self.test_images, self.test_labels)),
            classes=self.classes,
        )

    def subset(self, train: int | None, test: int | None) -> "ImageSet":
        return ImageSet(
            self.train_images[:train], self.train_labels[:train], self.test_images[:test], self.test_labels[:test], self.classes
        )


def load(name: str, data_dir: Path, *, verify: bool) -> ImageSet:
    if name == "synthetic":
        return synthetic()
    if name == "cifar10":
        return cifar10(data_dir, verify=verify)
    raise DataError(f"unknown dataset {name!r}")


# ---------------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------------


class _UnverifiedCIFAR10(datasets.CIFAR10):
    """Loads a folder in the CIFAR-10 python format without checking its files' MD5 sums."""

    def _check_integrity(self) -> bool:
        files = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return all((Path(self.root) / self.base_folder / name).is_file() for name in files)

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as stream:
            self.classes = pickle.load(stream, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}


def cifar10(data_dir: Path, *, verify: bool) -> ImageSet:
    """CIFAR-10 decoded into uint8 tensors once and cached next to the download.

    The cache records the size and modification time of each file it was decoded from (and whether
    their checksums were verified), and is rebuilt when those no longer match: replacing the data
    set in place never trains on stale images. Loading it memory-maps one file, well under a second.
    """
    cache = data_dir / CIFAR_CACHE_NAME
    source = _source_files(data_dir)
    if cache.is_file() and source is not None:
        cached = torch.load(cache, weights_only=True, mmap=True)
        if cached.get("source") == source and (cached.get("verified") or not verify):
            return ImageSet(**{name: cached[name] for name in TENSOR_NAMES})

    data_dir.mkdir(parents=True, exist_ok=True)
    loader = datasets.CIFAR10 if verify else _UnverifiedCIFAR10
    try:
        train = loader(str(data_dir), train=True, download=True)
        test = loader(str(data_dir), train=False, download=True)
    except Exception as exc:  # urllib, checksum and archive errors all mean the same to the user
        reason = first_line(exc)
        raise DataError(
            f"CIFAR-10 is not in {data_dir} and the download failed: {reason}; "
            "place cifar-10-python.tar.gz there or allow network access"
        ) from exc

    def as_tensors(split):
        images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(split.targets, dtype=torch.int64)

    train_images, train_labels = as_tensors(train)
    test_images, test_labels = as_tensors(test)
    tensors = {"train_images": train_images, "train_labels": train_labels, "test_images": test_images, "test_labels": test_labels}
    partial = cache.with_suffix(f".{os.getpid()}.tmp")
    torch.save({**tensors, "source": _source_files(data_dir), "verified": verify}, partial)
    os.replace(partial, cache)
    return ImageSet(**tensors)


def _source_files(data_dir: Path) -> list[tuple[str, int, int]] | None:
    """(name, size, mtime_ns) of each file of the python-format data set, or None when one is missing."""
    folder = data_dir / datasets.CIFAR10.base_folder
    names = [name for name, _ in datasets.CIFAR10.train_list + datasets.CIFAR10.test_list] + [datasets.CIFAR10.meta["filename"]]
    try:
        stats = [(name, (folder / name).stat()) for name in names]
    except FileNotFoundError:
        return None
    return [(name, stat.st_size, stat.st_mtime_ns) for name, stat in stats]


# ---------------------------------------------------------------------------------------------
# Synthetic: ten classes, each a fixed smooth colour pattern under noise. Learnable in an epoch
# or two, generated in a fraction of a second, the same on every machine.
# ---------------------------------------------------------------------------------------------


def synthetic(train_size: int = SYNTHETIC_TRAIN_SIZE, test_size: int = SYNTHETIC_TEST_SIZE) -> ImageSet:
    generator = torch.Generator().manual_seed(20431)
    coarse = torch.rand(len(CLASSES), 3, 4, 4, generator=generator)
    templates = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)

    def draw(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, len(CLASSES), (count,), generator=generator)
        # In place: a third faster than a new tensor per step, and the same images to the bit.
        images = torch.randn(count, 3, 32, 32, generator=generator).mul_(0.25).add_(templates[labels])
        return images.clamp_(0, 1).mul_(255).round_().to(torch.uint8), labels

    train_images, train_labels = draw(train_size)
    test_images, test_labels = draw(test_size)
    return ImageSet(train_images, train_labels, test_images, test_labels)
