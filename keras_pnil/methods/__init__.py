"""Training methods: what a train step trains on, and which loss terms it adds, one module per method.

A method is a `Method` (`base`): the inputs Keras' own train step trains on,
and optional extra loss terms added under Keras' tape. Each module registers
its method with `register` (`registry`), declaring its options; the train
command's flags, the run configuration, validation and the cost model come
from that registration. A method with a version in other norms than L∞ lists
them in `norms` (rfgsm, nfgsm, pgd, fgsm, trades: L2; clean: all); the others
refuse `norm="l2"` in one line, naming those that have one.

Example (a new method is one class and one registration):
    >>> import tensorflow as tf
    >>> from keras_pnil.methods import Method, MethodSpec, Option, positive, register, uniform
    >>> class Noise(Method):  # trains on x + U(-sε, sε)
    ...     name = "noise"
    ...     def __init__(self, epsilon, scale=1.0):
    ...         super().__init__(epsilon)
    ...         self.scale = scale
    ...     def __call__(self, model_fn, x, y):
    ...         return tf.clip_by_value(x + uniform(x, self.scale * self.epsilon), 0.0, 1.0)
    >>> _ = register(MethodSpec("noise", Noise, (Option("noise_scale", 1.0, positive, "noise in units of ε",
    ...                                                 keyword="scale"),)))  # doctest: +SKIP
    >>> # now: keras-pnil-train --method noise --noise-scale 2, or kp.adversarial(model, "noise", 0.3, scale=2)
"""

from keras_pnil.methods import clean, elle, fgsm, gradalign, nfgsm, pgd, rfgsm, trades  # noqa: F401 (registers)
from keras_pnil.methods.base import Batch, Method, Penalty, uniform, uniform_ball
from keras_pnil.methods.clean import Clean
from keras_pnil.methods.elle import ELLE
from keras_pnil.methods.fgsm import FGSM
from keras_pnil.methods.gradalign import GradAlign
from keras_pnil.methods.nfgsm import NFGSM
from keras_pnil.methods.pgd import PGD
from keras_pnil.methods.registry import (
    GRADIENT_COST,
    METHODS,
    STEP_COST,
    MethodSpec,
    Option,
    all_options,
    build,
    count,
    get_method,
    methods_with_norm,
    optional_positive,
    positive,
    register,
    switch,
)
from keras_pnil.methods.rfgsm import RFGSM
from keras_pnil.methods.trades import TRADES

__all__ = ["Batch", "Method", "Penalty", "uniform", "uniform_ball", "Clean", "ELLE", "FGSM", "GradAlign", "NFGSM",
           "PGD", "RFGSM", "TRADES", "GRADIENT_COST", "METHODS", "STEP_COST", "MethodSpec", "Option", "all_options",
           "build", "count", "get_method", "methods_with_norm", "optional_positive", "positive", "register", "switch"]
