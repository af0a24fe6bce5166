"""Job presets: named sets of hyperparameters.

Plain data on purpose: bench/ resolves presets on GPU hosts that have torch and nothing of the web
stack. `TUTORIAL` is the tutorial's config and the default of every job field (JobCreate takes its
defaults from here); each preset in `PRESETS` lists the fields it changes.
"""

from typing import Any

TUTORIAL: dict[str, Any] = {
    "batch_size": 64,
    "test_batch_size": 1000,
    "epochs": 5,
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.1,
    "nesterov": False,
    "weight_decay": 0.0,
    "lr_schedule": "constant",
    "warmup_fraction": 0.0,
    "label_smoothing": 0.0,
    "augment": "none",
    "use_cuda": True,
    "precision": "auto",
    "channels_last": False,
    "compile": "off",
    "deterministic": True,
    "seed": 2043,
    "log_interval": 10,
    "model": "resnet18",
    "pretrained": True,
    "dataset": "cifar10",
    "train_subset": None,
    "test_subset": None,
    "tta": "none",
    "wandb_project": "thorough-pytorch",
    "wandb_entity": None,
    "wandb_mode": None,
    "wandb_watch": "all",
    "wandb_watch_freq": 1000,
    "checkpoint_every": 1,
}

# In the spirit of the published fast ResNet-18 CIFAR-10 runs (94% in 26 epochs at batch 500):
# the 3x3-stem network, Nesterov SGD on a triangular schedule, label smoothing, flip + translate +
# cutout drawn on the GPU, bf16 and channels_last, and flip test-time augmentation.
FAST94: dict[str, Any] = {
    "model": "resnet18_cifar",
    "pretrained": False,
    "batch_size": 500,
    "epochs": 26,
    "lr": 0.2,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "lr_schedule": "onecycle",
    "warmup_fraction": 0.2,
    "label_smoothing": 0.1,
    "augment": "flip_crop_cutout",
    "channels_last": True,
    "deterministic": False,
    "tta": "flip",
}

PRESETS: dict[str, dict[str, Any]] = {"tutorial": {}, "fast94": FAST94}


def resolve(preset: str = "tutorial", **overrides: Any) -> dict[str, Any]:
    """Every field's value for a preset, explicit overrides winning, as a job would store them."""
    return {**TUTORIAL, **PRESETS[preset], **overrides, "preset": preset}
