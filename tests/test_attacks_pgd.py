import keras
import numpy as np
import pytest
import tensorflow as tf

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
    fooled_once = kp.correctness.per_example_correct(model, one, y) == 0
    fooled_thrice = kp.correctness.per_example_correct(model, three, y) == 0
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


def _linear_model(weights):
    """Logits (z·w, 0) on 1×len(w) images: the loss of label 0 rises along -sign(w) everywhere."""
    model = keras.Sequential([keras.Input((1, len(weights), 1)), keras.layers.Flatten(),
                              keras.layers.Dense(2, use_bias=False)])
    model.layers[-1].set_weights([np.stack([weights, np.zeros(len(weights))], 1).astype("float32")])
    return model


def test_pgd_ends_at_the_corner_of_the_ball_on_a_linear_model():
    # From any start, steps of ε/2 along -sign(w) reach x - ε·sign(w) and stay: projected to the ε-ball,
    # and to [0, 1] where x is within ε of the edge.
    model = _linear_model([1.0, -2.0, 3.0, -0.5])
    x = np.array([[0.5, 0.5, 0.05, 0.95]], np.float32).reshape(1, 1, 4, 1)
    adv = kp.pgd(model, x, np.array([0]), 0.1, steps=10, step_size=0.05)
    np.testing.assert_allclose(adv.ravel(), [0.4, 0.6, 0.0, 1.0], atol=1e-6)


class Threshold(keras.layers.Layer):
    """Class 1 iff the pixel exceeds `at`, with an exactly zero gradient: only PGD's random start can move it."""

    def __init__(self, at, **kwargs):
        super().__init__(**kwargs)
        self.at = at

    def call(self, x):
        z = tf.reshape(x, [-1, 1])
        above = tf.stop_gradient(tf.cast(z > self.at, z.dtype)) + 0.0 * z
        return tf.concat([5.0 * (1.0 - above), 5.0 * above], axis=1)


def test_each_restart_is_a_fresh_chance_for_the_images_still_standing():
    # x = 0.5, ε = 0.1: a random start fools the model with probability P(u > 0.06) = 0.2, and the steps
    # cannot move it. Each restart draws a new start for the images still right: 1 - 0.8^k are fooled.
    model = keras.Sequential([keras.Input((1, 1, 1)), Threshold(0.56)])
    x, y = np.full((1000, 1, 1, 1), 0.5, np.float32), np.zeros(1000, np.int64)
    fooled = {k: model.predict(kp.pgd(model, x, y, 0.1, steps=1, restarts=k), verbose=0).argmax(1) == 1
              for k in (1, 4)}
    print({k: f.mean() for k, f in fooled.items()})
    assert fooled[1].mean() == pytest.approx(0.2, abs=0.04)
    assert fooled[4].mean() == pytest.approx(1 - 0.8**4, abs=0.05)
    assert fooled[4][fooled[1]].all()  # the first restart's successes are kept
