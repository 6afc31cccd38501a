import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp
from keras_pnil.attacks.common import Draws
from keras_pnil.attacks.spsa import BatchedSPSAAdam


def test_spsa_breaks_a_gradient_masking_model_that_pgd_cannot(masked_model, mnist):
    _, (xt, yt) = mnist
    x, y, eps = xt[:60], yt[:60], 0.3
    pgd_acc = kp.accuracy(masked_model, kp.pgd(masked_model, x, y, eps, steps=20), y)
    spsa_adv = kp.spsa(masked_model, x, y, eps, steps=20, perturbations=128, learning_rate=0.05, delta=0.05)
    spsa_acc = kp.accuracy(masked_model, spsa_adv, y)
    assert pgd_acc > 0.5  # zero gradients: PGD only adds its random start
    assert spsa_acc < pgd_acc - 0.3


def test_spsa_rejects_bad_arguments(trained_pair, mnist):
    _, (xt, yt) = mnist
    model = trained_pair[False]
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        kp.spsa(model, xt[:2] * 255, yt[:2], 0.1)
    with pytest.raises(ValueError, match="perturbations must be even"):
        kp.spsa(model, xt[:2], yt[:2], 0.1, perturbations=7)
    with pytest.raises(ValueError, match="learning_rate must be a positive number; got 0"):
        kp.spsa(model, xt[:2], yt[:2], 0.1, learning_rate=0)


@pytest.mark.parametrize("chunks", [1, 2, 4])
def test_spsa_estimate_of_a_linear_loss_on_one_pixel_is_exact_in_any_number_of_chunks(chunks):
    # For f(z) = a·z, a mirrored pair ±δΔ (Δ = ±1) gives (f(x + δΔ)·Δ - f(x - δΔ)·Δ) / 2 = a·δ·Δ² = a·δ:
    # every perturbation, in every chunk, contributes exactly a·δ (CleverHans' scale; Adam ignores it), so a
    # chunk dropped or unmirrored would show.
    a = tf.constant([2.0, -3.0, 0.5])
    optimizer = BatchedSPSAAdam(delta=0.01, perturbations=16, chunks=chunks)
    x = tf.fill([3, 1, 1, 1], 0.5)
    estimate = optimizer._gradient(lambda z: a * z[..., 0, 0, 0], x, Draws(tf.constant([0, 0], tf.int64)))
    np.testing.assert_allclose(estimate.numpy().ravel(), 0.01 * a.numpy(), rtol=1e-4)


def _linear_model(recorder):
    model = keras.Sequential([keras.Input((1, 1, 1)), recorder, keras.layers.Flatten(),
                              keras.layers.Dense(2, use_bias=False)])
    model.layers[-1].set_weights([np.array([[1.0, 0.0]], np.float32)])  # logits (z, 0): label 0 wants z up
    return model


def test_spsa_in_chunks_bounds_each_pass_and_attacks_as_in_one(recorder):
    # On a one-pixel linear model every estimate is exact (see above), so the attack's path does not depend
    # on how its 64 perturbations of 4 images are split: 256 inputs in one pass, or 4 passes of 64.
    x, y = np.full((4, 1, 1, 1), 0.5, np.float32), np.zeros(4, np.int64)
    model = _linear_model(recorder)
    one = kp.spsa(model, x, y, 0.1, steps=5, perturbations=64, max_model_batch=10**6)
    passes = {len(batch) for batch in recorder.seen[2:]}
    recorder.seen.clear()
    chunked = kp.spsa(model, x, y, 0.1, steps=5, perturbations=64, max_model_batch=64)
    assert max(passes) == 256 and max(len(batch) for batch in recorder.seen) == 64
    np.testing.assert_allclose(chunked, one, atol=1e-6)
    assert np.ptp(one) > 0.01  # five small steps from different random starts: paths, not one corner
    longer = kp.spsa(model, x, y, 0.1, steps=20, perturbations=64, learning_rate=0.05, max_model_batch=64)
    np.testing.assert_allclose(longer.ravel(), 0.4, atol=1e-6)  # down the label's margin, to the ball's edge
