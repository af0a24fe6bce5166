"""The recipe `mnist-cnn`: what trainboard's app needs of it, without torch.

The parameter model makes the form, the API's validation, `trainboard recipes mnist-cnn` and
sweep checks; trainboard adds the fields every job has (name, tags, seed, use_cuda, W&B's,
checkpoint_every). `train` names the function the training process imports.
"""

from typing import Literal

from pydantic import BaseModel, Field

from app.recipes import Metric, Recipe


class Params(BaseModel):
    dataset: Literal["mnist", "fashion-mnist"] = Field(
        default="mnist", title="Data set", description="MNIST digits or Fashion-MNIST clothes, 28x28 grey images",
    )
    epochs: int = Field(default=3, ge=1, le=100, title="Epochs", description="Passes over the training set")
    batch_size: int = Field(default=64, ge=1, le=4096, title="Batch size", description="Training batch size")
    lr: float = Field(default=0.05, gt=0, le=1, title="Learning rate", description="SGD learning rate")
    momentum: float = Field(default=0.9, ge=0, lt=1, title="Momentum", description="SGD momentum")
    channels: int = Field(default=16, ge=4, le=128, title="Channels", description="Width of the first convolution")
    train_subset: int | None = Field(
        default=None, ge=1, le=60000, title="Training images", description="Train on the first N images only",
    )
    test_subset: int | None = Field(
        default=None, ge=1, le=10000, title="Test images", description="Evaluate on the first N images only",
    )
    log_interval: int = Field(default=10, ge=1, le=10000, title="Log interval", description="Log train loss every N batches")


recipe = Recipe(
    name="mnist-cnn",
    title="Small CNN on MNIST",
    version="1.0",
    description="Two convolutions and a linear layer on MNIST or Fashion-MNIST, read from TRAINBOARD_DATA_DIR",
    params=Params,
    train="trainboard_mnist.train:train",
    metrics=(
        Metric("test_accuracy", "maximize", "Test Accuracy"),
        Metric("test_loss", "minimize", "Test Loss"),
        Metric("train_loss", "minimize", "Train Loss"),
    ),
    checkpoints=True,
)
