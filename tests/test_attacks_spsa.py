import pytest

import keras_pnil as kp


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
