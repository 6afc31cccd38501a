"""What a training method is: the batch Keras trains on, and the loss terms it adds.

A method is a `Method`: called as `method(model_fn, x, y)` it returns the
inputs Keras' own train step then trains on (x_adv for FGSM, x itself for
TRADES); `prepare` returns them with whatever its loss terms need (the input
gradient FGSM already took, TRADES's x′); `penalty` returns its extra loss
terms, which `keras_pnil.training.AdversarialModel` adds inside Keras' loss,
under Keras' own gradient tape. `model_fn` maps images to logits: the model in
training mode, so the gradients are those of the network being trained.

A method trains in one threat model (`self.threat`: the norm, ε and the
[0, 1] pixel range, `keras_pnil.threat`). It lists the norms it has a version
in (`norms`); asked for another, it refuses in one line and says why
(`linf_only`). A method's steps use the threat model's own steepest ascent
and projection, the ones the attacks use: sign(∇) and clipping for L∞,
∇/‖∇‖₂ and the exact projection onto the L2 ball ∩ [0, 1] box for L2.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf

from keras_pnil.attacks.eot import input_gradient
from keras_pnil.threat import Norm, ThreatModel, get_norm, threat_model


class Batch(NamedTuple):
    """A method's training batch: the `inputs` Keras trains on, and `context` for its penalty."""

    inputs: tf.Tensor
    context: Any = None


class Penalty(NamedTuple):
    """One extra loss term: the loss gains `weight`·`value`; `value` is logged under the term's name."""

    weight: float
    value: tf.Tensor


def uniform(x, radius: float):
    """U(-radius, radius) noise shaped like `x` (the methods' random starts)."""
    return tf.random.uniform(tf.shape(x), -radius, radius, dtype=x.dtype)


def uniform_ball(x, radius: float, norm: Norm):
    """A point drawn uniformly from the `norm` ball of `radius` around 0, one per image, shaped like `x`.

    L∞: U(-radius, radius) per pixel (`uniform`, the L∞ methods' own draw).
    L2: a Gaussian direction g/‖g‖₂ times radius·u^(1/d), u ~ U(0, 1), d the
    pixels per image: the uniform distribution on the d-ball (in d = 784 its
    radius lies above 0.99·radius for all but 0.04 % of the draws, 0.99⁷⁸⁴: next to
    the sphere the attacks start on).

    Example:
        >>> delta = uniform_ball(tf.zeros([4, 28, 28, 1]), 2.0, get_norm("l2"))
        >>> bool(tf.reduce_all(tf.norm(tf.reshape(delta, [4, -1]), axis=1) <= 2.0 + 1e-5))
        True
    """
    if norm.name == "linf":
        return uniform(x, radius)
    if norm.name != "l2":
        raise ValueError(f"no uniform draw from the {norm.title} ball here; expected linf or l2.")
    batch = tf.shape(x)[0]
    direction = tf.reshape(tf.random.normal(tf.shape(x), dtype=x.dtype), [batch, -1])
    direction /= tf.norm(direction, axis=1, keepdims=True) + 1e-12
    features = tf.cast(tf.shape(direction)[1], x.dtype)
    length = radius * tf.random.uniform([batch, 1], dtype=x.dtype) ** (1.0 / features)
    return tf.reshape(direction * length, tf.shape(x))


def gaussian(x, scale: float):
    """N(0, scale²) noise shaped like `x`."""
    return scale * tf.random.normal(tf.shape(x), dtype=x.dtype)


def ascent(threat: ThreatModel, model_fn, x, y, samples: int = 1):
    """The unit steepest-ascent direction in `threat`'s norm of the summed cross-entropy at `x`, over `samples`
    draws of the model's noise: sign(∇) for L∞, ∇/‖∇‖₂ per image for L2 (`ThreatModel.ascent`, the attacks' own)."""
    return threat.ascent(tf.stop_gradient(input_gradient(model_fn, x, y, samples)))


def refusal(method: str, norm: str, norms: tuple[str, ...], reason: str, others=()) -> str:
    """The one-line error of a method asked for a norm it has no version in, naming the fix.

    `reason` says why an L∞-only method is one; `others` are methods that have a version in `norm`.
    """
    why = reason if norms == ("linf",) else f"it has a version in {', '.join(norms)} only"
    fix = f"train it with norm {' or '.join(norms)}" + (f", or train {', '.join(others)} with norm {norm}"
                                                        if others else "")
    return f"training method {method!r} has no {norm} version: {why}; {fix}."


def per_example_cross_entropy(y, logits):
    """Cross-entropy of each example (float32, whatever the model's compute dtype)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(tf.reshape(y, [-1]), tf.int32),
                                                          logits=tf.cast(logits, tf.float32))


def replica_share(value):
    """`value` divided by the replicas in sync, as Keras scales its own loss under `tf.distribute`."""
    return value / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, value.dtype)


class Method:
    """Base class: holds `threat` (norm, ε, pixels in [0, 1]) and `epsilon`, its radius; trains on
    `self(model_fn, x, y)` with no extra term.

    Subclasses set `name`, implement `__call__` (or `prepare`) and, if they add
    loss terms, list their names in `penalties` and implement `penalty`. A
    method with a version in other norms than L∞ lists them in `norms` and
    takes `norm` as a keyword; one without says why in `linf_only`.
    """

    name = "method"
    penalties: tuple[str, ...] = ()  # the names `penalty` returns: logged as metrics (`val_<name>` too)
    norms: tuple[str, ...] = ("linf",)  # the norms the method has a version in
    linf_only = "it is defined for the L∞ ball only"  # why not in another norm: the refusal's reason

    def __init__(self, epsilon: float, norm: str = "linf"):
        name = get_norm(norm).name  # an unknown norm first
        if name not in self.norms:
            raise ValueError(refusal(self.name, name, self.norms, self.linf_only))
        self.threat = threat_model(name, epsilon)
        self.epsilon = self.threat.epsilon

    @property
    def norm(self) -> Norm:
        """The norm of the method's ball."""
        return self.threat.norm

    def __call__(self, model_fn, x, y):
        """The inputs Keras trains on."""
        raise NotImplementedError

    def prepare(self, model_fn, x, y) -> Batch:
        """The training batch; runs before Keras' tape (nothing here is differentiated for the weights)."""
        return Batch(self(model_fn, x, y))

    @property
    def variables(self) -> list:
        """The method's own state (Keras variables, e.g. an adaptive weight), tracked and saved by the trainer."""
        return []

    def observe(self, terms: dict[str, Penalty]) -> dict[str, Penalty]:
        """A training step's terms (never validation's), as they enter the loss: a method with an adaptive
        weight sets it here and returns the terms with it; by default, unchanged."""
        return terms

    def penalty(self, model_fn, x, batch: Batch, y, y_pred) -> dict[str, Penalty]:
        """Extra loss terms, computed under Keras' tape (so they are differentiated for the weights).

        Args:
            model_fn: The model in training mode (images → logits).
            x: The clean images.
            batch: `prepare`'s batch.
            y: Integer labels.
            y_pred: The model's logits on `batch.inputs`, from Keras' own forward pass.
        """
        return {}
