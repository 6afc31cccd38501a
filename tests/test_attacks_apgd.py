import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp


def test_apgd_checkpoints_follow_the_papers_schedule():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (steps of max(previous step - 0.03, 0.06)).
    assert kp.attacks.apgd_checkpoints(100).tolist() == [22, 41, 57, 70, 80, 87, 93, 99]
    assert kp.attacks.apgd_checkpoints(1000).tolist()[:3] == [220, 410, 570]
    assert kp.attacks.apgd_checkpoints(20).max() <= 20


def test_apgd_is_at_least_as_strong_as_pgd(trained_pair, mnist):
    _, (xt, yt) = mnist
    model, x, y, eps = trained_pair[False], xt[:300], yt[:300], 0.1
    pgd_acc = kp.accuracy(model, kp.pgd(model, x, y, eps, steps=20), y)
    ce_acc = kp.accuracy(model, kp.apgd(model, x, y, eps, steps=20), y)
    dlr_acc = kp.accuracy(model, kp.apgd(model, x, y, eps, steps=20, loss="dlr"), y)
    clean = kp.accuracy(model, x, y)
    assert ce_acc <= pgd_acc + 0.02 and dlr_acc <= pgd_acc + 0.05  # 300 images: ±0.02-0.03 noise
    assert ce_acc < clean - 0.2


def test_apgd_rejects_an_unknown_loss(trained_pair, mnist):
    _, (xt, yt) = mnist
    with pytest.raises(ValueError, match="Unknown APGD loss 'hinge'"):
        kp.apgd(trained_pair[True], xt[:2], yt[:2], 0.1, loss="hinge")


def test_apgd_t_is_at_least_as_strong_as_apgd_ce_and_stays_in_the_ball(trained_pair, mnist):
    _, (xt, yt) = mnist
    model, x, y, eps = trained_pair[False], xt[:300], yt[:300], 0.1
    x_adv = kp.apgd_targeted(model, x, y, eps, steps=20, targets=3)
    assert np.abs(x_adv - x).max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    ce_acc = kp.accuracy(model, kp.apgd(model, x, y, eps, steps=20), y)
    assert kp.accuracy(model, x_adv, y) <= ce_acc + 0.02  # three targeted runs; AutoAttack finds it stronger


def test_apgd_t_needs_four_classes():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="APGD-T needs at least 4 classes"):
        kp.apgd_targeted(model, np.full((2, 4), 0.5, np.float32), np.array([0, 1]), 0.1, steps=2)


class Peak(keras.layers.Layer):
    """Logits (k·|z - c|, 0) of one pixel z: the loss of label 0, log(1 + e^(-k|z - c|)), peaks at z = c and
    the label always wins (a tie at the peak goes to class 0), so APGD climbs towards c and never stops early."""

    def __init__(self, c, k=50.0, **kwargs):
        super().__init__(**kwargs)
        self.c, self.k = c, k

    def call(self, z):
        distance = tf.abs(tf.reshape(z, [-1]) - self.c)
        return tf.stack([self.k * distance, tf.zeros_like(distance)], axis=1)


def _apgd_reference(x, start, c, epsilon, steps, k=50.0, momentum=0.75, rho=0.75):
    """Croce and Hein's Algorithm 1 on one pixel, in float32 NumPy: the points APGD evaluates, in order.

    Step η = 2ε; z = P(x_k + η·sign ∇); x_k+1 = P(x_k + α(z - x_k) + (1 - α)(x_k - x_k-1)), α = 1 on the
    first step and `momentum` after; at each checkpoint w_j, η halves (and x_k and its gradient go back to the
    best point) if at most ρ·(w_j - w_j-1) of the steps since w_j-1 raised the loss, or η was not halved at
    w_j-1 and the best loss has not risen since (the official code's conditions).
    """
    f32 = np.float32
    low, high = max(f32(x) - f32(epsilon), f32(0)), min(f32(x) + f32(epsilon), f32(1))

    def project(z):
        return f32(min(max(z, low), high))

    def loss(z):
        return f32(np.log1p(np.exp(-k * abs(f32(z) - f32(c)))))

    def ascent(z):  # sign of the loss's gradient: towards c
        return f32(np.sign(f32(c) - z))

    checkpoints = kp.attacks.apgd_checkpoints(steps).tolist()
    window = dict(zip(checkpoints, np.diff([0, *checkpoints]), strict=True))
    x_k = x_prev = x_best = project(f32(start))
    loss_k = loss_best = loss(x_k)
    grad = grad_best = ascent(x_k)
    eta = eta_at_check = f32(2 * epsilon)
    best_at_check, increases, points = loss_best, 0, [x_k]
    for step in range(steps):
        z = project(x_k + eta * grad)
        alpha = f32(1.0) if step == 0 else f32(momentum)
        x_next = project(x_k + alpha * (z - x_k) + (f32(1) - alpha) * (x_k - x_prev))
        loss_next = loss(x_next)
        points.append(x_next)
        increases += loss_next > loss_k
        if loss_next > loss_best:
            x_best, loss_best, grad_best = x_next, loss_next, ascent(x_next)
        x_prev, x_k, loss_k, grad = x_k, x_next, loss_next, ascent(x_next)
        if step + 1 in window:
            if increases <= rho * window[step + 1] or (eta == eta_at_check and loss_best <= best_at_check):
                eta, x_k, grad = eta / f32(2), x_best, grad_best
            increases, eta_at_check, best_at_check = 0, eta, loss_best
    return np.array(points)


@pytest.mark.parametrize("c", [0.531, 0.47])
def test_apgd_follows_its_algorithm_step_by_step(recorder, c):
    # A spy layer records every point APGD evaluates; on a one-pixel toy the whole trajectory is known from
    # its random start: step halving, momentum and the return to the best point all show in it.
    model = keras.Sequential([keras.Input((1, 1, 1)), recorder, Peak(c)])
    x, epsilon, steps = np.full((1, 1, 1, 1), 0.5, np.float32), 0.1, 100
    x_adv = kp.apgd(model, x, np.array([0]), epsilon, steps=steps)
    seen = np.array([batch.ravel()[0] for batch in recorder.seen[-(steps + 1):]])
    expected = _apgd_reference(0.5, seen[0], c, epsilon, steps)
    np.testing.assert_allclose(seen, expected, atol=1e-6)
    assert abs(x_adv.ravel()[0] - c) < 2 * epsilon / 2**6  # the halved steps home in on the peak


def test_dlr_losses_on_hand_computed_logits():
    # Sorted logits 3 > 1 > 0.5 > -1 (classes 0, 1, 2, 3). DLR = -(z_y - max_{i≠y} z_i) / (z_π1 - z_π3):
    # label 0 (predicted): -(3 - 1) / 2.5 = -0.8; label 1: -(1 - 3) / 2.5 = 0.8. Targeted DLR towards t:
    # -(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2), target 2: label 0, -(3 - 0.5) / 3.25; label 1, -(1 - 0.5) / 3.25.
    from keras_pnil.attacks.apgd import _per_draw_loss

    draws = tf.constant([[[3.0, 1.0, 0.5, -1.0]] * 2])  # one draw of two images
    y, target = tf.constant([0, 1]), tf.constant([2, 2])
    np.testing.assert_allclose(_per_draw_loss("dlr")(draws, y, target).numpy(), [-0.8, 0.8], rtol=1e-5)
    np.testing.assert_allclose(_per_draw_loss("dlr-t")(draws, y, target).numpy(), [-2.5 / 3.25, -0.5 / 3.25],
                               rtol=1e-5)
    ce = _per_draw_loss("ce")(draws, y, target).numpy()
    np.testing.assert_allclose(ce, -np.log(np.exp([3.0, 1.0]) / np.exp([3.0, 1.0, 0.5, -1.0]).sum()), rtol=1e-5)


@pytest.mark.parametrize("norm, epsilon", [("l2", 1.0), ("l1", 4.0)])
def test_apgd_ce_and_apgd_t_share_one_compiled_graph_with_the_same_results(norm, epsilon):
    # One graph for both losses (the loss an input): an ensemble pays one trace, and each attack gives what it
    # gives on a model that never ran the other.
    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(16, "relu"),
                                 keras.layers.Dense(10)])

    rng = np.random.default_rng(0)
    x, y = rng.uniform(size=(12, 6, 6, 1)).astype("float32"), rng.integers(0, 10, 12)
    both = model()
    ce_first = kp.apgd(both, x, y, epsilon, steps=6, norm=norm)
    targeted_second = kp.apgd_targeted(both, x, y, epsilon, steps=6, targets=2, norm=norm)
    graphs = getattr(both, kp.attacks.common._CACHE)
    assert [key[0] for key in graphs] == ["apgd"] and len(graphs) == 1
    np.testing.assert_array_equal(kp.apgd_targeted(model(), x, y, epsilon, steps=6, targets=2, norm=norm),
                                  targeted_second)
    np.testing.assert_array_equal(kp.apgd(model(), x, y, epsilon, steps=6, norm=norm), ce_first)
    assert not np.array_equal(ce_first, targeted_second)  # the losses differ: the graph runs the one asked for
    kp.apgd(both, x, y, epsilon, steps=6, norm=norm, loss="dlr")  # untargeted DLR: a graph of its own
    assert len(graphs) == 2
