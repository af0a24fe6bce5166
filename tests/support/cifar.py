"""Data sets in the CIFAR-10 python format (pickled batches, as torchvision reads them), made up by
the tests and the benchmarks so that neither needs a download."""

import pickle
from pathlib import Path

import numpy as np

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_BATCHES = 5


def write_batches(root: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> Path:
    """Write (uint8 images N x 3 x 32 x 32, labels) as CIFAR-10's five train batches and its test
    batch under root/cifar-10-batches-py; returns root, the data directory to train from."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, label: str, images: np.ndarray, labels: np.ndarray) -> None:
        batch = {
            "batch_label": label, "labels": [int(value) for value in labels], "data": images.reshape(len(images), 3072),
            "filenames": [f"{label}_{index}.png" for index in range(len(images))],
        }
        with open(folder / name, "wb") as stream:
            pickle.dump(batch, stream)

    chunks = zip(np.array_split(train[0], TRAIN_BATCHES), np.array_split(train[1], TRAIN_BATCHES))
    for index, (images, labels) in enumerate(chunks, start=1):
        dump(f"data_batch_{index}", f"training batch {index} of {TRAIN_BATCHES}", images, labels)
    dump("test_batch", "testing batch 1 of 1", *test)
    per_batch = -(-len(train[0]) // TRAIN_BATCHES)
    with open(folder / "batches.meta", "wb") as stream:
        pickle.dump({"label_names": CIFAR_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, stream)
    return root
