"""The paper's training recipe: its network per data set, Adam with a cyclical learning rate, LR range test.

The library's `AdversarialModel` trains any model with any optimizer; this
module is the train command's choice of both, from a run configuration
(see `keras_pnil.runs.training_config`).
"""

from __future__ import annotations

import contextlib
import json
import os

import keras
import tensorflow as tf

from keras_pnil import models
from keras_pnil.methods import get_method
from keras_pnil.schedules import CoupledSGD, CyclicalLearningRate, MultipliedAdam, OneCycleLearningRate, lr_range_test
from keras_pnil.training import AdversarialModel, adversarial

STRATEGIES = ("default", "mirrored", "multi_worker")
LR_SCHEDULES = ("cyclical", "one_cycle", "cyclic_lr")
OPTIMIZERS = ("adam", "sgd")
# PyTorch's CyclicLR cycles SGD's momentum by default (cycle_momentum=True, base_momentum=0.8, max_momentum=0.9).
CYCLIC_BASE_MOMENTUM = 0.8


def method_options(config: dict) -> dict:
    """The training method's constructor keywords, from the run configuration (see its registration)."""
    return get_method(config["method"]).method_keywords(config, config["epsilon"])


def build_trainer(config: dict) -> AdversarialModel:
    """The data set's network (with a PNIL first if asked), wrapped for the configured training method."""
    pnil = {"bias_initializer": keras.initializers.Constant(config["pnil_bias"])} if config["pnil"] else False
    # A Wide ResNet's size is the run's `depth` and `width` (the other networks have one size).
    size = {k: config[k] for k in ("depth", "width")} if config["architecture"] == "wide_resnet" else {}
    model = models.for_dataset(config["dataset"], pnil=pnil, seed=config["seed"], architecture=config["architecture"],
                               **size)
    return adversarial(model, config["method"], config["epsilon"], config.get("norm", "linf"), **method_options(config))


def learning_rate(config: dict, steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """The configured schedule: "cyclical" (the paper, after Smith: half-cycles of 2 epochs between
    `base_lr` and `max_lr`), "one_cycle" (Wong et al.'s MNIST code: 0 → `max_lr` at 2/5 of the run → 0) or
    "cyclic_lr" (Wong et al.'s CIFAR-10 code, PyTorch's `CyclicLR`: 0 → `max_lr` at the middle → 0, per step,
    the first update at rate 0)."""
    total_steps = config["epochs"] * steps_per_epoch
    if config["lr_schedule"] == "one_cycle":
        return OneCycleLearningRate(config["max_lr"], total_steps=total_steps)
    if config["lr_schedule"] == "cyclic_lr":
        return OneCycleLearningRate(config["max_lr"], total_steps=total_steps, peak_fraction=0.5, step_offset=0)
    return CyclicalLearningRate(config["base_lr"], config["max_lr"], step_size=2 * steps_per_epoch)


def optimizer_options(config: dict) -> dict:
    """`make_optimizer`'s keywords from a run configuration: under the "cyclic_lr" schedule (PyTorch's
    `CyclicLR`), SGD's momentum cycles as `CyclicLR` cycles it by default, from `momentum` at rate 0 to
    `CYCLIC_BASE_MOMENTUM` at the peak."""
    cycled = config["optimizer"] == "sgd" and config["lr_schedule"] == "cyclic_lr"
    return {"optimizer": config["optimizer"], "momentum": config["momentum"], "weight_decay": config["weight_decay"],
            "base_momentum": CYCLIC_BASE_MOMENTUM if cycled else None}


def make_optimizer(schedule, pnil_lr_multiplier: float = 1.0, optimizer: str = "adam", momentum: float = 0.9,
                   weight_decay: float = 0.0, base_momentum: float | None = None) -> keras.optimizers.Optimizer:
    """Adam (0.9, 0.999; the paper's) or "sgd": PyTorch's SGD with `momentum` and coupled L2 `weight_decay`
    (`CoupledSGD`, the CIFAR-10 references'; cycled down to `base_momentum` at the schedule's peak if given),
    with `schedule`, times `pnil_lr_multiplier` for the PNIL's W and B.

    Example:
        >>> make_optimizer(0.1, optimizer="sgd", weight_decay=5e-4).coupled_weight_decay
        0.0005
    """
    multipliers = {"pnil/": pnil_lr_multiplier}
    if optimizer == "sgd":
        return CoupledSGD(multipliers, learning_rate=schedule, momentum=momentum, weight_decay=weight_decay,
                          base_momentum=base_momentum)
    return MultipliedAdam(multipliers, learning_rate=schedule, beta_1=0.9, beta_2=0.999)


def compile_trainer(trainer: keras.Model, schedule: keras.optimizers.schedules.LearningRateSchedule,
                    pnil_lr_multiplier: float = 1.0, **optimizer_options) -> None:
    """`make_optimizer`'s optimizer (Adam unless `optimizer_options` say otherwise) with `schedule`, sparse
    cross-entropy on logits, accuracy."""
    trainer.compile(optimizer=make_optimizer(schedule, pnil_lr_multiplier, **optimizer_options),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def range_test_bounds(config: dict, train_ds) -> tuple[list, tuple[float, float]]:
    """Smith's LR range test on a fresh copy of the configured trainer: `(history, (base_lr, max_lr))`."""
    probe = build_trainer(config)
    probe.compile(optimizer=keras.optimizers.Adam(1e-5), steps_per_execution=1,  # the ramp moves every batch
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return lr_range_test(probe, train_ds, min_lr=1e-5, max_lr=1e-1)


@contextlib.contextmanager
def precision(mixed: bool):
    """Within this context, networks are built under Keras' `mixed_float16` policy if `mixed` (float16
    compute, float32 variables; `compile` then wraps the optimizer in Keras' `LossScaleOptimizer`, and the
    attacks' input gradients are loss-scaled per image: `keras_pnil.attacks.eot.scaled_backward`); the
    global policy is restored after.

    Example:
        >>> with precision(True):
        ...     trainer = build_trainer(config)  # doctest: +SKIP
    """
    previous = keras.config.dtype_policy()
    if mixed:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def strategy(name: str) -> tf.distribute.Strategy:
    """The distribution strategy named `name`: "default" (one device), "mirrored" (all local devices) or
    "multi_worker" (all devices of the machines named in the `TF_CONFIG` environment variable).

    A strategy is created once per process: TensorFlow allows one multi-worker strategy, created before
    any other collective operation.
    """
    if name not in _STRATEGIES:
        _STRATEGIES[name] = {"mirrored": tf.distribute.MirroredStrategy,
                             "multi_worker": tf.distribute.MultiWorkerMirroredStrategy}.get(
                                 name, tf.distribute.get_strategy)()
    return _STRATEGIES[name]


_STRATEGIES: dict[str, tf.distribute.Strategy] = {}


def worker_index() -> int | None:
    """This process's place among the chief and the workers of `TF_CONFIG`, the chief first (0: the chief, or
    worker 0 of a cluster without one), or None without one.

    Example:
        >>> os.environ["TF_CONFIG"] = json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
        ...                                       "task": {"type": "worker", "index": 0}})  # doctest: +SKIP
        >>> worker_index()  # doctest: +SKIP
        1
    """
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = config.get("task", {})
    if task.get("type") not in ("worker", "chief"):
        return None
    chiefs = len(config.get("cluster", {}).get("chief", [])) if task["type"] == "worker" else 0
    return chiefs + int(task.get("index", 0))
