"""FAB-T by its defining behaviour: the smallest perturbation that changes the prediction, within ε."""

import keras
import numpy as np
import tensorflow as tf

import keras_pnil as kp
from keras_pnil.attacks.fab import linf_projection


def test_the_projection_is_the_smallest_linf_step_onto_the_hyperplane_inside_the_box():
    # w·δ = c with |δ| ≤ t: without the box t = |c| / Σ|w|; here (0.5, 0.5), w = (1, 2), c = 0.6 → t = 0.2.
    point, w = tf.constant([[0.5, 0.5]]), tf.constant([[1.0, 2.0]])
    np.testing.assert_allclose(linf_projection(point, w, tf.constant([0.6])).numpy(), [[0.2, 0.2]], atol=1e-5)
    # At the box edge the first pixel cannot rise: (1.0, 0.5), c = 0.6 → δ = (0, 0.3).
    edge = linf_projection(tf.constant([[1.0, 0.5]]), w, tf.constant([0.6])).numpy()
    np.testing.assert_allclose(edge, [[0.0, 0.3]], atol=1e-5)


def test_fab_t_breaks_images_inside_the_ball_with_smaller_norms_than_pgd(trained_pair, mnist):
    _, (xt, yt) = mnist
    model, x, y, eps = trained_pair[False], xt[:200], yt[:200], 0.15
    fab = kp.fab_targeted(model, x, y, eps, steps=30, targets=3)
    pgd = kp.pgd(model, x, y, eps, steps=20)
    fab_norm, pgd_norm = (np.abs(a - x).reshape(len(x), -1).max(1) for a in (fab, pgd))
    assert fab_norm.max() <= eps + 1e-6 and fab.min() >= 0 and fab.max() <= 1
    predicted = lambda a: model.predict(a, verbose=0).argmax(1)  # noqa: E731
    clean_right = predicted(x) == y
    fab_broke, pgd_broke = clean_right & (predicted(fab) != y), clean_right & (predicted(pgd) != y)
    assert fab_broke.sum() >= 0.8 * pgd_broke.sum() > 10  # it finds most of what PGD finds ...
    both = fab_broke & pgd_broke
    assert np.median(fab_norm[both]) < 0.9 * np.median(pgd_norm[both])  # ... closer to the image
    assert (fab[~fab_broke & clean_right] == x[~fab_broke & clean_right]).all()  # failures return the image


def test_fab_t_finds_the_smallest_step_to_its_target_class_on_a_linear_model():
    # Logits (1, 2(z0 + z1) - 1.6, -5) at x = (0.5, 0.5): (1, 0.4, -5), so the target (the class ranked 2nd)
    # is 1, reached where z0 + z1 = 1.3: the smallest L∞ step is (0.15, 0.15). Within ε = 0.2 FAB-T finds it
    # (the last step overshoots a little); within ε = 0.1 there is none and the image comes back unchanged.
    model = keras.Sequential([keras.Input((1, 2, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.layers[-1].set_weights([np.array([[0.0, 2.0, 0.0], [0.0, 2.0, 0.0]], np.float32),
                                  np.array([1.0, -1.6, -5.0], np.float32)])
    x, y = np.full((1, 1, 2, 1), 0.5, np.float32), np.array([0])
    adv = kp.fab_targeted(model, x, y, 0.2, steps=20, targets=1)
    assert model.predict(adv, verbose=0).argmax(1).tolist() == [1]
    np.testing.assert_allclose((adv - x).ravel(), [0.15, 0.15], atol=2e-3)
    np.testing.assert_array_equal(kp.fab_targeted(model, x, y, 0.1, steps=20, targets=1), x)
