"""Every attack and the training step on 32 × 32 × 3 images (CIFAR-10's shape), not only on MNIST's one channel."""

import keras
import numpy as np
import pytest

import keras_pnil as kp

EPS = 8 / 255
ATTACKS = {
    "pgd": lambda m, x, y: kp.pgd(m, x, y, EPS, steps=10),
    "apgd-ce": lambda m, x, y: kp.apgd(m, x, y, EPS, steps=10),
    "apgd-dlr": lambda m, x, y: kp.apgd(m, x, y, EPS, steps=10, loss="dlr"),
    "apgd-t": lambda m, x, y: kp.apgd_targeted(m, x, y, EPS, steps=10, targets=2),
    "fab-t": lambda m, x, y: kp.fab_targeted(m, x, y, EPS, steps=10, targets=2),
    "spsa": lambda m, x, y: kp.spsa(m, x, y, EPS, steps=20, perturbations=64),
    "square": lambda m, x, y: kp.square(m, x, y, EPS, queries=300),
    "autoattack": lambda m, x, y: kp.autoattack(m, x, y, EPS, steps=5, queries=50, targets=2, fab_steps=5),
}


@pytest.fixture(scope="module")
def color_model():
    """An untrained CNN on 32 × 32 × 3 and 16 images it classifies as their labels (clean accuracy 1)."""
    keras.utils.set_random_seed(0)
    model = kp.models.small_cnn((32, 32, 3), filters=(4, 8), dense_units=16, seed=0)
    x = np.random.default_rng(0).uniform(size=(16, 32, 32, 3)).astype("float32")
    return model, x, model.predict(x, verbose=0).argmax(1)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_runs_on_three_channel_images(name, color_model):
    model, x, y = color_model
    adv = ATTACKS[name](model, x, y)
    assert adv.shape == x.shape and adv.dtype == np.float32
    assert np.abs(adv - x).max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert np.any(adv[..., 0] - x[..., 0] != adv[..., 1] - x[..., 1])  # the channels move independently
    assert kp.accuracy(model, adv, y) < 0.75  # an untrained network is fragile: each attack breaks many images


@pytest.mark.parametrize("method", ["fgsm", "rfgsm", "nfgsm", "pgd"])
def test_training_steps_on_three_channel_images(method):
    keras.utils.set_random_seed(0)
    model = kp.models.small_cnn((32, 32, 3), filters=(4, 8), dense_units=16, seed=0, pnil=method == "nfgsm")
    trainer = kp.adversarial(model, method, EPS, **({"steps": 2} if method == "pgd" else {}))
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.uniform(size=(64, 32, 32, 3)).astype("float32"), rng.integers(0, 10, 64)
    before = model.get_weights()
    history = trainer.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert all(np.any(a != b) for a, b in zip(model.get_weights(), before, strict=True) if a.ndim > 1)
