"""The models: torchvision's ResNet-18 as the tutorial uses it, and a CIFAR-shaped variant; and
a form of their convolutions that skips the arithmetic on zero padding, for small maps on the CPU."""

import torch
import torch.nn.functional as F
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


# ---------------------------------------------------------------------------------------------
# Convolutions over maps smaller than their kernel's reach
# ---------------------------------------------------------------------------------------------


def live_taps(size: int, kernel: int, stride: int, padding: int) -> tuple[int, int] | None:
    """The kernel taps [first, last + 1) that meet the input somewhere along one axis of `size`
    pixels, when they are fewer than `kernel`; else None. A tap outside them multiplies zero
    padding at every output position, so leaving it out (and as much padding) changes nothing."""
    outputs = (size + 2 * padding - kernel) // stride + 1
    first = max(0, padding - (outputs - 1) * stride)
    last = min(kernel - 1, size - 1 + padding)
    if outputs < 1 or first > last or (first == 0 and last == kernel - 1):
        return None  # an input too small for the kernel, one that no tap meets, or nothing to skip
    if (size + 2 * (padding - first) - (last - first + 1)) // stride + 1 != outputs:
        return None
    return first, last + 1


class PaddingAwareConv2d(nn.Conv2d):
    """A Conv2d that leaves out the taps which only meet zero padding for the input at hand.

    On 32x32 inputs torchvision's resnet18 reaches layer4 with 1x1 maps, where each 3x3
    convolution reduces to its centre tap: the other eight ninths multiply padding. oneDNN
    computes them anyway, and on the CPU its backward pass is slow at that shape. Same parameters,
    outputs and gradients (the left-out taps' gradients are zero either way)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode == "zeros" and not isinstance(self.padding, str) and self.dilation == (1, 1):
            rows = live_taps(input.shape[-2], self.kernel_size[0], self.stride[0], self.padding[0])
            columns = live_taps(input.shape[-1], self.kernel_size[1], self.stride[1], self.padding[1])
            if rows or columns:
                top, bottom = rows or (0, self.kernel_size[0])
                left, right = columns or (0, self.kernel_size[1])
                padding = (self.padding[0] - top, self.padding[1] - left)
                return F.conv2d(input, weight[:, :, top:bottom, left:right], bias, self.stride, padding, 1, self.groups)
        return super()._conv_forward(input, weight, bias)


def skip_padding_taps(model: nn.Module) -> nn.Module:
    """Make every plain Conv2d of `model` a PaddingAwareConv2d, in place. The parameters (and any
    hooks on them) and the state dict stay as they are."""
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = PaddingAwareConv2d
    return model
