"""Mixed precision (Keras' mixed_float16): the input gradients of attacks and training methods keep their signs,
training still learns, and `keras-pnil-train --mixed-precision` trains a float16 network."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp
from keras_pnil import recipe, runs
from keras_pnil.attacks.eot import EOT, cross_entropy_sum, input_gradient, negative_log_likelihood
from keras_pnil.attacks.pgd import loss_gradient
from keras_pnil.cli import train_main

IMAGES = 200
# The trained CNN's logits times this: as confident as a longer-trained network (p(label) ≈ 1 - 1e-6 on many
# images), where the cross-entropy gradient 1 - p underflows float16 on its way back to the pixels.
CONFIDENCE = 6.0


@pytest.fixture(autouse=True)
def float32_after():
    """Every test leaves Keras' global policy as it found it (float32)."""
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


@pytest.fixture(scope="module")
def confident_weights(mnist):
    """A small CNN trained on 1,000 MNIST images for 2 epochs (float32, seed 0), its logits sharpened."""
    (x, y), _ = mnist
    keras.utils.set_random_seed(0)
    model = kp.models.small_cnn(seed=0, filters=(8, 16), dense_units=64)
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1000], y[:1000], batch_size=100, epochs=2, verbose=0)
    weights = model.get_weights()
    return weights[:-2] + [w * CONFIDENCE for w in weights[-2:]]


def _pair(weights, pnil: bool):
    """The same network in float32 and under mixed_float16 (a PNIL of σ ≈ 0.08 first if `pnil`)."""
    pair = []
    for policy in ("float32", "mixed_float16"):
        keras.config.set_dtype_policy(policy)
        model = kp.models.small_cnn(seed=0, filters=(8, 16), dense_units=64, pnil=pnil)
        extra = [np.zeros((28, 28, 1), np.float32), np.full((28, 28, 1), -5.0, np.float32)] if pnil else []
        model.set_weights(extra + weights)
        pair.append(model)
    keras.config.set_dtype_policy("float32")
    return pair


def _same_noise(model):
    """The PNIL's next draws the same for every call of this (seeded noise, as in a fixed-seed comparison)."""
    layer = kp.layers.find_pnil(model)
    if layer is not None:
        layer.seed_generator.state.assign(np.array([7, 0], np.uint32))


def _gradients(model, x, y) -> dict:
    """∇x four ways: the methods' `input_gradient`, the attacks' (through `EOT`), PGD training's (through a
    trainer's model_fn), and unscaled (the control: the summed cross-entropy of the model's logits, cast to
    float32, as the library differentiated before)."""
    x, y = tf.constant(x), tf.constant(y)
    _same_noise(model)
    method = input_gradient(lambda t: model(t, training=False), x, y).numpy()
    _same_noise(model)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(negative_log_likelihood(y, EOT(model, 1, images=x[:1])(x)))
    attack = tape.gradient(loss, x).numpy()
    _same_noise(model)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = cross_entropy_sum(y, model(x, training=False))
    unscaled = tape.gradient(loss, x).numpy()
    _same_noise(model)
    trainer = kp.adversarial(model, "pgd", 0.1)  # the methods' own model_fn (PGD's steps, TRADES's, GradAlign's)
    training = loss_gradient(trainer._model_fn, cross_entropy_sum, y)(x)[0].numpy()
    return {"input_gradient": method, "EOT": attack, "training": training, "unscaled": unscaled}


def _agreement(reference, values) -> float:
    """The fraction of the reference's non-zero entries whose sign `values` shares."""
    nonzero = reference != 0
    return float(np.mean(np.sign(values[nonzero]) == np.sign(reference[nonzero])))


@pytest.mark.parametrize("pnil", [False, True], ids=["plain", "pnil"])
def test_input_gradient_signs_agree_with_float32_and_underflow_without_loss_scaling(mnist, confident_weights, pnil):
    _, (x_test, y_test) = mnist
    x, y = x_test[:IMAGES], y_test[:IMAGES]
    full, half = _pair(confident_weights, pnil)
    reference, mixed = _gradients(full, x, y), _gradients(half, x, y)
    # float32: the two library paths agree with plain differentiation (no scaling there at all).
    np.testing.assert_array_equal(reference["input_gradient"], reference["unscaled"])
    assert np.mean(reference["unscaled"] != 0) > 0.99
    for path in ("input_gradient", "EOT", "training"):
        gradient = mixed[path]
        assert np.all(np.isfinite(gradient)), path
        assert _agreement(reference[path], gradient) >= 0.99, (path, _agreement(reference[path], gradient))
        assert np.mean(gradient[reference[path] != 0] == 0) < 0.001, path
    # Measured when this was written: 0.997 with the loss scaling (both paths, either model; 0.9955 for
    # input_gradient with the PNIL). The control: without it, float16 loses a large part of the signs (0.74
    # without a PNIL, 0.77 with one), 26 % and 23 % of the pixels' gradients underflowing to exactly zero.
    unscaled = _agreement(reference["unscaled"], mixed["unscaled"])
    assert unscaled < 0.9, unscaled
    # Not only the signs: the scale is divided out again, so each image's gradient keeps float32's size (FAB's
    # linearisation reads it). float16's rounding of a confident image's logits moves its gradient's norm by up
    # to 0.6-1.8x (measured); a scale left in would multiply it by 2^10 and more.
    for path in ("input_gradient", "EOT", "training"):
        norms = [np.linalg.norm(g.reshape(len(x), -1), axis=1) for g in (reference[path], mixed[path])]
        ratio = norms[1][norms[0] > 0] / norms[0][norms[0] > 0]
        assert np.all((ratio > 0.25) & (ratio < 4.0)), (path, ratio.min(), ratio.max())
    assert np.mean(mixed["unscaled"][reference["unscaled"] != 0] == 0) > 0.05


def test_the_pnil_computes_its_noise_in_float32_and_keeps_float32_weights():
    keras.config.set_dtype_policy("mixed_float16")
    layer = kp.PixelwiseNoiseInjection(seed=1, bias_initializer=keras.initializers.Constant(-20.0))
    out = layer(np.full((4, 6, 6, 1), 0.25, np.float32))
    assert out.dtype == tf.float16 and layer.kernel.dtype == "float32" and layer.bias.dtype == "float32"
    # At the smallest noise scale, exp(-10) ≈ 4.5e-5 (below float16's smallest normal number), the scale
    # is still exact float32, not a float16 subnormal.
    assert layer.noise_stddev(np.zeros((1, 6, 6, 1), np.float32)).dtype == tf.float32
    np.testing.assert_allclose(layer.noise_stddev(np.zeros((1, 6, 6, 1), np.float32)).numpy(), np.exp(-10.0),
                               rtol=1e-6)
    keras.config.set_dtype_policy("float32")
    same = kp.PixelwiseNoiseInjection(seed=1, bias_initializer=keras.initializers.Constant(-2.0))
    half = (keras.config.set_dtype_policy("mixed_float16"),
            kp.PixelwiseNoiseInjection(seed=1, bias_initializer=keras.initializers.Constant(-2.0)))[1]
    x = np.random.default_rng(0).uniform(size=(4, 6, 6, 1)).astype(np.float32)
    # The same draws as a float32 layer's, rounded once to float16 at the end.
    np.testing.assert_allclose(half(x).numpy().astype(np.float32), same(x).numpy(), rtol=1e-3, atol=1e-3)


def test_training_under_mixed_precision_learns(mnist):
    (x, y), (x_test, y_test) = mnist
    keras.config.set_dtype_policy("mixed_float16")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    hidden = keras.layers.Flatten()(kp.PixelwiseNoiseInjection(seed=0, name="pnil")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Dense(64, activation="relu")(hidden)))
    trainer = kp.adversarial(model, "fgsm", 0.05)  # FGSM: its step is sign(input_gradient)
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)  # Keras' own, for the weights
    history = trainer.fit(x[:3000], y[:3000], batch_size=100, epochs=2, verbose=0)
    accuracy = np.mean(np.argmax(model.predict(x_test[:500], verbose=0), -1) == y_test[:500])
    assert np.all(np.isfinite(history.history["loss"]))
    assert accuracy > 0.6, accuracy  # chance is 0.1 (0.84 measured; float32: 0.85)


@pytest.mark.parametrize("method, options", [("pgd", {"steps": 2}), ("gradalign", {})])
def test_methods_with_their_own_gradients_train_under_mixed_precision(mnist, method, options):
    # PGD's steps (TRADES's take the same path) and GradAlign's second gradient (differentiated again for the
    # weights) go through the trainer's loss-scaled model_fn.
    (x, y), _ = mnist
    keras.config.set_dtype_policy("mixed_float16")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    hidden = keras.layers.Dense(32, activation="relu")(keras.layers.Flatten()(inputs))
    trainer = kp.adversarial(keras.Model(inputs, keras.layers.Dense(10)(hidden)), method, 0.1, **options)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [w.numpy().copy() for w in trainer.trainable_weights]
    logs = trainer.train_on_batch(x[:64], y[:64], return_dict=True)
    assert all(np.isfinite(v) for v in logs.values()), logs
    assert all(not np.array_equal(a, w.numpy()) for a, w in zip(before, trainer.trainable_weights, strict=True))
    if method != "pgd":
        assert logs[trainer.perturbation.penalties[0]] > 0, logs


def test_train_command_mixed_precision_flag(tmp_path, data_dir):
    out = tmp_path / "run"
    assert train_main(["--data-dir", str(data_dir), "--dataset", "mnist", "--architecture", "wong_mnist", "--pnil",
                       "--method", "fgsm", "--mixed-precision", "--train-size", "200", "--epochs", "1",
                       "--batch-size", "50", "--validation-size", "20", "--monitor-images", "10",
                       "--monitor-eot", "2", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["mixed_precision"] is True
    assert keras.config.dtype_policy().name == "float32"  # the command's policy does not outlive the run
    model = keras.models.load_model(out / "model.keras")
    policies = {layer.dtype_policy.name for layer in model.layers if layer.weights}
    assert policies == {"mixed_float16"} and model(np.zeros((1, 28, 28, 1), np.float32)).dtype == tf.float16
    assert all(w.dtype == "float32" for w in model.weights)
    assert runs.training_config({})["mixed_precision"] is False
    with pytest.raises(ValueError, match="mixed_precision must be true or false"):
        runs.training_config({"mixed_precision": "yes"})


def test_precision_restores_the_policy_after_an_error():
    with pytest.raises(RuntimeError), recipe.precision(True):
        assert keras.config.dtype_policy().name == "mixed_float16"
        raise RuntimeError("interrupted")
    assert keras.config.dtype_policy().name == "float32"
