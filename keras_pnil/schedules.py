"""Learning rates and optimizers: the paper's cyclical policy with Smith's range test, one cycle, per-layer
multipliers, and PyTorch's SGD with coupled weight decay (the CIFAR-10 references')."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="keras_pnil")
class CyclicalLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """Smith's triangular cyclical learning rate.

    The rate climbs linearly from `base_lr` to `max_lr` over `step_size`
    optimizer steps, falls back over the next `step_size`, and repeats.

    Args:
        base_lr: Lower bound (> 0).
        max_lr: Upper bound (>= base_lr).
        step_size: Half-cycle length in steps (Smith suggests 2-10 epochs' worth).
    """

    def __init__(self, base_lr: float, max_lr: float, step_size: int):
        if not base_lr > 0 or not max_lr >= base_lr:
            raise ValueError(f"Need 0 < base_lr <= max_lr; got base_lr={base_lr!r}, max_lr={max_lr!r}.")
        if not step_size >= 1:
            raise ValueError(f"step_size must be >= 1 optimizer step; got {step_size!r}.")
        self.base_lr, self.max_lr, self.step_size = float(base_lr), float(max_lr), int(step_size)

    def __call__(self, step):
        position = ops.cast(step, "float32") / self.step_size
        distance_to_peak = ops.abs(ops.mod(position, 2.0) - 1.0)  # 1 at the bounds, 0 at the peak
        return self.base_lr + (self.max_lr - self.base_lr) * (1.0 - distance_to_peak)

    def get_config(self):
        return {"base_lr": self.base_lr, "max_lr": self.max_lr, "step_size": self.step_size}


@keras.saving.register_keras_serializable(package="keras_pnil")
class OneCycleLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """One triangle over the whole run: 0 → `max_lr` over the first `peak_fraction` of it, then back to 0.

    The rate of update k (0-based) is the triangle at progress (k + `step_offset`) / `total_steps`.
    Wong et al.'s MNIST schedule (`MNIST/train_mnist.py`) peaks at 2/5 and sets each update's rate
    from the progress after it (`step_offset=1`); their CIFAR-10 schedule (`CIFAR10/train_fgsm.py`,
    PyTorch's `CyclicLR` from 0 to 0.2 with half-cycles of half the run, stepped after every update)
    peaks at 1/2 and gives update k the rate at progress k / `total_steps`, the first update at rate 0
    (`peak_fraction=0.5, step_offset=0`).

    Args:
        max_lr: The peak rate (> 0).
        total_steps: Optimizer steps of the whole run (>= 1).
        peak_fraction: Where the peak lies, as a fraction of the run, in (0, 1).
        step_offset: 1 (Wong et al.'s MNIST code) or 0 (PyTorch's `CyclicLR`).

    Example:
        >>> schedule = OneCycleLearningRate(0.2, total_steps=100, peak_fraction=0.5, step_offset=0)
        >>> [round(float(schedule(k)), 3) for k in (0, 25, 50, 99)]
        [0.0, 0.1, 0.2, 0.004]
    """

    def __init__(self, max_lr: float, total_steps: int, peak_fraction: float = 0.4, step_offset: int = 1):
        if not max_lr > 0 or not total_steps >= 1 or not 0 < peak_fraction < 1 or step_offset not in (0, 1):
            raise ValueError(f"Need max_lr > 0, total_steps >= 1, 0 < peak_fraction < 1 and step_offset 0 or 1; got "
                             f"max_lr={max_lr!r}, total_steps={total_steps!r}, peak_fraction={peak_fraction!r}, "
                             f"step_offset={step_offset!r}.")
        self.max_lr, self.total_steps, self.peak_fraction = float(max_lr), int(total_steps), float(peak_fraction)
        self.step_offset = int(step_offset)

    def __call__(self, step):
        progress = (ops.cast(step, "float32") + float(self.step_offset)) / self.total_steps
        rising = progress / self.peak_fraction
        falling = (1.0 - progress) / (1.0 - self.peak_fraction)
        return self.max_lr * ops.clip(ops.minimum(rising, falling), 0.0, 1.0)

    def get_config(self):
        return {"max_lr": self.max_lr, "total_steps": self.total_steps, "peak_fraction": self.peak_fraction,
                "step_offset": self.step_offset}


class _LinearRamp(keras.callbacks.Callback):
    """Raises the learning rate linearly each batch and records (rate, loss)."""

    def __init__(self, min_lr: float, max_lr: float, total_steps: int):
        super().__init__()
        self.rates = np.linspace(min_lr, max_lr, total_steps)
        self.history: list[tuple[float, float]] = []

    def on_train_batch_begin(self, batch, logs=None):
        step = min(len(self.history), len(self.rates) - 1)
        self.model.optimizer.learning_rate.assign(self.rates[step])

    def on_train_batch_end(self, batch, logs=None):
        loss = float(logs["loss"])
        self.history.append((float(self.model.optimizer.learning_rate.numpy()), loss))
        if not np.isfinite(loss):
            self.model.stop_training = True


def suggest_bounds(rates, losses, smoothing: float = 0.9) -> tuple[float, float]:
    """Cyclical-LR bounds from a range test: (max_lr / 4, max_lr).

    `max_lr` is the rate at which the smoothed loss was lowest, the last rate
    before raising it stops helping (Smith, Section 3.3).
    """
    smoothed, average = [], None
    for loss in losses:
        if not np.isfinite(loss):
            break
        average = loss if average is None else smoothing * average + (1 - smoothing) * loss
        smoothed.append(average)
    if not smoothed:
        raise ValueError("The range test produced no finite loss; lower min_lr.")
    max_lr = float(rates[int(np.argmin(smoothed))])
    return max_lr / 4.0, max_lr


def lr_range_test(model: keras.Model, dataset, min_lr: float = 1e-5, max_lr: float = 1e-1,
                  epochs: int = 1, steps_per_epoch: int | None = None):
    """Runs Smith's LR range test on a compiled `model` (its weights change: use a copy).

    Returns `(history, (base_lr, max_lr))`, history being a list of (rate, loss).
    """
    if getattr(model, "steps_per_execution", 1) != 1:
        raise ValueError(f"The range test sets the rate every batch, but {model.name!r} runs "
                         f"{model.steps_per_execution} steps per call: compile it with steps_per_execution=1.")
    steps = steps_per_epoch or int(dataset.cardinality())
    if steps < 1:
        raise ValueError("The range test needs a dataset of known, non-zero length or steps_per_epoch.")
    ramp = _LinearRamp(min_lr, max_lr, epochs * steps)
    # shuffle=False: a tf.data set shuffles itself (Keras would warn that it ignores the flag).
    model.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=[ramp], shuffle=False, verbose=0)
    rates, losses = zip(*ramp.history, strict=True)
    return ramp.history, suggest_bounds(rates, losses)


class _Multipliers:
    """The learning rate multiplied for the variables whose path (`"pnil/kernel"`, ...) starts with a prefix.

    Keras 3 has no per-variable learning rate, so an optimizer that mixes this in scales the rate its
    `update_step` receives for each such variable.
    """

    def _set_multipliers(self, multipliers: dict | None) -> None:
        self.multipliers = dict(multipliers or {})
        for prefix, factor in self.multipliers.items():
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
                raise ValueError(f"Learning-rate multipliers must be positive numbers; got {prefix!r}: {factor!r}")

    def _set_factors(self, var_list) -> None:
        # By position: the backend hands `update_step` its own variable, which has lost the Keras path.
        self._factors = [next((f for prefix, f in self.multipliers.items() if v.path.startswith(prefix)), 1.0)
                         for v in var_list]

    def _rate(self, variable, learning_rate):
        factor = self._factors[self._get_variable_index(variable)]
        return learning_rate * factor if factor != 1.0 else learning_rate


@keras.saving.register_keras_serializable(package="keras_pnil")
class MultipliedAdam(_Multipliers, keras.optimizers.Adam):
    """Adam with the learning rate multiplied for some variables (for example the PNIL's).

    Scaling a variable's gradient would change nothing: Adam divides the
    gradient by its own running scale. So the multiplier is applied to the
    rate in Adam's update of each variable whose path starts with a prefix.

    Args:
        multipliers: {variable-path prefix: factor > 0}, e.g. `{"pnil/": 10.0}`.
        **kwargs: Adam's arguments (`learning_rate`, `beta_1`, ...).

    Example:
        >>> optimizer = MultipliedAdam({"pnil/": 10.0}, learning_rate=1e-3)
    """

    def __init__(self, multipliers: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self._set_multipliers(multipliers)

    def build(self, var_list):
        super().build(var_list)
        self._set_factors(var_list)

    def update_step(self, gradient, variable, learning_rate):
        return super().update_step(gradient, variable, self._rate(variable, learning_rate))

    def get_config(self):
        return {**super().get_config(), "multipliers": self.multipliers}


@keras.saving.register_keras_serializable(package="keras_pnil")
class CoupledSGD(_Multipliers, keras.optimizers.SGD):
    """SGD with momentum and L2 weight decay exactly as PyTorch's `torch.optim.SGD` (dampening 0, no Nesterov).

    Each step, for every trainable variable p with gradient g:
    g ← g + `weight_decay`·p; b ← `momentum`·b + g; p ← p − rate·b. Wong et al., de Jorge et al. and
    Andriushchenko & Flammarion train their CIFAR-10 networks this way, with `weight_decay` 5e-4 on all
    parameters (`model.parameters()`: weights, biases and BatchNorm's scale and offset alike).

    Keras' own SGD differs twice: its `weight_decay` is decoupled (p ← p − rate·wd·p outside the
    momentum), and its momentum buffer holds rate-scaled steps (v ← μv − rate·g), which equals PyTorch's
    only while the rate is constant, never under a per-step cyclic rate. Here the decay is added to the
    gradient (so it enters the momentum buffer, as PyTorch's coupled decay does) and the rate multiplies
    the buffer at each step. The PNIL's rate multiplier applies as in `MultipliedAdam`.

    With `base_momentum`, the momentum cycles against the rate as PyTorch's `CyclicLR` cycles it by
    default (`cycle_momentum=True`, 0.8 to 0.9), which Wong et al.'s and de Jorge et al.'s CIFAR-10 code
    use: μ = `momentum` − (`momentum` − `base_momentum`)·rate / peak, the peak being the schedule's `max_lr`.

    Args:
        multipliers: {variable-path prefix: factor > 0}, as `MultipliedAdam`'s.
        learning_rate: A rate or a schedule.
        momentum: μ in [0, 1) (with `base_momentum`: at rate 0).
        weight_decay: The L2 coefficient (>= 0), added to the gradient as wd·p.
        base_momentum: The momentum at the schedule's peak rate (None: `momentum` throughout).

    Example:
        >>> optimizer = CoupledSGD(learning_rate=0.2, momentum=0.9, weight_decay=5e-4)
    """

    def __init__(self, multipliers: dict | None = None, learning_rate=0.01, momentum: float = 0.9,
                 weight_decay: float = 0.0, base_momentum: float | None = None, **kwargs):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1). Received: momentum={momentum!r}")
        if base_momentum is not None and not (0 <= base_momentum <= momentum
                                              and getattr(learning_rate, "max_lr", None)):
            raise ValueError("base_momentum must lie in [0, momentum] and needs a schedule with a peak rate "
                             f"(`max_lr`). Received: base_momentum={base_momentum!r}, momentum={momentum!r}, "
                             f"learning_rate={learning_rate!r}")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
            raise ValueError(f"weight_decay must be a number >= 0. Received: weight_decay={weight_decay!r}")
        if kwargs.get("nesterov"):
            raise ValueError("CoupledSGD follows PyTorch's SGD without Nesterov momentum. Received: nesterov=True")
        # Keras' own (decoupled) decay stays off: ours is coupled, in `update_step`.
        super().__init__(learning_rate=learning_rate, momentum=float(momentum), **kwargs)
        self.coupled_weight_decay = float(weight_decay)
        self.base_momentum = None if base_momentum is None else float(base_momentum)
        self._set_multipliers(multipliers)

    def build(self, var_list):
        super().build(var_list)
        self._set_factors(var_list)

    def _momentum(self, learning_rate, dtype):
        if self.base_momentum is None:
            return ops.cast(self.momentum, dtype)
        peak_fraction = ops.cast(learning_rate, dtype) / self._learning_rate.max_lr
        return ops.cast(self.momentum, dtype) - (self.momentum - self.base_momentum) * peak_fraction

    def update_step(self, gradient, variable, learning_rate):
        momentum = self._momentum(learning_rate, variable.dtype)
        rate = ops.cast(self._rate(variable, learning_rate), variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay:
            gradient = ops.add(gradient, ops.multiply(ops.cast(self.coupled_weight_decay, variable.dtype), variable))
        if self.momentum == 0:
            self.assign_sub(variable, ops.multiply(rate, gradient))
            return
        buffer = self.momentums[self._get_variable_index(variable)]
        self.assign(buffer, ops.add(ops.multiply(buffer, momentum), gradient))
        self.assign_sub(variable, ops.multiply(rate, buffer))

    def get_config(self):
        return {**super().get_config(), "multipliers": self.multipliers, "weight_decay": self.coupled_weight_decay,
                "base_momentum": self.base_momentum}
