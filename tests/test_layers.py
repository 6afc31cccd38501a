import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_pnil import PixelwiseNoiseInjection
from keras_pnil.layers import LOG_VARIANCE_RANGE


def _layer(w, b, shape=(4, 4, 1), **kwargs):
    layer = PixelwiseNoiseInjection(kernel_initializer=keras.initializers.Constant(w),
                                    bias_initializer=keras.initializers.Constant(b), **kwargs)
    layer.build((None, *shape))
    return layer


def test_output_mean_and_variance_follow_equations_2_and_3():
    # Σ = x·W + B, X' - X ~ N(0, exp(Σ)): check both moments per input value.
    layer = _layer(w=2.0, b=-3.0, seed=1)
    n = 20000
    for value in (0.0, 0.5, 1.0):
        x = np.full((n, 4, 4, 1), value, np.float32)
        noise = (layer(x).numpy() - x).ravel()
        expected_var = np.exp(2.0 * value - 3.0)
        # 320k samples: the relative standard error of the variance is sqrt(2/n) ≈ 0.25 %.
        assert abs(noise.mean()) < 5 * np.sqrt(expected_var / noise.size)
        assert noise.var() == pytest.approx(expected_var, rel=0.02)


def test_noise_stddev_and_log_variance_methods():
    layer = _layer(w=1.0, b=-2.0)
    x = np.full((1, 4, 4, 1), 0.5, np.float32)
    np.testing.assert_allclose(layer.log_variance(x).numpy(), -1.5, rtol=1e-6)
    np.testing.assert_allclose(layer.noise_stddev(x).numpy(), np.exp(-0.75), rtol=1e-6)


def test_log_variance_is_clipped_so_no_input_overflows():
    layer = _layer(w=1e4, b=0.0, shape=(3,))
    out = layer(np.ones((2, 3), np.float32)).numpy()
    assert np.all(np.isfinite(out))
    assert layer.log_variance(np.ones((1, 3), np.float32)).numpy().max() == LOG_VARIANCE_RANGE[1]
    assert LOG_VARIANCE_RANGE[0] <= -10 and LOG_VARIANCE_RANGE[1] >= 2


def test_gradients_reach_kernel_and_bias():
    layer = _layer(w=0.5, b=-1.0, seed=0)
    x = tf.constant(np.random.default_rng(0).uniform(size=(8, 4, 4, 1)), tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, training=True) ** 2)
    grad_w, grad_b = tape.gradient(loss, [layer.kernel, layer.bias])
    for grad in (grad_w, grad_b):
        assert grad is not None and np.all(np.isfinite(grad)) and np.abs(grad.numpy()).sum() > 0


def test_noise_at_inference_by_default_and_optional():
    x = np.full((2, 4, 4, 1), 0.5, np.float32)
    random_layer = _layer(w=0.0, b=-2.0)
    assert not np.allclose(random_layer(x, training=False), random_layer(x, training=False))
    regulariser = _layer(w=0.0, b=-2.0, noise_at_inference=False)
    np.testing.assert_array_equal(regulariser(x, training=False), x)
    assert not np.allclose(regulariser(x, training=True), x)


def test_seed_makes_noise_reproducible():
    x = np.full((2, 4, 4, 1), 0.5, np.float32)
    a, b = _layer(0.0, -2.0, seed=7), _layer(0.0, -2.0, seed=7)
    np.testing.assert_array_equal(a(x), b(x))


def test_save_and_load_round_trip(tmp_path):
    inputs = keras.Input((6, 6, 2))
    x = PixelwiseNoiseInjection(seed=3, kernel_initializer="random_normal")(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe mode: needs the registered class only
    assert isinstance(loaded.layers[1], PixelwiseNoiseInjection)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.layers[1].get_config()["seed"] == 3


def test_works_in_sequential_on_flat_features_and_under_mixed_precision():
    model = keras.Sequential([keras.Input((5,)), PixelwiseNoiseInjection(), keras.layers.Dense(2)])
    assert model.layers[0].kernel.shape == (5,)
    assert model(np.zeros((3, 5), np.float32)).shape == (3, 2)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = _layer(w=0.0, b=-2.0)
        out = layer(np.full((2, 4, 4, 1), 0.5, np.float32))
        assert out.dtype == tf.float16 and np.all(np.isfinite(out.numpy()))
        assert layer.kernel.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("kwargs, quoted", [
    ({"seed": -1}, "seed=-1"),
    ({"seed": 1.5}, "seed=1.5"),
    ({"noise_at_inference": "yes"}, "noise_at_inference='yes'"),
])
def test_bad_arguments_are_rejected_with_the_value(kwargs, quoted):
    with pytest.raises(ValueError, match=quoted):
        PixelwiseNoiseInjection(**kwargs)


def test_unknown_feature_shape_is_rejected():
    with pytest.raises(ValueError, match="fully known"):
        PixelwiseNoiseInjection().build((None, None, 3))
