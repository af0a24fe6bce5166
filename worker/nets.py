"""The models: torchvision's ResNet-18 as the tutorial uses it, and a CIFAR-shaped variant."""

import torch
from torch import nn
from torchvision.models import ResNet, ResNet18_Weights, resnet18

from worker.reporter import first_line

NUM_CLASSES = 10


class WeightsError(RuntimeError):
    """Pretrained weights could not be had; the message says what to do."""


def build_model(name: str, *, pretrained: bool, num_classes: int = NUM_CLASSES) -> ResNet:
    """resnet18: torchvision's (7x7 stem, max-pool). resnet18_cifar: 3x3 stem, no max-pool.

    Pretrained weights are ImageNet's through torchvision's weights API; the classifier is
    replaced by a fresh one with `num_classes` outputs (the tutorial kept ImageNet's 1000).
    """
    model = resnet18()
    if pretrained:
        model.load_state_dict(_imagenet_state_dict())
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    if name == "resnet18_cifar":
        # 32x32 inputs: keep the full resolution into the first stage instead of dividing it by 4.
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif name != "resnet18":
        raise ValueError(f"unknown model {name!r}")
    return model


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet's ResNet-18 weights, downloaded once into the torch hub cache and read once."""
    weights = ResNet18_Weights.IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        reason = first_line(exc)
        checkpoints = f"{torch.hub.get_dir()}/checkpoints"
        raise WeightsError(
            f"the pretrained ResNet-18 weights could not be downloaded: {reason}; "
            f"set pretrained=false, or place {weights.url.rsplit('/', 1)[-1]} in {checkpoints}"
        ) from exc
