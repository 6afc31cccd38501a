"""Attacks: input gradients with EOT, and the evaluation attacks PGD and SPSA.

Every attack is a function of a `model_fn` (a callable from inputs to
logits), after CleverHans. `EOT` turns a model with random layers into such a
`model_fn`, so every attack gains Expectation over Transformation without
knowing about it.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_pnil.layers import has_random_layer


def _tile(x, samples: int):
    """`samples` copies of the batch, stacked on the batch axis (sample-major)."""
    return tf.tile(x, tf.concat([[samples], tf.ones(tf.rank(x) - 1, tf.int32)], 0))


def cross_entropy_sum(y, logits):
    """Summed (not averaged) cross-entropy: its input gradient is per-example."""
    return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(y, tf.int32), logits=tf.cast(logits, tf.float32)))


def input_gradient(model_fn, x, y, samples: int = 1):
    """∇x of the cross-entropy summed over `samples` independent draws of the model's noise.

    The batch is tiled `samples` times and run in one pass, so L gradient
    samples cost one (larger) forward-backward pass, not L Python iterations.
    """
    xt, yt = (x, y) if samples == 1 else (_tile(x, samples), _tile(y, samples))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = cross_entropy_sum(yt, model_fn(xt))
    grad = tape.gradient(loss, xt)
    if samples > 1:
        grad = tf.reduce_sum(tf.reshape(grad, tf.concat([[samples], tf.shape(x)], 0)), 0)
    return grad


def _check_attack_args(x, y, epsilon: float) -> None:
    from keras_pnil.data import check_images

    check_images(x, "images to attack")
    if not isinstance(epsilon, (int, float)) or not 0.0 < epsilon < 1.0:
        raise ValueError(f"epsilon must be a number in (0, 1) for pixels in [0, 1]; got {epsilon!r}.")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} images, {len(y)} labels.")


class EOT:
    """A `model_fn` for attacks on random models: Expectation over Transformation.

    Calling it returns the log-probabilities averaged over `samples` noise
    draws, computed in one pass over the batch tiled `samples` times. The
    negative log-likelihood of the true class under this output is exactly the
    mean cross-entropy over draws, so its gradient is the EOT gradient of
    Athalye et al.; `draws` gives the per-draw logits for losses that need them.

    For a model with no random layer, more than one sample only repeats the
    same computation: a warning is given and one sample used.
    """

    def __init__(self, model, samples: int = 1):
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"eot_samples must be an integer >= 1; got {samples!r}.")
        if samples > 1 and not has_random_layer(model):
            warnings.warn(f"Model {model.name!r} has no random layer: eot_samples={samples} "
                          "is pointless, using 1.", stacklevel=3)
            samples = 1
        self.model, self.samples = model, samples

    def draws(self, x):
        """Logits of each draw, shaped [samples, batch, classes]."""
        logits = tf.cast(self.model(_tile(x, self.samples), training=False), tf.float32)
        return tf.reshape(logits, [self.samples, tf.shape(x)[0], -1])

    def __call__(self, x):
        return tf.reduce_mean(tf.nn.log_softmax(self.draws(x)), axis=0)


def negative_log_likelihood(labels, logits):
    """Per-example -log p(label) for log-probability outputs (such as `EOT`'s)."""
    return -tf.gather(logits, tf.cast(labels, tf.int32), batch_dims=1)


def _batched(fn, x, y, batch_size: int):
    """Applies a compiled attack to `x` in batches (one graph, no per-step host round trip)."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    parts = [fn(tf.constant(x[i:i + batch_size]), tf.constant(y[i:i + batch_size])).numpy()
             for i in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else x.copy()


def pgd(model, x, y, epsilon: float, steps: int = 50, step_size: float | None = None,
        eot_samples: int = 1, random_start: bool = True, batch_size: int = 500) -> np.ndarray:
    """Untargeted L∞ PGD on the true labels, with EOT: CleverHans' `projected_gradient_descent`.

    The default step size is 2ε/steps (the paper's 2ε/50 for 50 steps), so
    fewer steps still cover the ε-ball. Returns the adversarial images as a
    NumPy array.
    """
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

    _check_attack_args(x, y, epsilon)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}.")
    step_size = 2 * epsilon / steps if step_size is None else step_size
    if not 0 < step_size <= epsilon:
        raise ValueError(f"step_size must lie in (0, epsilon={epsilon}]; got {step_size!r}.")
    model_fn = EOT(model, eot_samples)

    @tf.function
    def attack(xb, yb):
        # A tensor step count makes autograph build one tf.while_loop, not 50 copies.
        return projected_gradient_descent(
            model_fn, xb, epsilon, step_size, tf.constant(steps), np.inf,
            loss_fn=negative_log_likelihood, clip_min=0.0, clip_max=1.0, y=yb,
            rand_init=random_start)

    return _batched(attack, x, y, max(1, batch_size // model_fn.samples))


class BatchedSPSAAdam:
    """SPSA gradient estimates with Adam updates, for many images at once.

    A drop-in `optimizer` for CleverHans' `projected_optimization`, which
    CleverHans' own `SPSAAdam` cannot be on Keras 3 (it passes the removed
    `lr` argument to Keras' Adam) and which handles one image at a time. The
    semantics are CleverHans': `samples` mirrored ±δ·Rademacher perturbations
    per image and step, gradient ≈ mean(loss · Δ) / δ, then an Adam step. The
    samples are evaluated in `chunks` sequential passes to bound memory; the
    chunk estimates are averaged (CleverHans sums them, which Adam's scale
    invariance makes equivalent up to its ε).
    """

    def __init__(self, learning_rate: float = 0.01, delta: float = 0.01, samples: int = 128,
                 chunks: int = 1, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-9):
        if samples < 2 or samples % 2 or samples % (2 * chunks):
            raise ValueError(f"samples must be even and split into {chunks} equal mirrored chunks; got {samples!r}.")
        self.learning_rate, self.delta = learning_rate, delta
        self.half_chunk, self.chunks = samples // (2 * chunks), chunks
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def init_state(self, x):
        return {"t": 0.0, "m": [tf.zeros_like(v) for v in x], "u": [tf.zeros_like(v) for v in x]}

    def _gradient(self, loss_fn, x):
        shape = tf.concat([[self.half_chunk], tf.shape(x)], 0)
        # Extra dimensions so a per-(sample, image) loss broadcasts over pixels.
        loss_shape = tf.concat([[2 * self.half_chunk, tf.shape(x)[0]], tf.ones(tf.rank(x) - 1, tf.int32)], 0)

        def chunk_estimate(total, _):
            delta_x = self.delta * tf.sign(tf.random.uniform(shape, -1.0, 1.0, dtype=x.dtype))
            delta_x = tf.concat([delta_x, -delta_x], axis=0)
            losses = tf.reshape(loss_fn(x[None] + delta_x), loss_shape)
            return total + tf.reduce_mean(losses * delta_x, axis=0) / self.delta

        total = tf.foldl(chunk_estimate, tf.range(self.chunks), initializer=tf.zeros_like(x))
        return total / self.chunks

    def minimize(self, loss_fn, x, optim_state):
        t = optim_state["t"] + 1.0
        new_x, m_new, u_new = [], [], []
        for value, m, u in zip(x, optim_state["m"], optim_state["u"]):
            g = self._gradient(loss_fn, value)
            m = self.beta_1 * m + (1.0 - self.beta_1) * g
            u = self.beta_2 * u + (1.0 - self.beta_2) * g * g
            m_hat = m / (1.0 - tf.pow(self.beta_1, t))
            u_hat = u / (1.0 - tf.pow(self.beta_2, t))
            new_x.append(value - self.learning_rate * m_hat / (tf.sqrt(u_hat) + self.epsilon))
            m_new.append(m)
            u_new.append(u)
        return new_x, {"t": t, "m": m_new, "u": u_new}


def _spsa_loss(model_fn: EOT):
    """Untargeted margin loss (CleverHans' `margin_logit_loss`, sign flipped), mean over EOT draws.

    Accepts one batch [B, ...] or a stack of SPSA queries [S, B, ...] (what
    `projected_optimization` passes when the optimizer perturbs a batch) and
    returns one loss per image (and query).
    """
    from cleverhans.tf2.attacks.spsa import margin_logit_loss

    def loss_fn(images, labels):
        query_shape = tf.shape(images)[: tf.rank(images) - tf.rank(labels) - 3]
        flat = tf.reshape(images, tf.concat([[-1], tf.shape(images)[-3:]], 0))
        flat_labels = tf.reshape(tf.broadcast_to(labels, tf.shape(images)[: tf.rank(images) - 3]), [-1])
        draws = model_fn.draws(flat)
        classes = tf.shape(draws)[-1]
        margins = margin_logit_loss(tf.reshape(draws, [-1, classes]),
                                    _tile(flat_labels, model_fn.samples), nb_classes=classes)
        mean_margin = tf.reduce_mean(tf.reshape(margins, [model_fn.samples, -1]), axis=0)
        return -tf.reshape(mean_margin, tf.concat([query_shape, tf.shape(labels)], 0))

    return loss_fn


def spsa(model, x, y, epsilon: float, steps: int = 100, samples: int = 2048,
         learning_rate: float = 0.01, delta: float = 0.01, eot_samples: int = 1,
         early_stop: bool = False, batch_size: int = 100, max_model_batch: int = 16384) -> np.ndarray:
    """The gradient-free SPSA attack (Uesato et al.), batched, with EOT-averaged loss queries.

    Built on CleverHans' `projected_optimization` (random start in the ε-ball,
    projection to the ε-ball and [0, 1] after every step) and
    `margin_logit_loss`, with `BatchedSPSAAdam` as the optimizer. With
    `early_stop` the attack ends once the batch's mean margin loss is
    negative (CleverHans' rule; per image when `batch_size` is 1).
    `max_model_batch` bounds the inputs per forward pass (memory).
    """
    from cleverhans.tf2.attacks.spsa import projected_optimization

    _check_attack_args(x, y, epsilon)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}.")
    model_fn = EOT(model, eot_samples)
    batch_size = max(1, min(batch_size, len(x)))
    per_pass = samples * batch_size * model_fn.samples
    chunks = next(c for c in range(1, samples // 2 + 1)
                  if samples % (2 * c) == 0 and per_pass / c <= max_model_batch or c == samples // 2)
    optimizer = BatchedSPSAAdam(learning_rate, delta, samples, chunks)
    loss_fn = _spsa_loss(model_fn)

    @tf.function
    def attack(xb, yb):
        return projected_optimization(loss_fn, xb, yb, epsilon, steps, optimizer,
                                      clip_min=0.0, clip_max=1.0,
                                      early_stop_loss_threshold=0.0 if early_stop else None)

    return _batched(attack, x, y, batch_size)


ATTACKS = {"pgd": pgd, "spsa": spsa}


def get_attack(name: str):
    """The attack function named `name`."""
    if name not in ATTACKS:
        raise ValueError(f"Unknown attack {name!r}; expected one of {sorted(ATTACKS)}.")
    return ATTACKS[name]
