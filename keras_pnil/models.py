"""The paper's networks (a small CNN for (Fashion-)MNIST, ResNet11 for CIFAR-10), Wong et al.'s MNIST net, and
the CIFAR-10 networks of the one-step literature: PreActResNet-18 and the TRADES / RobustBench Wide ResNets.

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


# PyTorch's BatchNorm2d defaults, which every CIFAR-10 reference trains with (Keras': momentum 0.99, epsilon 1e-3).
_TORCH_BN = {"momentum": 0.9, "epsilon": 1e-5}
# PyTorch's default for convolution and linear weights (kaiming_uniform with a = √5): U(±1/√fan_in).
_TORCH_DEFAULT_INIT = keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform")
# TRADES' Wide ResNet initialises its convolutions N(0, 2 / (k² · out_channels)).
_HE_FAN_OUT = keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def _bn_relu(x, name: str):
    x = layers.BatchNormalization(**_TORCH_BN, name=name)(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _conv(x, width: int, kernel: int, stride: int, name: str, initializer):
    """A bias-free convolution padded as PyTorch's `padding=kernel // 2`, evenly on both sides.

    Keras' "same" pads a strided 3×3 convolution of an even-sized image only after it, which shifts
    every window by a pixel against the PyTorch references (and their trained weights).
    """
    if stride > 1 and kernel > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    padding = "valid" if stride > 1 or kernel == 1 else "same"
    return layers.Conv2D(width, kernel, strides=stride, padding=padding, use_bias=False,
                         kernel_initializer=initializer, name=name)(x)


def _classifier(x, num_classes: int, bias_initializer="zeros"):
    """The final BN-ReLU, global average pooling (PyTorch's `avg_pool2d` over the whole map) and the logits."""
    x = _bn_relu(x, "bn")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return layers.Dense(num_classes, kernel_initializer=_TORCH_DEFAULT_INIT, bias_initializer=bias_initializer,
                        name="logits")(x)


def _preact_block(x, width: int, stride: int, name: str):
    """Wong et al.'s `PreActBlock`: BN-ReLU-conv twice; the shortcut (a 1×1 conv when the shape changes) takes the
    block's raw input."""
    out = _bn_relu(x, f"{name}_bn1")
    shortcut = x
    if stride != 1 or x.shape[-1] != width:
        shortcut = _conv(x, width, 1, stride, f"{name}_shortcut", _TORCH_DEFAULT_INIT)
    out = _conv(out, width, 3, stride, f"{name}_conv1", _TORCH_DEFAULT_INIT)
    out = _conv(_bn_relu(out, f"{name}_bn2"), width, 3, 1, f"{name}_conv2", _TORCH_DEFAULT_INIT)
    return layers.Add(name=f"{name}_add")([out, shortcut])


def preact_resnet18(
    input_shape=(32, 32, 3),
    num_classes: int = 10,
    pnil: bool | dict = False,
    seed: int | None = None,
    widths: tuple[int, int, int, int] = (64, 128, 256, 512),
) -> keras.Model:
    """PreActResNet-18 as Wong et al. ("Fast is better than free", `CIFAR10/preact_resnet.py`) and de Jorge et
    al. (N-FGSM) train it on CIFAR-10.

    A 3×3 conv of 64 channels; four stages of two pre-activation blocks (64, 128, 256, 512 channels, the
    last three starting with stride 2); BN-ReLU, global average pooling, logits. Layer for layer theirs:
    11,172,170 trainable parameters for 10 classes, BatchNorm as PyTorch's (momentum 0.1, ε = 1e-5),
    PyTorch's default initialisers, strided convolutions padded on both sides. Their input normalisation
    is left out: inputs are pixels in [0, 1].

    Args:
        input_shape: One image's shape, channels last.
        num_classes: Number of logits.
        pnil: Whether to put a `PixelwiseNoiseInjection` first (or a dict of its constructor arguments).
        seed: The PNIL's noise seed.
        widths: The four stages' channels (the stem has `widths[0]`); narrower than theirs only for quick tests.

    Example:
        >>> model = kp.models.preact_resnet18(pnil=True)  # doctest: +SKIP
        >>> model(x_test[:8]).shape  # doctest: +SKIP
        TensorShape([8, 10])
    """
    inputs, x = _input(input_shape, pnil, seed)
    x = _conv(x, widths[0], 3, 1, "conv1", _TORCH_DEFAULT_INIT)
    for stage, width in enumerate(widths, start=1):
        for block in range(2):
            x = _preact_block(x, width, 2 if stage > 1 and block == 0 else 1, f"layer{stage}_{block}")
    outputs = _classifier(x, num_classes, bias_initializer=_TORCH_DEFAULT_INIT)
    return keras.Model(inputs, outputs, name="preact_resnet18_pnil" if _has_pnil(pnil) else "preact_resnet18")


def _wide_block(x, width: int, stride: int, name: str):
    """TRADES' `BasicBlock`: BN-ReLU-conv twice; when the width changes, the shortcut is a 1×1 conv of the
    pre-activated input, else the raw input."""
    act = _bn_relu(x, f"{name}_bn1")
    shortcut = x if x.shape[-1] == width and stride == 1 else _conv(act, width, 1, stride, f"{name}_shortcut",
                                                                     _HE_FAN_OUT)
    out = _conv(act, width, 3, stride, f"{name}_conv1", _HE_FAN_OUT)
    out = _conv(_bn_relu(out, f"{name}_bn2"), width, 3, 1, f"{name}_conv2", _HE_FAN_OUT)
    return layers.Add(name=f"{name}_add")([shortcut, out])


def wide_resnet(
    input_shape=(32, 32, 3),
    num_classes: int = 10,
    pnil: bool | dict = False,
    depth: int = 34,
    width: int = 10,
    seed: int | None = None,
) -> keras.Model:
    """The Wide ResNet WRN-`depth`-`width` of TRADES (`models/wideresnet.py`) and RobustBench, for CIFAR-10.

    A 3×3 conv of 16 channels; three stages of (depth - 4) / 6 pre-activation blocks of 16·width,
    32·width and 64·width channels (the last two starting with stride 2); BN-ReLU, global average
    pooling, logits. No dropout (TRADES trains with none). Trainable parameters for 10 classes:
    WRN-34-10 46,160,474 and WRN-28-10 36,479,194, as the PyTorch networks' (TRADES' file also
    builds an unused `sub_block1` whose weights never reach the output; it is left out).

    Args:
        input_shape: One image's shape, channels last.
        num_classes: Number of logits.
        pnil: Whether to put a `PixelwiseNoiseInjection` first (or a dict of its constructor arguments).
        depth: Weight layers; (depth - 4) must be a multiple of 6 (28 and 34 are the usual).
        width: The widening factor k.
        seed: The PNIL's noise seed.

    Example:
        >>> model = kp.models.wide_resnet(depth=28, width=10)  # doctest: +SKIP
        >>> model.count_params()  # doctest: +SKIP
    """
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"`depth` must be 6n + 4 for some n >= 1 (28 and 34 are the usual). Received: depth={depth}")
    inputs, x = _input(input_shape, pnil, seed)
    x = _conv(x, 16, 3, 1, "conv1", _HE_FAN_OUT)
    for stage, channels in enumerate((16 * width, 32 * width, 64 * width), start=1):
        for block in range((depth - 4) // 6):
            x = _wide_block(x, channels, 2 if stage > 1 and block == 0 else 1, f"block{stage}_{block}")
    outputs = _classifier(x, num_classes)
    name = f"wrn_{depth}_{width}"
    return keras.Model(inputs, outputs, name=f"{name}_pnil" if _has_pnil(pnil) else name)


ARCHITECTURES = {"small_cnn": small_cnn, "resnet11": resnet11, "wong_mnist": wong_mnist,
                 "preact_resnet18": preact_resnet18, "wide_resnet": wide_resnet}


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
