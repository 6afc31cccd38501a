"""Projected gradient descent (Madry et al.), L∞ or L2, untargeted, with EOT and random restarts.

`signed_ascent` is PGD's loop, shared by this attack, PGD training and TRADES's
KL attack (`keras_pnil.methods`): one implementation of "PGD-k".
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from keras_pnil.attacks.common import (
    DEFAULT_BATCH_SIZE,
    SEED_SPEC,
    Draws,
    batch_signature,
    check_attack_args,
    compiled,
    graph_loop,
    per_image,
    run_batched,
    true_class_scores,
)
from keras_pnil.attacks.eot import EOT, negative_log_likelihood
from keras_pnil.threat import DEFAULT_BOUNDS, NORMS, ThreatModel
from keras_pnil.validation import check_count

NORMS_BUILT = ("linf", "l2")  # an L1 PGD needs APGD-L1's sparse steps: use apgd-ce

# The paper's PGD step is 2ε/50 for 50 steps: a step of 2ε/steps lets any
# number of steps cross the ε-ball twice. Training, the overfitting monitor
# and the masking checks use the same default.
STEP_RATIO = 2.0


def default_step_size(epsilon: float, steps: int) -> float:
    """The step used whenever none is given: 2ε/steps, never more than ε."""
    return min(STEP_RATIO * epsilon / steps, epsilon)


def loss_gradient(model_fn, loss_fn, y) -> Callable:
    """`adv -> (∇adv of the summed loss_fn(y, model_fn(adv)), which images model_fn classifies right)`,
    from one forward pass: the `gradient` of `signed_ascent`."""
    def gradient(adv):
        with tf.GradientTape() as tape:
            tape.watch(adv)
            scores = model_fn(adv)
            loss = tf.reduce_sum(loss_fn(y, scores))
        right = tf.equal(tf.argmax(scores, -1, output_type=tf.int32), tf.cast(tf.reshape(y, [-1]), tf.int32))
        return tf.stop_gradient(tape.gradient(loss, adv)), right

    return gradient


def signed_ascent(gradient: Callable, x, start, epsilon: float, steps: int, step_size: float, *,
                  early_stop: bool = False, unroll: bool = False, threat: ThreatModel | None = None):
    """PGD's loop: `steps` steps of `step_size` along the norm's steepest ascent (sign(∇) for L∞, ∇/‖∇‖₂
    for L2) from `start`, each projected to the ε-ball around `x` inside the input range.

    `gradient(adv)` returns the loss gradient at `adv` and which images the model still classifies right
    (see `loss_gradient`). With `early_stop`, a step moves only those images (Wong et al.'s MNIST PGD training).
    In a graph the loop is one tf.while_loop, or with `unroll` `steps` copies: training's few steps call the
    model in training mode, whose state updates (batch-norm statistics, noise seeds) stay out of a while loop.
    `threat` defaults to the L∞ ball of radius `epsilon` in [0, 1] (training's).
    """
    threat = threat or ThreatModel(NORMS["linf"], epsilon, DEFAULT_BOUNDS)

    def step(k, adv):
        grad, right = gradient(adv)
        move = step_size * threat.ascent(grad)
        if early_stop:
            move *= per_image(tf.cast(right, move.dtype), x)
        return k + 1, threat.project(adv + move, x)

    if not unroll:
        return graph_loop(step, steps, start)[0]
    adv = start
    for k in range(steps):
        adv = step(k, adv)[1]
    return adv


def _pgd_graph(model_fn: EOT, threat: ThreatModel, steps: int, step_size: float, random_start: bool,
               signature: list):
    # The random start is drawn from the call's own seed (`Draws`), never TensorFlow's global generator.
    @tf.function(input_signature=[*signature, SEED_SPEC], autograph=False)  # see `graph_loop`
    def attack(x, y, seed):
        start = threat.random_start(Draws(seed), x) if random_start else x
        return signed_ascent(loss_gradient(model_fn, negative_log_likelihood, y), x, start, threat.epsilon, steps,
                             step_size, threat=threat)

    return attack


def pgd(model, x, y, epsilon: float, *, steps: int = 50, step_size: float | None = None, restarts: int = 1,
        random_start: bool = True, norm: str = "linf", bounds=DEFAULT_BOUNDS, eot_samples: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE, seed: int | None = 0) -> np.ndarray:
    """Untargeted PGD on the true labels (L∞: signed steps; L2: normalised-gradient steps), with EOT gradients
    on random models.

    Args:
        model: A Keras model that outputs logits.
        x, y: Images within `bounds` and integer labels.
        epsilon: The radius, in the units of the model's inputs.
        steps: Gradient steps per restart.
        step_size: Default 2ε/steps (the paper's 2ε/50 for 50 steps).
        restarts: Random restarts; each after the first runs only on the
            images no restart has fooled yet, and per image the result is the
            first input that fools the model, else the one with the highest loss.
        random_start: Start from a random point of the ε-ball (uniform per pixel for L∞, a random
            direction of length ε for L2), projected into the input range.
        norm: "linf" or "l2" (L1: use APGD's sparse steps, `apgd`).
        bounds: The model's input range (lo, hi).
        eot_samples: Noise draws per gradient (default: 20 on random models, 1 otherwise).
        batch_size: Images per batch.
        seed: Seed of the attack's draws (`attacks.common.SeededGraph`); None: a fresh one.

    Returns:
        The adversarial images, a NumPy array shaped like `x`.
    """
    x, y, threat = check_attack_args(model, x, y, epsilon, batch_size, norm=norm, bounds=bounds, attack="pgd",
                                     norms=NORMS_BUILT)
    epsilon = threat.epsilon
    steps, restarts = check_count("steps", steps), check_count("restarts", restarts)
    step_size = default_step_size(epsilon, steps) if step_size is None else step_size
    if not 0 < step_size <= epsilon:
        raise ValueError(f"step_size must lie in (0, epsilon={epsilon}]; got {step_size!r}.")
    model_fn = EOT(model, eot_samples, images=x)
    attack = compiled(model, ("pgd", np.shape(x)[1:], model_fn.samples, threat, steps, step_size, random_start),
                      lambda: _pgd_graph(model_fn, threat, steps, step_size, random_start, batch_signature(x)),
                      seed, sliced=not model_fn.random)
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    x_adv = run_batched(attack, x, y, batch_size, f"pgd {steps} steps, restart 1/{restarts}")
    if restarts == 1:
        return x_adv
    standing, loss = true_class_scores(model_fn, x_adv, y, batch_size)
    for restart in range(2, restarts + 1):
        idx = np.flatnonzero(standing)
        if not len(idx):
            break
        candidate = run_batched(attack, x[idx], y[idx], batch_size, f"pgd {steps} steps, restart {restart}/{restarts}")
        right, candidate_loss = true_class_scores(model_fn, candidate, y[idx], batch_size)
        fooled = ~right
        better = fooled | (candidate_loss > loss[idx])
        x_adv[idx[better]], loss[idx[better]] = candidate[better], candidate_loss[better]
        standing[idx[fooled]] = False
    return x_adv
