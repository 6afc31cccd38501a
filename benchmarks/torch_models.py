"""The benchmarks' PyTorch networks: Wong et al.'s MNIST net, and any plain Keras CNN copied into PyTorch.

`wong_mnist()` is the network of "Fast is better than free" (`MNIST/train_mnist.py`) as PyTorch builds it:
two 4×4 stride-2 convolutions (16, 32), a 100-unit layer and the logits, the same network as
`kp.models.wong_mnist`. `from_keras(model)` copies a Keras model made of a chain of `Conv2D`, `Flatten`,
`Dense`, `ReLU`/`Activation("relu")` and `MaxPooling2D` layers (`kp.models.wong_mnist` and
`kp.models.small_cnn` are) into the same network in PyTorch with the same weights, taking NCHW inputs; its
`Flatten` puts the channels last first, as Keras flattens, so the dense kernels copy as they are. Used by
`pytorch_reference.py` (training speed) and `autoattack_parity.py` (the official AutoAttack on our
models). PyTorch is an optional benchmark dependency (`pip install torch`, the CPU wheel).

    >>> torch_model = from_keras(kp.models.wong_mnist(seed=0))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    import keras  # imported where used: a script that only unpickles a copy needs no TensorFlow


def wong_mnist(num_classes: int = 10) -> nn.Sequential:
    """Wong et al.'s MNIST network in PyTorch with PyTorch's own initialisation; inputs NCHW 1×28×28."""
    return nn.Sequential(nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, num_classes))


class ChannelsLastFlatten(nn.Module):
    """Flattens NCHW activations in Keras' (NHWC) order."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1)


class SamePadding(nn.Module):
    """TensorFlow's "same" padding of a strided layer: the odd pixel, when there is one, goes right/bottom."""

    def __init__(self, kernel: tuple, stride: tuple):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x):
        pads = []
        for size, k, s in zip(reversed(x.shape[2:]), reversed(self.kernel), reversed(self.stride), strict=True):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return nn.functional.pad(x, pads)


def _activation(layer) -> list:
    name = getattr(layer.activation, "__name__", repr(layer.activation))
    if name == "relu":
        return [nn.ReLU()]
    if name == "linear":
        return []
    raise ValueError(f"layer {layer.name!r} has activation {name!r}; from_keras copies relu and linear only")


def _conv(layer: keras.layers.Conv2D) -> list:
    kernel, *bias = layer.get_weights()
    height, width, channels_in, channels_out = kernel.shape
    if layer.dilation_rate != (1, 1) or layer.groups != 1 or layer.data_format != "channels_last":
        raise ValueError(f"layer {layer.name!r}: from_keras copies plain channels-last convolutions only")
    conv = nn.Conv2d(channels_in, channels_out, (height, width), stride=layer.strides, bias=bool(bias))
    conv.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))  # HWIO → OIHW
    if bias:
        conv.bias.data = torch.from_numpy(bias[0].copy())
    padding = [SamePadding((height, width), layer.strides)] if layer.padding == "same" else []
    return [*padding, conv, *_activation(layer)]


def _dense(layer: keras.layers.Dense) -> list:
    kernel, *bias = layer.get_weights()
    linear = nn.Linear(*kernel.shape, bias=bool(bias))
    linear.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.T))
    if bias:
        linear.bias.data = torch.from_numpy(bias[0].copy())
    return [linear, *_activation(layer)]


def _pool(layer: keras.layers.MaxPooling2D) -> list:
    if layer.padding != "valid":
        raise ValueError(f"layer {layer.name!r}: from_keras copies valid max pooling only")
    return [nn.MaxPool2d(layer.pool_size, stride=layer.strides)]


def from_keras(model: keras.Model) -> nn.Sequential:
    """The same network as the Keras `model` (a chain of Conv2D, Flatten, Dense, ReLU, MaxPooling2D) in
    PyTorch, with its weights, in inference mode; it takes NCHW inputs and gives the same logits."""
    import keras

    modules = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.layers.Conv2D):
            modules += _conv(layer)
        elif isinstance(layer, keras.layers.Dense):
            modules += _dense(layer)
        elif isinstance(layer, keras.layers.Flatten):
            modules.append(ChannelsLastFlatten())
        elif isinstance(layer, keras.layers.MaxPooling2D):
            modules += _pool(layer)
        elif isinstance(layer, keras.layers.Activation):
            modules += _activation(layer)
        elif isinstance(layer, keras.layers.ReLU) and layer.get_config().get("max_value") is None:
            modules.append(nn.ReLU())
        else:
            raise ValueError(f"from_keras has no PyTorch copy of layer {layer.name!r} ({type(layer).__name__}); "
                             "it copies chains of Conv2D, Flatten, Dense, ReLU and MaxPooling2D")
    return nn.Sequential(*modules).eval()


def largest_logit_difference(keras_model: keras.Model, torch_model: nn.Module, x: np.ndarray,
                             batch_size: int = 500) -> float:
    """The largest absolute difference between the two models' logits on NHWC images `x`."""
    import keras

    largest = 0.0
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        theirs = torch_model(torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))).detach().numpy()
        ours = keras.ops.convert_to_numpy(keras_model(batch, training=False))
        largest = max(largest, float(np.abs(theirs - ours).max()))
    return largest
