"""Projected gradient descent (Madry et al.), L∞, untargeted, with EOT and random restarts."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.utils import clip_eta

from keras_pnil.attacks.common import (
    DEFAULT_BATCH_SIZE,
    batch_signature,
    check_attack_args,
    compiled,
    project,
    run_batched,
    true_class_scores,
)
from keras_pnil.attacks.eot import EOT, negative_log_likelihood
from keras_pnil.validation import check_count

# The paper's PGD step is 2ε/50 for 50 steps: a step of 2ε/steps lets any
# number of steps cross the ε-ball twice. Training, the overfitting monitor
# and the masking checks use the same default.
STEP_RATIO = 2.0


def default_step_size(epsilon: float, steps: int) -> float:
    """The step used whenever none is given: 2ε/steps, never more than ε."""
    return min(STEP_RATIO * epsilon / steps, epsilon)


def _pgd_graph(model_fn: EOT, epsilon: float, steps: int, step_size: float, random_start: bool,
               rng: tf.random.Generator, signature: list):
    # PGD is a loop of CleverHans' fast gradient method (as CleverHans builds it);
    # the random start is drawn here from the attack's own generator, because
    # CleverHans' `projected_gradient_descent` draws it from TensorFlow's global one.
    @tf.function(input_signature=signature)
    def attack(x, y):
        adv = project(x + rng.uniform(tf.shape(x), -epsilon, epsilon), x, epsilon) if random_start else x
        for _ in tf.range(steps):  # a tensor range: one tf.while_loop, not `steps` copies
            adv = fast_gradient_method(model_fn, adv, step_size, np.inf, loss_fn=negative_log_likelihood,
                                       clip_min=0.0, clip_max=1.0, y=y, sanity_checks=False)
            adv = tf.clip_by_value(x + clip_eta(adv - x, np.inf, epsilon), 0.0, 1.0)
        return adv

    return attack


def pgd(model, x, y, epsilon: float, *, steps: int = 50, step_size: float | None = None, restarts: int = 1,
        random_start: bool = True, eot_samples: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
        seed: int | None = 0) -> np.ndarray:
    """Untargeted L∞ PGD on the true labels, with EOT gradients on random models.

    Args:
        model: A Keras model that outputs logits.
        x, y: Images in [0, 1] and integer labels.
        epsilon: L∞ radius.
        steps: Gradient steps per restart.
        step_size: Default 2ε/steps (the paper's 2ε/50 for 50 steps).
        restarts: Random restarts; each after the first runs only on the
            images no restart has fooled yet, and per image the result is the
            first input that fools the model, else the one with the highest loss.
        random_start: Start from a uniform point of the ε-ball.
        eot_samples: Noise draws per gradient (default: 20 on random models, 1 otherwise).
        batch_size: Images per batch.
        seed: Seed of the attack's own random generator.

    Returns:
        The adversarial images, a NumPy array shaped like `x`.
    """
    x, y, epsilon = check_attack_args(model, x, y, epsilon, batch_size)
    steps, restarts = check_count("steps", steps), check_count("restarts", restarts)
    step_size = default_step_size(epsilon, steps) if step_size is None else step_size
    if not 0 < step_size <= epsilon:
        raise ValueError(f"step_size must lie in (0, epsilon={epsilon}]; got {step_size!r}.")
    model_fn = EOT(model, eot_samples, images=x)
    attack = compiled(model, ("pgd", np.shape(x)[1:], model_fn.samples, epsilon, steps, step_size, random_start),
                      lambda rng: _pgd_graph(model_fn, epsilon, steps, step_size, random_start, rng,
                                             batch_signature(x)), seed)
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
