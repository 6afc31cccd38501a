"""Adversarial training as a Keras `train_step`: clean, FGSM, RFGSM, NFGSM and PGD.

A perturbation is a small callable object `(model_fn, x, y) -> x_adv`; the
`AdversarialModel` applies it inside the compiled train step and then runs
Keras' own step on the perturbed batch, so `compile`, `fit`, callbacks,
distribution strategies and mixed precision work unchanged.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_pnil.attacks.common import per_image
from keras_pnil.attacks.eot import cross_entropy_sum, input_gradient
from keras_pnil.attacks.pgd import default_step_size
from keras_pnil.validation import check_choice, check_count, check_epsilon, check_inputs, check_positive


def _uniform(x, radius: float):
    return tf.random.uniform(tf.shape(x), -radius, radius, dtype=x.dtype)


def _signed_gradient(model_fn, x, y, samples: int = 1):
    return tf.sign(tf.stop_gradient(input_gradient(model_fn, x, y, samples)))


class Perturbation:
    """Base class: validates and holds `epsilon`, the L∞ radius."""

    name = "perturbation"

    def __init__(self, epsilon: float):
        self.epsilon = check_epsilon(epsilon)

    def __call__(self, model_fn, x, y):
        raise NotImplementedError


class Clean(Perturbation):
    """No perturbation: ordinary training (ε is only recorded)."""

    name = "clean"

    def __call__(self, model_fn, x, y):
        return x


class FGSM(Perturbation):
    """x + ε·sign(∇x L), clipped to [0, 1] (Goodfellow et al.)."""

    name = "fgsm"

    def __call__(self, model_fn, x, y):
        return tf.clip_by_value(x + self.epsilon * _signed_gradient(model_fn, x, y), 0.0, 1.0)


class RFGSM(Perturbation):
    """FGSM from a random start, projected back (Wong et al.'s FGSM-RS, "Fast is better than free").

    u ~ U(-ε, ε); the gradient is taken at x + u as it is (not clipped to
    [0, 1]); δ = clip(u + α·sign(∇), -ε, ε); train on clip(x + δ, 0, 1):
    Wong et al.'s `MNIST/train_mnist.py` step for step. The paper uses
    α = 1.2ε; Wong et al. 1.25ε.
    """

    name = "rfgsm"

    def __init__(self, epsilon: float, alpha: float | None = None):
        super().__init__(epsilon)
        self.alpha = 1.2 * self.epsilon if alpha is None else check_positive("alpha", alpha)

    def __call__(self, model_fn, x, y):
        start = _uniform(x, self.epsilon)
        step = self.alpha * _signed_gradient(model_fn, x + start, y)
        delta = tf.clip_by_value(start + step, -self.epsilon, self.epsilon)
        return tf.clip_by_value(x + delta, 0.0, 1.0)


class NFGSM(Perturbation):
    """Noisy FGSM, Algorithm 1 of Schwinn et al.

    x_n = clip(x + U(-kε, kε), 0, 1) with k = `noise_multiplier`;
    r = ε·sign(Σ_l ∇ L(F(x_n))) over `eot_samples` draws of the model's own
    noise; train on clip(x_n + r, 0, 1). There is no projection back to the
    ε-ball: the noise is part of the training distribution. Both clips keep the
    model (and its gradient) on valid images, as every test-time input is;
    they follow de Jorge et al.'s N-FGSM code (`train.py`), which clamps the
    noisy point before taking the gradient. k = 2 gives their N-FGSM.
    """

    name = "nfgsm"

    def __init__(self, epsilon: float, eot_samples: int = 1, noise_multiplier: float = 1.0):
        super().__init__(epsilon)
        self.eot_samples = check_count("eot_samples", eot_samples)
        self.noise_multiplier = check_positive("noise_multiplier", noise_multiplier)

    def __call__(self, model_fn, x, y):
        noisy = tf.clip_by_value(x + _uniform(x, self.noise_multiplier * self.epsilon), 0.0, 1.0)
        step = self.epsilon * _signed_gradient(model_fn, noisy, y, self.eot_samples)
        return tf.clip_by_value(noisy + step, 0.0, 1.0)


class PGD(Perturbation):
    """k-step L∞ PGD with a random start (Madry et al.): the expensive baseline.

    The default step is the attacks' (2ε/steps), so training and evaluation
    mean the same thing by "PGD-k". With `early_stop`, a step moves only the
    images the model still classifies right, as Wong et al.'s MNIST PGD
    training does (`MNIST/train_mnist.py`): early in training almost every
    image is already wrong, and the full attack keeps the model at chance.
    """

    name = "pgd"

    def __init__(self, epsilon: float, steps: int = 7, step_size: float | None = None, early_stop: bool = False):
        super().__init__(epsilon)
        self.steps = check_count("steps", steps)
        self.step_size = (default_step_size(self.epsilon, self.steps) if step_size is None
                          else check_positive("step_size", step_size))
        self.early_stop = bool(early_stop)

    def __call__(self, model_fn, x, y):
        adv = tf.clip_by_value(x + _uniform(x, self.epsilon), 0.0, 1.0)
        for _ in range(self.steps):  # a few steps, unrolled into the graph at trace time
            grad, right = _gradient_and_hits(model_fn, adv, y)
            step = self.step_size * tf.sign(grad)
            if self.early_stop:
                step *= per_image(tf.cast(right, step.dtype), x)
            adv = tf.clip_by_value(tf.clip_by_value(adv + step, x - self.epsilon, x + self.epsilon), 0.0, 1.0)
        return adv


def _gradient_and_hits(model_fn, x, y):
    """∇x of the summed cross-entropy, and which images the model classifies right, from one forward pass."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model_fn(x)
        loss = cross_entropy_sum(y, logits)
    right = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(tf.reshape(y, [-1]), tf.int32))
    return tf.stop_gradient(tape.gradient(loss, x)), right


METHODS = {cls.name: cls for cls in (Clean, FGSM, RFGSM, NFGSM, PGD)}


def get_perturbation(method: str, epsilon: float, **options) -> Perturbation:
    """The training perturbation named `method`, with its options validated."""
    check_choice("training method", method, METHODS)
    try:
        return METHODS[method](epsilon, **options)
    except TypeError as err:
        raise ValueError(f"Bad option for method {method!r}: {err}") from None


def _check_input_range(x):
    # Reported, not clipped: silently clipping would hide a preprocessing bug.
    # (Asserts are dropped under XLA; `fit` checks array inputs up front too.)
    tf.debugging.assert_greater_equal(x, tf.cast(0.0, x.dtype), message="inputs below 0: images must lie in [0, 1]")
    tf.debugging.assert_less_equal(x, tf.cast(1.0, x.dtype), message="inputs above 1: images must lie in [0, 1]")


def _is_array(x) -> bool:
    """An array, a tensor or a (nested) list of numbers: what `check_inputs` reads, unlike a dataset."""
    return isinstance(x, (list, tuple, np.ndarray, tf.Tensor)) or hasattr(x, "__array__")


class AdversarialModel(keras.Model):
    """A functional Keras model that trains on adversarially perturbed inputs.

    Build it like any functional model, `AdversarialModel(inputs, outputs,
    method="nfgsm", epsilon=8/255)`, or wrap an existing model with
    `adversarial(model, ...)`. The model must output logits. Validation
    reports the loss and metrics under the training perturbation (`val_loss`
    is the adversarial validation loss) and `val_clean_loss` /
    `val_clean_accuracy` on the unperturbed inputs. `save` writes a plain
    functional model, loadable without this class.
    """

    def __init__(self, *args, method: str = "nfgsm", epsilon: float = 8 / 255,
                 perturbation: Perturbation | None = None, method_options: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.perturbation = perturbation or get_perturbation(method, epsilon, **(method_options or {}))
        self.clean_loss_tracker = keras.metrics.Mean(name="clean_loss")
        self.clean_accuracy = keras.metrics.SparseCategoricalAccuracy(name="clean_accuracy")

    def _perturb(self, x, y):
        _check_input_range(x)
        # Training mode for the attack, as in Wong et al.: the gradient is taken
        # through the same (noisy, batch-normalised) network that is trained.
        x_adv = self.perturbation(lambda inputs: self(inputs, training=True), x, y)
        return tf.stop_gradient(x_adv)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        logs = super().train_step((self._perturb(x, y), y, sample_weight))
        return self._reducible({k: v for k, v in logs.items() if not k.startswith("clean_")})

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        clean_logits = self(x, training=False)
        self.clean_loss_tracker.update_state(
            keras.losses.sparse_categorical_crossentropy(y, clean_logits, from_logits=True))
        self.clean_accuracy.update_state(y, clean_logits)
        return self._reducible(super().test_step((self._perturb(x, y), y, sample_weight)))

    def _multi_worker(self) -> bool:
        return isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy)

    def _reducible(self, logs: dict) -> dict:
        # Keras 3 (backend/tensorflow/trainer.py, `reduce_per_replica`) averages the logs of the replicas
        # of several workers over axis 0, which a scalar lacks: give each log that axis.
        return {k: tf.reshape(v, [1]) for k, v in logs.items()} if self._multi_worker() else logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3 builds the model's state from a batch that it first reduces across replicas, which fails
        # under MultiWorkerMirroredStrategy (a PerReplica value is not a tensor). Shapes are all it needs:
        # build from an all-zero batch of the input's shape instead.
        if not self._multi_worker():
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        shape = (1, *self.inputs[0].shape[1:])
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=(np.zeros(shape, np.float32), np.zeros((1,), np.int64)))

    def fit(self, x=None, y=None, *args, **kwargs):
        """Keras' `fit`, after checking array (or tensor) images and labels against the model.

        Training data given as arrays or tensors, and `validation_data` given
        as a tuple of them, go through `keras_pnil.inputs.check_inputs` before
        Keras starts (a dataset or generator is left to the compiled range check).
        """
        if _is_array(x):
            x, y = check_inputs(self, x, y, what="training images")
        validation = kwargs.get("validation_data")
        if isinstance(validation, (list, tuple)) and len(validation) in (2, 3) and _is_array(validation[0]):
            checked = check_inputs(self, validation[0], validation[1], what="validation images")
            kwargs["validation_data"] = (*checked, *validation[2:])
        return super().fit(x, y, *args, **kwargs)

    def plain_model(self) -> keras.Model:
        """The same layers and weights as a plain `keras.Model`, without training code."""
        return keras.Model(*_bare(self.inputs, self.outputs), name=self.name)

    def save(self, filepath, *args, **kwargs):
        return self.plain_model().save(filepath, *args, **kwargs)


def adversarial(model: keras.Model, method: str = "nfgsm", epsilon: float = 8 / 255,
                **options) -> AdversarialModel:
    """An `AdversarialModel` sharing `model`'s layers and weights.

    Args:
        model: A built functional or `Sequential` model that outputs logits.
        method: "clean", "fgsm", "rfgsm", "nfgsm" or "pgd".
        epsilon: L∞ radius for pixels in [0, 1].
        **options: The method's options: `alpha` (rfgsm), `eot_samples` and
            `noise_multiplier` (nfgsm), `steps` and `step_size` (pgd).
    """
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs:
        raise ValueError(
            f"Model {model.name!r} has no defined inputs: build it with keras.Input "
            "(or call it on data) before making it adversarial."
        )
    return AdversarialModel(*_bare(inputs, outputs), method=method, epsilon=epsilon,
                            method_options=options, name=model.name)


def _bare(inputs, outputs) -> tuple:
    """A single input or output bare, not as a list of one.

    Keras would otherwise warn on every call with a plain tensor that "the
    structure of `inputs` doesn't match the expected structure".
    """
    return tuple(t[0] if len(t) == 1 else t for t in (inputs, outputs))
