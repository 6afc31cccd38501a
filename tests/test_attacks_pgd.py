import numpy as np
import pytest

import keras_pnil as kp
from keras_pnil.attacks.pgd import default_step_size


def test_pgd_beats_random_noise_and_more_steps_do_not_hurt(trained_pair, mnist):
    _, (xt, yt) = mnist
    model, x, y, eps = trained_pair[False], xt[:300], yt[:300], 0.15
    noise = np.clip(x + np.random.default_rng(0).choice([-eps, eps], size=x.shape), 0, 1).astype("float32")
    acc = {name: kp.accuracy(model, adv, y) for name, adv in {
        "noise": noise, "pgd5": kp.pgd(model, x, y, eps, steps=5, step_size=eps / 2),
        "pgd20": kp.pgd(model, x, y, eps, steps=20, step_size=eps / 8)}.items()}
    assert acc["pgd5"] < acc["noise"] - 0.3
    assert acc["pgd20"] <= acc["pgd5"] + 0.02


def test_restarts_keep_what_the_first_found_and_break_more(trained_pair, mnist):
    _, (xt, yt) = mnist
    model, x, y, eps = trained_pair[False], xt[:300], yt[:300], 0.1
    one = kp.pgd(model, x, y, eps, steps=5)
    three = kp.pgd(model, x, y, eps, steps=5, restarts=3)
    fooled_once = kp.evaluation.per_example_correct(model, one, y) == 0
    fooled_thrice = kp.evaluation.per_example_correct(model, three, y) == 0
    assert np.all(fooled_thrice[fooled_once])  # an image broken by the first restart stays broken
    assert fooled_thrice.sum() >= fooled_once.sum()
    assert np.abs(three - x).max() <= eps + 1e-6


def test_one_default_step_and_bad_arguments(trained_pair, mnist):
    _, (xt, yt) = mnist
    model = trained_pair[False]
    assert default_step_size(0.1, 50) == pytest.approx(0.004)  # the paper's 2ε/50
    assert default_step_size(0.1, 1) == 0.1  # never more than ε
    assert kp.training.get_perturbation("pgd", 0.1, steps=4).step_size == default_step_size(0.1, 4)
    with pytest.raises(ValueError, match="epsilon must be a number in"):
        kp.pgd(model, xt[:2], yt[:2], 2.0)
    with pytest.raises(ValueError, match="differ in length"):
        kp.pgd(model, xt[:2], yt[:3], 0.1)
    with pytest.raises(ValueError, match="step_size must lie in"):
        kp.pgd(model, xt[:2], yt[:2], 0.1, step_size=0.2)
    with pytest.raises(ValueError, match="restarts must be an integer >= 1; got 0"):
        kp.pgd(model, xt[:2], yt[:2], 0.1, restarts=0)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1; got 0"):
        kp.pgd(model, xt[:2], yt[:2], 0.1, batch_size=0)
