"""Auto-PGD (Croce and Hein, 2020), L∞: untargeted with the CE or DLR loss, and APGD-T; EOT gradients."""

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
    eot_scores,
    per_image,
    project,
    target_classes,
)
from keras_pnil.attacks.eot import EOT
from keras_pnil.validation import check_choice, check_count

LOSSES = ("ce", "dlr")


def _per_draw_loss(name: str):
    """Per-example loss to maximise from per-draw logits [S, B, C], averaged over the S draws.

    "ce" and "dlr" are untargeted; "dlr-t" is the targeted DLR loss of
    APGD-T, which raises the target's logit against the label's.
    """
    def loss(draws, y, target):
        labels = tf.broadcast_to(tf.cast(y, tf.int32)[None], tf.shape(draws)[:2])
        if name == "ce":
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=draws), 0)
        true = tf.gather(draws, labels, batch_dims=2)
        top = tf.sort(draws, axis=-1, direction="DESCENDING")
        # Difference of logits ratios: scale-invariant, so they survive saturated softmaxes.
        if name == "dlr":
            other = tf.where(tf.equal(tf.argmax(draws, -1, output_type=tf.int32), labels), top[..., 1], top[..., 0])
            per_draw = -(true - other) / (top[..., 0] - top[..., 2] + 1e-12)
        else:
            targets = tf.broadcast_to(tf.cast(target, tf.int32)[None], tf.shape(draws)[:2])
            wanted = tf.gather(draws, targets, batch_dims=2)
            per_draw = -(true - wanted) / (top[..., 0] - (top[..., 2] + top[..., 3]) / 2 + 1e-12)
        return tf.reduce_mean(per_draw, axis=0)

    return loss


def apgd_checkpoints(steps: int) -> np.ndarray:
    """Iterations at which APGD reconsiders its step size.

    The paper's p0 = 0, p1 = 0.22, pj+1 = pj + max(pj - pj-1 - 0.03, 0.06), in
    whole iterations: windows of 22 % of the steps, each 3 % shorter than the
    last, never under 6 % (22, 41, 57, 70, 80, 87, 93, 99 for 100 steps).
    """
    window, shrink, shortest = (max(int(f * steps), 1) for f in (0.22, 0.03, 0.06))
    points = [window]
    while points[-1] + max(window - shrink, shortest) <= steps:
        window = max(window - shrink, shortest)
        points.append(points[-1] + window)
    return np.array(points)


def _apgd_graph(model_fn: EOT, epsilon: float, steps: int, loss: str, momentum: float, rho: float,
                rng: tf.random.Generator, signature: list):
    """The compiled APGD loop for one batch: returns (best adversarial or highest-loss input, fooled)."""
    loss_of = _per_draw_loss(loss)
    checkpoints = apgd_checkpoints(steps)
    is_checkpoint = np.zeros(steps + 1, bool)
    is_checkpoint[checkpoints] = True
    window = np.zeros(steps + 1, np.float32)
    window[checkpoints] = np.diff(np.concatenate([[0], checkpoints]))

    def evaluate(x, y, target):
        with tf.GradientTape() as tape:
            tape.watch(x)
            draws = model_fn.draws(x)
            losses = loss_of(draws, y, target)
            total = tf.reduce_sum(losses)  # a sum: each image's gradient is its own
        fooled = tf.not_equal(tf.argmax(tf.reduce_mean(tf.nn.log_softmax(draws), 0), -1, output_type=tf.int32),
                              tf.cast(y, tf.int32))
        return losses, tape.gradient(total, x), fooled

    @tf.function(input_signature=signature)
    def attack(x, y, target):
        x_k = project(x + rng.uniform(tf.shape(x), -epsilon, epsilon), x, epsilon)
        loss_k, grad, fooled = evaluate(x_k, y, target)
        best_adv = tf.where(per_image(fooled, x), x_k, x)
        ever_fooled, x_best, loss_best, grad_best = fooled, x_k, loss_k, grad
        eta = tf.fill(tf.shape(loss_k), 2.0 * epsilon)
        x_prev, increases = x_k, tf.zeros_like(loss_k)
        eta_at_check, best_at_check = eta, loss_best
        for k in tf.range(steps):
            z = project(x_k + per_image(eta, x) * tf.sign(grad), x, epsilon)
            weight = tf.where(k == 0, 1.0, momentum)  # the first step is a plain projected step
            x_next = project(x_k + weight * (z - x_k) + (1.0 - weight) * (x_k - x_prev), x, epsilon)
            loss_next, grad_next, fooled = evaluate(x_next, y, target)
            best_adv = tf.where(per_image(fooled & ~ever_fooled, x), x_next, best_adv)
            ever_fooled |= fooled
            increases += tf.cast(loss_next > loss_k, tf.float32)
            improved = loss_next > loss_best
            x_best = tf.where(per_image(improved, x), x_next, x_best)
            grad_best = tf.where(per_image(improved, x), grad_next, grad_best)
            loss_best = tf.where(improved, loss_next, loss_best)
            x_prev, x_k, loss_k, grad = x_k, x_next, loss_next, grad_next
            if tf.gather(is_checkpoint, k + 1):
                # Halve the step where progress stalled, restarting from the best point.
                stalled = ((increases <= rho * tf.gather(window, k + 1))
                           | ((eta == eta_at_check) & (loss_best <= best_at_check)))
                eta = tf.where(stalled, eta / 2.0, eta)
                x_k = tf.where(per_image(stalled, x), x_best, x_k)
                grad = tf.where(per_image(stalled, x), grad_best, grad)
                increases, eta_at_check, best_at_check = tf.zeros_like(increases), eta, loss_best
        return tf.where(per_image(ever_fooled, x), best_adv, x_best), ever_fooled

    return attack


def _compiled_apgd(model, x, epsilon: float, steps: int, loss: str, momentum: float, rho: float,
                   eot_samples: int | None, seed: int | None):
    model_fn = EOT(model, eot_samples, images=x)
    attack = compiled(model, ("apgd", np.shape(x)[1:], model_fn.samples, epsilon, steps, loss, momentum, rho),
                      lambda rng: _apgd_graph(model_fn, epsilon, steps, loss, momentum, rho, rng,
                                              batch_signature(x, 2)), seed)
    return model_fn, attack


def _attack_standing(attack, x, y, targets, x_adv, fooled, batch_size: int, label: str) -> None:
    """Runs `attack` on the images not yet fooled, updating `x_adv` and `fooled` in place."""
    todo = np.flatnonzero(~fooled)
    for idx in batches(todo, batch_size, label):
        adv, hit = attack(tf.constant(x[idx]), tf.constant(y[idx]), tf.constant(targets[idx]))
        x_adv[idx], fooled[idx] = adv.numpy(), hit.numpy()


def apgd(model, x, y, epsilon: float, *, steps: int = 100, loss: str = "ce", restarts: int = 1,
         momentum: float = 0.75, rho: float = 0.75, eot_samples: int | None = None,
         batch_size: int = DEFAULT_BATCH_SIZE, seed: int | None = 0) -> np.ndarray:
    """Auto-PGD, untargeted L∞, with EOT gradients on random models.

    Step size 2ε halved at the paper's checkpoints when fewer than `rho` of
    the steps since the last checkpoint raised the loss or the best loss has
    not moved (then restarting from the best point); momentum 0.75.

    Args:
        model: A Keras model that outputs logits.
        x, y: Images in [0, 1] and integer labels.
        epsilon: L∞ radius.
        steps: Iterations per restart.
        loss: "ce" (cross-entropy) or "dlr" (difference of logits ratio), both
            averaged over the EOT draws, as is the prediction that decides success.
        restarts: Restarts, each on the images not yet fooled.
        momentum, rho: The paper's momentum and step-halving threshold.
        eot_samples: Noise draws per gradient (default: 20 on random models, 1 otherwise).
        batch_size: Images per batch.
        seed: Seed of the attack's own random generator.

    Returns:
        Per image, the first misclassified input found, else the one with the
        highest loss, as a NumPy array shaped like `x`.
    """
    x, y, epsilon = check_attack_args(model, x, y, epsilon, batch_size)
    steps, restarts = check_count("steps", steps), check_count("restarts", restarts)
    check_choice("APGD loss", loss, LOSSES)
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    _, attack = _compiled_apgd(model, x, epsilon, steps, loss, momentum, rho, eot_samples, seed)
    x_adv, fooled = x.copy(), np.zeros(len(x), bool)
    for restart in range(restarts):
        _attack_standing(attack, x, y, y, x_adv, fooled, batch_size, f"apgd-{loss} {restart + 1}/{restarts}")
    return x_adv


def apgd_targeted(model, x, y, epsilon: float, *, steps: int = 100, targets: int = TARGET_CLASSES,
                  momentum: float = 0.75, rho: float = 0.75, eot_samples: int | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, seed: int | None = 0) -> np.ndarray:
    """APGD-T: APGD with the targeted DLR loss, once per target class (Croce and Hein, 2020).

    The targets of an image are the classes its clean (EOT) prediction ranks
    2nd, 3rd, ..., `targets + 1`-th; each run of `steps` iterations starts on
    the images that no earlier target fooled. Success means misclassified, as
    in AutoAttack, whichever class wins.

    Args:
        model: A Keras model that outputs logits; at least 4 classes (the loss
            reads the 4th-largest logit).
        x, y: Images in [0, 1] and integer labels.
        epsilon: L∞ radius.
        steps: Iterations per target.
        targets: Target classes per image (at most the number of classes - 1).
        momentum, rho: APGD's momentum and step-halving threshold.
        eot_samples: Noise draws per gradient (default: 20 on random models, 1 otherwise).
        batch_size: Images per batch.
        seed: Seed of the attack's own random generator.

    Returns:
        Per image, the first misclassified input found, else the last run's
        highest-loss input, as a NumPy array shaped like `x`.
    """
    x, y, epsilon = check_attack_args(model, x, y, epsilon, batch_size)
    steps, targets = check_count("steps", steps), check_count("targets", targets)
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    if not len(x):
        return x.copy()
    model_fn, attack = _compiled_apgd(model, x, epsilon, steps, "dlr-t", momentum, rho, eot_samples, seed)
    classes = eot_scores(model_fn, x[:1]).shape[1]  # from the output itself: any model, subclassed too
    if classes < 4:
        raise ValueError(f"APGD-T needs at least 4 classes; model {model.name!r} has {classes}.")
    x_adv, fooled = x.copy(), np.zeros(len(x), bool)
    for k, target in enumerate(target_classes(model_fn, x, targets, batch_size).T, start=1):
        _attack_standing(attack, x, y, target, x_adv, fooled, batch_size, f"apgd-t target {k}/{targets}")
    return x_adv
