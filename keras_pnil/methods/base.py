"""What a training method is: the batch Keras trains on, and the loss terms it adds.

A method is a `Method`: called as `method(model_fn, x, y)` it returns the
inputs Keras' own train step then trains on (x_adv for FGSM, x itself for
TRADES); `prepare` returns them with whatever its loss terms need (the input
gradient FGSM already took, TRADES's x′); `penalty` returns its extra loss
terms, which `keras_pnil.training.AdversarialModel` adds inside Keras' loss,
under Keras' own gradient tape. `model_fn` maps images to logits: the model in
training mode, so the gradients are those of the network being trained.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf

from keras_pnil.attacks.eot import input_gradient
from keras_pnil.validation import check_epsilon


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


def gaussian(x, scale: float):
    """N(0, scale²) noise shaped like `x`."""
    return scale * tf.random.normal(tf.shape(x), dtype=x.dtype)


def signed_gradient(model_fn, x, y, samples: int = 1):
    """sign(∇x of the summed cross-entropy), over `samples` draws of the model's noise."""
    return tf.sign(tf.stop_gradient(input_gradient(model_fn, x, y, samples)))


def per_example_cross_entropy(y, logits):
    """Cross-entropy of each example (float32, whatever the model's compute dtype)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(tf.reshape(y, [-1]), tf.int32),
                                                          logits=tf.cast(logits, tf.float32))


def replica_share(value):
    """`value` divided by the replicas in sync, as Keras scales its own loss under `tf.distribute`."""
    return value / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, value.dtype)


class Method:
    """Base class: holds `epsilon`, the L∞ radius; trains on `self(model_fn, x, y)` with no extra term.

    Subclasses set `name`, implement `__call__` (or `prepare`) and, if they add
    loss terms, list their names in `penalties` and implement `penalty`.
    """

    name = "method"
    penalties: tuple[str, ...] = ()  # the names `penalty` returns: logged as metrics (`val_<name>` too)

    def __init__(self, epsilon: float):
        self.epsilon = check_epsilon(epsilon)

    def __call__(self, model_fn, x, y):
        """The inputs Keras trains on."""
        raise NotImplementedError

    def prepare(self, model_fn, x, y) -> Batch:
        """The training batch; runs before Keras' tape (nothing here is differentiated for the weights)."""
        return Batch(self(model_fn, x, y))

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
