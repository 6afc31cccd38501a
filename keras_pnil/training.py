"""Adversarial training as a Keras `train_step`: any registered method (`keras_pnil.methods`).

A method declares the batch Keras trains on (its perturbation, `(model_fn, x,
y) -> x_adv`) and, optionally, extra loss terms. The `AdversarialModel`
computes the batch inside the compiled train step, then runs Keras' own step
on it; the extra terms are added in `compute_loss`, under Keras' own gradient
tape. So `compile`, `fit`, callbacks, distribution strategies and mixed
precision work unchanged.
"""

from __future__ import annotations

import threading

import keras
import numpy as np
import tensorflow as tf

from keras_pnil.attacks.eot import computes_in_float16, scaled_backward
from keras_pnil.methods import FGSM, METHODS, NFGSM, PGD, RFGSM, Clean, Method, build
from keras_pnil.methods.base import Batch, replica_share
from keras_pnil.pipeline import steady_fit_arguments
from keras_pnil.validation import check_count, check_inputs

Perturbation = Method  # the name before methods could add loss terms
__all__ = ["AdversarialModel", "adversarial", "get_perturbation", "METHODS", "Perturbation", "Clean", "FGSM",
           "RFGSM", "NFGSM", "PGD"]


def get_perturbation(method: str, epsilon: float, norm: str = "linf", **options) -> Method:
    """The training method named `method` (a registered one) in the `norm` ball of radius ε, with its options
    validated (a method without a version in `norm` is refused, naming those that have one).

    Example:
        >>> get_perturbation("rfgsm", 0.3, alpha=0.375).alpha
        0.375
        >>> get_perturbation("pgd", 2.0, norm="l2").threat.describe()
        'L2 ε=2 (inputs in [0, 1])'
    """
    return build(method, epsilon, norm, **options)


def _check_input_range(x):
    # Reported, not clipped: silently clipping would hide a preprocessing bug.
    # (Asserts are dropped under XLA; `fit` checks array inputs up front too.)
    tf.debugging.assert_greater_equal(x, tf.cast(0.0, x.dtype), message="inputs below 0: images must lie in [0, 1]")
    tf.debugging.assert_less_equal(x, tf.cast(1.0, x.dtype), message="inputs above 1: images must lie in [0, 1]")


def _is_array(x) -> bool:
    """An array, a tensor or a (nested) list of numbers: what `check_inputs` reads, unlike a dataset."""
    return isinstance(x, (list, tuple, np.ndarray, tf.Tensor)) or hasattr(x, "__array__")


# Train steps per call into TensorFlow unless `compile` is told otherwise (docs/benchmarks.md, issue 29).
STEPS_PER_EXECUTION = 8


class AdversarialModel(keras.Model):
    """A functional Keras model that trains with a registered training method (`keras_pnil.methods`).

    Build it like any functional model, `AdversarialModel(inputs, outputs,
    method="nfgsm", epsilon=8/255)` (`norm="l2"` for the L2 ball), or wrap an
    existing model with `adversarial(model, ...)`. The model must output logits. Keras' own step
    trains on the method's batch (the perturbed images; the clean ones for
    TRADES), and the method's extra loss terms are added to Keras' loss and
    logged under their names (`gradalign`, `elle`, `trades_kl`). Validation
    reports the same objective (`val_loss` is the loss on the method's batch
    plus its terms, i.e. the adversarial validation loss) and
    `val_clean_loss` / `val_clean_accuracy` on the unperturbed inputs. `save`
    writes a plain functional model, loadable without this class.

    Example:
        >>> trainer = kp.AdversarialModel(inputs, outputs, method="gradalign", epsilon=0.3)  # doctest: +SKIP
    """

    def __init__(self, *args, method: str = "nfgsm", epsilon: float = 8 / 255, norm: str = "linf",
                 perturbation: Method | None = None, method_options: dict | None = None, **kwargs):
        # The method first: a bad method, norm or ε is reported before Keras builds anything.
        perturbation = perturbation or get_perturbation(method, epsilon, norm, **(method_options or {}))
        super().__init__(*args, **kwargs)
        self.perturbation = perturbation
        self.clean_loss_tracker = keras.metrics.Mean(name="clean_loss")
        self.clean_accuracy = keras.metrics.SparseCategoricalAccuracy(name="clean_accuracy")
        self.penalty_trackers = [keras.metrics.Mean(name=name) for name in self.perturbation.penalties]
        self.method_state = list(self.perturbation.variables)  # tracked: saved and restored with the weights
        # (clean images, the method's batch) while Keras' step runs, for `compute_loss`; per thread, since
        # MirroredStrategy traces each replica's step in a thread of its own.
        self._step_state = threading.local()

    def _model_fn(self, inputs):
        # Training mode, as in Wong et al.: the gradients are the (noisy, batch-normalised) network's that is trained.
        # Float32 logits; under mixed_float16 every method's input gradient is loss-scaled per image (PGD's steps,
        # TRADES's KL attack, GradAlign's second gradient too): `scaled_backward`.
        return scaled_backward(lambda t: self(t, training=True), inputs, computes_in_float16(self))

    def _prepare(self, x, y) -> Batch:
        _check_input_range(x)
        batch = self.perturbation.prepare(self._model_fn, x, y)
        context = None if batch.context is None else tf.nest.map_structure(tf.stop_gradient, batch.context)
        return Batch(tf.stop_gradient(batch.inputs), context)

    def _keras_step(self, step, x, y, sample_weight):
        """Keras' own `step` on the method's batch, with the method's terms pending for `compute_loss`."""
        batch = self._prepare(x, y)
        self._step_state.pending = (x, batch)
        try:
            return step((batch.inputs, y, sample_weight))
        finally:
            self._step_state.pending = None

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras' loss on the method's batch, plus the method's extra terms (each logged under its name)."""
        loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        pending = getattr(self._step_state, "pending", None)
        if pending is None or not self.penalty_trackers:  # Keras building the model, or a method without terms
            return loss
        clean, batch = pending
        terms = self.perturbation.penalty(self._model_fn, clean, batch, y, y_pred)
        if training:
            terms = self.perturbation.observe(terms)
        for tracker in self.penalty_trackers:
            term = terms[tracker.name]
            tracker.update_state(term.value)
            loss += tf.cast(replica_share(term.weight * term.value), loss.dtype)
        return loss

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        logs = self._keras_step(super().train_step, x, y, sample_weight)
        return self._reducible({k: v for k, v in logs.items() if not k.startswith("clean_")})

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        clean_logits = self(x, training=False)
        self.clean_loss_tracker.update_state(
            keras.losses.sparse_categorical_crossentropy(y, clean_logits, from_logits=True))
        self.clean_accuracy.update_state(y, clean_logits)
        return self._reducible(self._keras_step(super().test_step, x, y, sample_weight))

    def _distributed(self) -> bool:
        """Whether this model runs under a tf.distribute strategy (its own, or the scope compile is called in)."""
        return tf.distribute.has_strategy() or self.distribute_strategy is not tf.distribute.get_strategy()

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

    def compile(self, *args, steps_per_execution: int | None = None, **kwargs):
        """Keras' `compile`, running `STEPS_PER_EXECUTION` (8) train steps a call into TensorFlow by default.

        A small network's step is a few milliseconds, and Keras' per-call
        Python work (about 2 ms here) would otherwise be a fifth of it.
        Batch-level callbacks then see every 8th batch, as Keras documents
        for `steps_per_execution`; pass `steps_per_execution=1` for every batch.
        Under a tf.distribute strategy the default is 1.

        Example:
            >>> trainer.compile(optimizer="adam", loss=loss)  # doctest: +SKIP
            >>> trainer.steps_per_execution  # doctest: +SKIP
            8
        """
        if steps_per_execution is None:
            # Under a tf.distribute strategy Keras 3.15's multi-step loop fails ("while/cond/Placeholder"):
            # one step a call there, as Keras' own default.
            steps_per_execution = 1 if self._distributed() else STEPS_PER_EXECUTION
        steps = check_count("steps_per_execution", steps_per_execution)
        return super().compile(*args, steps_per_execution=steps, **kwargs)

    def fit(self, x=None, y=None, *args, **kwargs):
        """Keras' `fit`, after checking array (or tensor) images and labels against the model.

        Training data given as arrays or tensors, and `validation_data` given
        as a tuple of them, go through `keras_pnil.inputs.check_inputs` before
        Keras starts (a dataset or generator is left to the compiled range check).
        Arrays and datasets are then made steady (`keras_pnil.pipeline`: tf.data's
        autotuning off, which otherwise halves the speed of some epochs on a CPU).
        """
        if _is_array(x):
            x, y = check_inputs(self, x, y, what="training images")
        validation = kwargs.get("validation_data")
        if isinstance(validation, (list, tuple)) and len(validation) in (2, 3) and _is_array(validation[0]):
            checked = check_inputs(self, validation[0], validation[1], what="validation images")
            kwargs["validation_data"] = (*checked, *validation[2:])
        return super().fit(**steady_fit_arguments(self, x, y, *args, **kwargs))

    def plain_model(self) -> keras.Model:
        """The same layers and weights as a plain `keras.Model`, without training code."""
        return keras.Model(*_bare(self.inputs, self.outputs), name=self.name)

    def save(self, filepath, *args, **kwargs):
        return self.plain_model().save(filepath, *args, **kwargs)


def adversarial(model: keras.Model, method: str = "nfgsm", epsilon: float = 8 / 255, norm: str = "linf",
                **options) -> AdversarialModel:
    """An `AdversarialModel` sharing `model`'s layers and weights.

    Args:
        model: A built functional or `Sequential` model that outputs logits.
        method: A registered training method: "clean", "fgsm", "rfgsm", "nfgsm", "pgd", "gradalign", "elle",
            "trades" (see `keras_pnil.methods.METHODS`).
        epsilon: The radius of the `norm` ball for pixels in [0, 1]: an L∞ radius in (0, 1), an L2 radius any
            positive number (it may exceed 1; MNIST's usual one is 2.0).
        norm: "linf" (default) or "l2": rfgsm, nfgsm, pgd, fgsm and trades have an L2 version (normalised
            gradient steps, the L2 ball's random start and projection); gradalign and elle refuse it (see each
            method's docstring); clean records any norm.
        **options: The method's constructor keywords: `alpha` (rfgsm), `eot_samples` and
            `noise_multiplier` (nfgsm), `steps`, `step_size` and `early_stop` (pgd), `lam` (gradalign,
            elle), `beta`, `steps` and `step_size` (trades).

    Example:
        >>> trainer = kp.adversarial(model, "trades", 0.3, beta=1.0, steps=10)  # doctest: +SKIP
        >>> trainer.compile(keras.optimizers.Adam(1e-3),
        ...                 keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # doctest: +SKIP
        >>> trainer.fit(x_train, y_train, epochs=10)  # doctest: +SKIP
        >>> trainer = kp.adversarial(model, "rfgsm", 2.0, norm="l2")  # FGSM-RS in the L2 ball  # doctest: +SKIP
    """
    perturbation = get_perturbation(method, epsilon, norm, **options)  # bad input first, before any work
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs:
        raise ValueError(
            f"Model {model.name!r} has no defined inputs: build it with keras.Input "
            "(or call it on data) before making it adversarial."
        )
    return AdversarialModel(*_bare(inputs, outputs), perturbation=perturbation, name=model.name)


def _bare(inputs, outputs) -> tuple:
    """A single input or output bare, not as a list of one.

    Keras would otherwise warn on every call with a plain tensor that "the
    structure of `inputs` doesn't match the expected structure".
    """
    return tuple(t[0] if len(t) == 1 else t for t in (inputs, outputs))
