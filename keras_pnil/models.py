"""The paper's networks (a small CNN for (Fashion-)MNIST, ResNet11 for CIFAR-10) and Wong et al.'s MNIST net.

All output logits and take `pnil=True` to put a PixelwiseNoiseInjection first (or `pnil={...}`, the layer's
constructor arguments, e.g. `{"bias_initializer": keras.initializers.Constant(-3.0)}`).
"""

from __future__ import annotations

import keras
from keras import layers

from keras_pnil.data import IMAGE_SHAPES, check_dataset_name
from keras_pnil.layers import PixelwiseNoiseInjection
from keras_pnil.validation import check_choice


def _has_pnil(pnil: bool | dict) -> bool:
    return isinstance(pnil, dict) or bool(pnil)


def _input(input_shape, pnil: bool | dict, seed: int | None):
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    options = pnil if isinstance(pnil, dict) else {}
    x = PixelwiseNoiseInjection(seed=seed, name="pnil", **options)(inputs) if _has_pnil(pnil) else inputs
    return inputs, x


def small_cnn(
    input_shape=(28, 28, 1),
    num_classes: int = 10,
    pnil: bool | dict = False,
    filters: tuple[int, int] = (32, 64),
    dense_units: int = 1024,
    seed: int | None = None,
) -> keras.Model:
    """Two 5×5 convolutions (each followed by 2×2 max-pooling), a dense layer, logits.

    The defaults are the classic network for this description (32 and 64
    filters, 1024 hidden units, as in Madry et al.'s MNIST model); smaller
    widths serve quick tests.
    """
    inputs, x = _input(input_shape, pnil, seed)
    for i, width in enumerate(filters):
        x = layers.Conv2D(width, 5, padding="same", activation="relu", name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense_units, activation="relu", name="fc")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="small_cnn_pnil" if _has_pnil(pnil) else "small_cnn")


def wong_mnist(
    input_shape=(28, 28, 1),
    num_classes: int = 10,
    pnil: bool | dict = False,
    seed: int | None = None,
) -> keras.Model:
    """Wong et al.'s MNIST network ("Fast is better than free", `MNIST/mnist_net.py`).

    Conv 16 4×4 stride 2, conv 32 4×4 stride 2 (each ReLU, padding 1, which
    "same" padding equals on 28×28 inputs: 28 → 14 → 7), a dense layer of 100
    ReLU units, logits. Small enough that the full published MNIST ε = 0.3
    budget trains in minutes on a CPU. Keras' default initialisers (Glorot
    uniform, zero biases), not PyTorch's.
    """
    inputs, x = _input(input_shape, pnil, seed)
    x = layers.Conv2D(16, 4, strides=2, padding="same", activation="relu", name="conv1")(x)
    x = layers.Conv2D(32, 4, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(100, activation="relu", name="fc")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="wong_mnist_pnil" if _has_pnil(pnil) else "wong_mnist")


def _conv_bn(x, width: int, name: str):
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def resnet11(
    input_shape=(32, 32, 3),
    num_classes: int = 10,
    pnil: bool | dict = False,
    widths: tuple[int, int, int, int] = (64, 128, 256, 512),
    seed: int | None = None,
) -> keras.Model:
    """A residual network with eleven weight layers, for CIFAR-10.

    Definition (the DAWNBench ResNet-9 layout with a residual block in every
    stage): a 3×3 conv-BN-ReLU stem of `widths[0]` channels; then three stages,
    each a conv-BN-ReLU of `widths[i]` channels, 2×2 max-pooling, and a
    residual block of two conv-BN-ReLU layers added to its input; global max
    pooling; a dense layer to the logits. 1 + 3 × 3 + 1 = 11 weight layers.
    """
    inputs, x = _input(input_shape, pnil, seed)
    x = _conv_bn(x, widths[0], "stem")
    for stage, width in enumerate(widths[1:], start=1):
        x = _conv_bn(x, width, f"stage{stage}")
        x = layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
        residual = _conv_bn(x, width, f"stage{stage}_res1")
        residual = _conv_bn(residual, width, f"stage{stage}_res2")
        x = layers.Add(name=f"stage{stage}_add")([x, residual])
    x = layers.GlobalMaxPooling2D()(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="resnet11_pnil" if _has_pnil(pnil) else "resnet11")


ARCHITECTURES = {"small_cnn": small_cnn, "resnet11": resnet11, "wong_mnist": wong_mnist}


def default_architecture(dataset: str) -> str:
    """The paper's network for `dataset`: ResNet11 for CIFAR-10, else the small CNN."""
    check_dataset_name(dataset)
    return "resnet11" if dataset == "cifar10" else "small_cnn"


def for_dataset(dataset: str, pnil: bool | dict = False, seed: int | None = None, architecture: str | None = None,
                **kwargs) -> keras.Model:
    """The network `architecture` (default: the paper's for `dataset`) for `dataset`'s images."""
    architecture = architecture or default_architecture(dataset)
    check_choice("architecture", architecture, ARCHITECTURES)
    return ARCHITECTURES[architecture](IMAGE_SHAPES[dataset], pnil=pnil, seed=seed, **kwargs)
