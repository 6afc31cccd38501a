import keras
import numpy as np
import pytest

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
