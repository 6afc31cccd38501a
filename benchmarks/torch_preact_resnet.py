"""Wong et al.'s PreActResNet-18 in PyTorch, and a copy of its weights into `kp.models.preact_resnet18`.

The network of "Fast is better than free" (`CIFAR10/preact_resnet.py`), written out here layer for layer so
that the benchmarks time the same network on both sides and attack the same weights. Its modules are named
as the Keras layers with "." for "_" (`layer2.0.conv1` is `layer2_0_conv1`; the shortcut is a bare
convolution rather than their one-element `Sequential`, and the classifier is `logits`), which is all the
weight copy needs. PyTorch is an optional benchmark dependency (`pip install torch`, the CPU wheel).
"""

from __future__ import annotations

import keras
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (64, 128, 256, 512)


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice; the shortcut, a 1×1 convolution where the shape changes, takes the raw input."""

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        changes = stride != 1 or in_channels != width
        self.shortcut = nn.Conv2d(in_channels, width, 1, stride=stride, bias=False) if changes else nn.Identity()

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        return self.conv2(F.relu(self.bn2(out))) + self.shortcut(x)


class PreActResNet18(nn.Module):
    """Conv 64, four stages of two `PreActBlock`s, BN-ReLU, average pooling, logits; inputs NCHW."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, WIDTHS[0], 3, padding=1, bias=False)
        channels = WIDTHS[0]
        for stage, width in enumerate(WIDTHS, start=1):
            blocks = [PreActBlock(channels, width, 2 if stage > 1 else 1), PreActBlock(width, width, 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            channels = width
        self.bn = nn.BatchNorm2d(channels)
        self.logits = nn.Linear(channels, num_classes)

    def forward(self, x):
        out = self.conv1(x)
        for stage in range(1, len(WIDTHS) + 1):
            out = getattr(self, f"layer{stage}")(out)
        out = F.relu(self.bn(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().float().numpy()


def copy_weights(source: nn.Module, target: keras.Model) -> keras.Model:
    """Sets `target`'s (a `kp.models.preact_resnet18`) weights, BatchNorm statistics included, to `source`'s."""
    copied = 0
    for name, module in source.named_modules():
        if isinstance(module, nn.Conv2d):
            weights = [_as_numpy(module.weight).transpose(2, 3, 1, 0)]  # OIHW → HWIO
        elif isinstance(module, nn.BatchNorm2d):
            weights = [_as_numpy(t) for t in (module.weight, module.bias, module.running_mean, module.running_var)]
        elif isinstance(module, nn.Linear):
            weights = [_as_numpy(module.weight).T, _as_numpy(module.bias)]
        else:
            continue
        target.get_layer(name.replace(".", "_")).set_weights(weights)
        copied += 1
    expected = sum(1 for layer in target.layers if layer.weights and layer.name != "pnil")
    if copied != expected:
        raise ValueError(f"Copied {copied} layers into {target.name!r}, which has {expected} with weights: not the "
                         f"same network. Received: source={type(source).__name__}")
    return target
