"""FAB-T: the targeted Fast Adaptive Boundary attack (Croce and Hein, 2020), L∞, L2 or L1, with EOT scores.

FAB looks for the *smallest* perturbation that changes the prediction: at each
step it linearises the margin between the label and a target class, projects
both the current point and the original image onto that hyperplane (the
minimal-norm move that stays in the input range: `Norm.hyperplane`), and steps to a mix of the two that
leans towards the original image; after each success it steps back towards
the image. AutoAttack counts an image as broken when the smallest perturbation
found is within ε. Written from the paper, not from its code.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_pnil.attacks.common import (
    DEFAULT_BATCH_SIZE,
    SEED_SPEC,
    TARGET_CLASSES,
    batch_signature,
    batches,
    check_attack_args,
    compiled,
    graph_loop,
    target_classes,
)
from keras_pnil.attacks.eot import EOT
from keras_pnil.threat import DEFAULT_BOUNDS, NORMS, ThreatModel
from keras_pnil.validation import check_count

NORMS_BUILT = ("linf", "l2", "l1")


def linf_projection(point, w, c):
    """Per row, the smallest-L∞ δ with w·δ = c and point + δ in [0, 1] (as close as the box allows)."""
    return NORMS["linf"].hyperplane(w, c, -point, 1.0 - point)


def _fab_graph(model_fn: EOT, threat: ThreatModel, steps: int, alpha_max: float, eta: float, beta: float,
               signature: list):
    """The compiled FAB-T run on one batch: returns (smallest adversarial found, its norm; inf if none)."""
    norm, (lo, hi) = threat.norm, threat.bounds

    def towards(point, w, c):  # the smallest move from `point` onto w·δ = c inside the input range
        return norm.hyperplane(w, c, lo - point, hi - point)

    def margin(z, shape, y, target):
        with tf.GradientTape() as tape:
            tape.watch(z)
            log_probs = model_fn(tf.reshape(z, shape))
            value = tf.gather(log_probs, y, batch_dims=1) - tf.gather(log_probs, target, batch_dims=1)
            total = tf.reduce_sum(value)  # a sum: each image's gradient is its own
        return value, tape.gradient(total, z)

    def fooled(z, shape, y):
        return tf.not_equal(tf.argmax(model_fn(tf.reshape(z, shape)), -1, output_type=tf.int32), y)

    @tf.function(input_signature=[*signature, SEED_SPEC], autograph=False)  # see `graph_loop`
    def attack(x, y, target, seed):  # FAB-T draws nothing: the seed is every attack graph's last input
        shape = tf.shape(x)
        x0 = tf.reshape(x, [shape[0], -1])

        def step(k, x_k, best, best_norm):
            value, w = margin(x_k, shape, y, target)
            to_boundary = towards(x_k, w, -value)
            from_origin = towards(x0, w, -(value + tf.reduce_sum(w * (x0 - x_k), axis=1)))
            norm_k, norm_0 = norm.distance(to_boundary), norm.distance(from_origin)
            alpha = tf.minimum(tf.math.divide_no_nan(norm_k, norm_k + norm_0), alpha_max)[:, None]
            x_new = tf.clip_by_value((1 - alpha) * (x_k + eta * to_boundary) + alpha * (x0 + eta * from_origin),
                                     lo, hi)
            hit = fooled(x_new, shape, y)
            size = norm.distance(x_new - x0)
            better = hit & (size < best_norm)
            best = tf.where(better[:, None], x_new, best)
            best_norm = tf.where(better, size, best_norm)
            # After a success, step back towards the image: the next steps look for a smaller perturbation.
            return k + 1, tf.where(hit[:, None], (1 - beta) * x0 + beta * x_new, x_new), best, best_norm

        _, best, best_norm = graph_loop(step, steps, x0, x0, tf.where(fooled(x0, shape, y), 0.0, np.inf))
        return tf.reshape(best, shape), best_norm

    return attack


def fab_targeted(model, x, y, epsilon: float, *, steps: int = 100, targets: int = TARGET_CLASSES,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, norm: str = "linf",
                 bounds=DEFAULT_BOUNDS, eot_samples: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 seed: int | None = 0) -> np.ndarray:
    """FAB-T in L∞, L2 or L1: the smallest perturbation found towards each target class, kept if within ε.

    The targets of an image are the classes its clean (EOT) prediction ranks
    2nd to `targets + 1`-th, tried in turn on the images not yet broken within
    ε. Each run starts at the image (AutoAttack's single FAB-T restart), so
    nothing is random and `seed` is accepted only for the common convention.

    Args:
        model: A Keras model that outputs logits.
        x, y: Images within `bounds` and integer labels.
        epsilon: The radius within which a perturbation counts, in the units of the model's inputs.
        steps: Iterations per target.
        targets: Target classes per image (at most the number of classes - 1).
        alpha_max, eta, beta: The paper's bias towards the image, overshoot
            past the boundary and backward step after a success.
        norm: "linf", "l2" or "l1": the norm that is minimised.
        bounds: The model's input range (lo, hi).
        eot_samples: Noise draws per score (default: 20 on random models, 1 otherwise).
        batch_size: Images per batch.
        seed: Unused (see above).

    Returns:
        Per image, the smallest adversarial input found if its distance to
        the image is at most ε, else the image itself.
    """
    x, y, threat = check_attack_args(model, x, y, epsilon, batch_size, norm=norm, bounds=bounds, attack="fab-t",
                                     norms=NORMS_BUILT)
    epsilon = threat.epsilon
    steps, targets = check_count("steps", steps), check_count("targets", targets)
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    if not len(x):
        return x.copy()
    model_fn = EOT(model, eot_samples, images=x)
    key = ("fab-t", np.shape(x)[1:], model_fn.samples, threat.norm.name, threat.bounds, steps, alpha_max, eta, beta)
    attack = compiled(model, key, lambda: _fab_graph(model_fn, threat, steps, alpha_max, eta, beta,
                                                     batch_signature(x, 2)), seed, sliced=not model_fn.random)
    x_adv, norms = x.copy(), np.full(len(x), np.inf)
    for k, target in enumerate(target_classes(model_fn, x, targets, batch_size).T, start=1):
        for idx in batches(np.flatnonzero(norms > epsilon), batch_size, f"fab-t target {k}/{targets}"):
            adv, norm = attack(tf.constant(x[idx]), tf.constant(y[idx]), tf.constant(target[idx]))
            adv, norm = adv.numpy(), norm.numpy()
            better = norm < norms[idx]
            x_adv[idx[better]], norms[idx[better]] = adv[better], norm[better]
    x_adv[norms > epsilon] = x[norms > epsilon]
    return x_adv
