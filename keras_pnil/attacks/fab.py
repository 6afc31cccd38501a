"""FAB-T: the targeted Fast Adaptive Boundary attack (Croce and Hein, 2020), L∞, with EOT scores.

FAB looks for the *smallest* perturbation that changes the prediction: at each
step it linearises the margin between the label and a target class, projects
both the current point and the original image onto that hyperplane (the
minimal-L∞ move that stays in [0, 1]), and steps to a mix of the two that
leans towards the original image; after each success it steps back towards
the image. AutoAttack counts an image as broken when the smallest perturbation
found is within ε. Written from the paper, not from its code.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_pnil.attacks.common import (
    DEFAULT_BATCH_SIZE,
    TARGET_CLASSES,
    batch_signature,
    batches,
    check_attack_args,
    compiled,
    target_classes,
)
from keras_pnil.attacks.eot import EOT
from keras_pnil.validation import check_count

# Bisection steps of the hyperplane projection: the radius is found to 2^-24 of the pixel range.
BISECTION_STEPS = 24


def linf_projection(point, w, c):
    """Per row, the smallest-L∞ δ with w·δ = c and point + δ in [0, 1] (as close as the box allows).

    For a radius t the values of w·δ reachable with |δ| ≤ t inside the box
    form an interval that widens with t, so the smallest t that reaches c is
    found by bisection; the extreme point at that t, scaled onto w·δ = c, is
    the answer. All arguments are [batch, features] / [batch] tensors.
    """
    toward_up = tf.equal(w > 0, (c > 0)[:, None])  # the coordinates that should move up

    def extreme(radius):
        low, high = tf.maximum(-radius[:, None], -point), tf.minimum(radius[:, None], 1.0 - point)
        delta = tf.where(toward_up, high, low)
        return delta, tf.reduce_sum(w * delta, axis=1)

    low, high = tf.zeros_like(c), tf.ones_like(c)
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        enough = tf.abs(extreme(middle)[1]) >= tf.abs(c)
        low, high = tf.where(enough, low, middle), tf.where(enough, middle, high)
    delta, reached = extreme(high)
    scale = tf.math.divide_no_nan(tf.abs(c), tf.abs(reached))
    return delta * tf.minimum(scale, 1.0)[:, None]


def _fab_graph(model_fn: EOT, steps: int, alpha_max: float, eta: float, beta: float, signature: list):
    """The compiled FAB-T run on one batch: returns (smallest adversarial found, its L∞ norm; inf if none)."""

    def margin(z, shape, y, target):
        with tf.GradientTape() as tape:
            tape.watch(z)
            log_probs = model_fn(tf.reshape(z, shape))
            value = tf.gather(log_probs, y, batch_dims=1) - tf.gather(log_probs, target, batch_dims=1)
            total = tf.reduce_sum(value)  # a sum: each image's gradient is its own
        return value, tape.gradient(total, z)

    def fooled(z, shape, y):
        return tf.not_equal(tf.argmax(model_fn(tf.reshape(z, shape)), -1, output_type=tf.int32), y)

    @tf.function(input_signature=signature)
    def attack(x, y, target):
        shape = tf.shape(x)
        x0 = tf.reshape(x, [shape[0], -1])
        start_fooled = fooled(x0, shape, y)
        best = x0
        best_norm = tf.where(start_fooled, 0.0, np.inf)
        x_k = x0
        for _ in tf.range(steps):
            value, w = margin(x_k, shape, y, target)
            to_boundary = linf_projection(x_k, w, -value)
            from_origin = linf_projection(x0, w, -(value + tf.reduce_sum(w * (x0 - x_k), axis=1)))
            norm_k, norm_0 = (tf.reduce_max(tf.abs(d), axis=1) for d in (to_boundary, from_origin))
            alpha = tf.minimum(tf.math.divide_no_nan(norm_k, norm_k + norm_0), alpha_max)[:, None]
            x_new = tf.clip_by_value((1 - alpha) * (x_k + eta * to_boundary) + alpha * (x0 + eta * from_origin),
                                     0.0, 1.0)
            hit = fooled(x_new, shape, y)
            norm = tf.reduce_max(tf.abs(x_new - x0), axis=1)
            better = hit & (norm < best_norm)
            best = tf.where(better[:, None], x_new, best)
            best_norm = tf.where(better, norm, best_norm)
            # After a success, step back towards the image: the next steps look for a smaller perturbation.
            x_k = tf.where(hit[:, None], (1 - beta) * x0 + beta * x_new, x_new)
        return tf.reshape(best, shape), best_norm

    return attack


def fab_targeted(model, x, y, epsilon: float, *, steps: int = 100, targets: int = TARGET_CLASSES,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, eot_samples: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, seed: int | None = 0) -> np.ndarray:
    """FAB-T, L∞: the smallest perturbation found towards each target class, kept if it is within ε.

    The targets of an image are the classes its clean (EOT) prediction ranks
    2nd to `targets + 1`-th, tried in turn on the images not yet broken within
    ε. Each run starts at the image (AutoAttack's single FAB-T restart), so
    nothing is random and `seed` is accepted only for the common convention.

    Args:
        model: A Keras model that outputs logits.
        x, y: Images in [0, 1] and integer labels.
        epsilon: L∞ radius within which a perturbation counts.
        steps: Iterations per target.
        targets: Target classes per image (at most the number of classes - 1).
        alpha_max, eta, beta: The paper's bias towards the image, overshoot
            past the boundary and backward step after a success.
        eot_samples: Noise draws per score (default: 20 on random models, 1 otherwise).
        batch_size: Images per batch.
        seed: Unused (see above).

    Returns:
        Per image, the smallest adversarial input found if its L∞ distance to
        the image is at most ε, else the image itself.
    """
    x, y, epsilon = check_attack_args(model, x, y, epsilon, batch_size)
    steps, targets = check_count("steps", steps), check_count("targets", targets)
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    if not len(x):
        return x.copy()
    model_fn = EOT(model, eot_samples, images=x)
    attack = compiled(model, ("fab-t", np.shape(x)[1:], model_fn.samples, steps, alpha_max, eta, beta),
                      lambda rng: _fab_graph(model_fn, steps, alpha_max, eta, beta, batch_signature(x, 2)), seed)
    x_adv, norms = x.copy(), np.full(len(x), np.inf)
    for k, target in enumerate(target_classes(model_fn, x, targets, batch_size).T, start=1):
        for idx in batches(np.flatnonzero(norms > epsilon), batch_size, f"fab-t target {k}/{targets}"):
            adv, norm = attack(tf.constant(x[idx]), tf.constant(y[idx]), tf.constant(target[idx]))
            adv, norm = adv.numpy(), norm.numpy()
            better = norm < norms[idx]
            x_adv[idx[better]], norms[idx[better]] = adv[better], norm[better]
    x_adv[norms > epsilon] = x[norms > epsilon]
    return x_adv
