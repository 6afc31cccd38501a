import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPU devices, so MirroredStrategy can be tested on one CPU. This
# must happen before TensorFlow initialises its devices.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

ROOT = Path(__file__).resolve().parents[1]
# CI sets this so that missing data fails the run instead of skipping half the suite.
REQUIRE_DATA = os.environ.get("KERAS_PNIL_REQUIRE_DATA") == "1"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("KERAS_PNIL_DATA_DIR", ROOT.parent / "shared" / "datasets"))
    if not (path / "mnist").is_dir():
        message = (f"MNIST not found under {path}: set KERAS_PNIL_DATA_DIR to a folder holding mnist/ and "
                   "fashion_mnist/ with the official IDX files (see ../shared/datasets/README.md).")
        if REQUIRE_DATA:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def mnist(data_dir):
    from keras_pnil.data import load_dataset

    return load_dataset("mnist", data_dir)


@pytest.fixture(scope="session")
def trained_pair(mnist):
    """A small NFGSM-trained CNN without and with PNIL (3,000 images, 2 epochs), shared by slow tests.

    Tests must not change these models: `with_noise` gives a changed copy.
    """
    import keras_pnil as kp

    (x, y), _ = mnist
    models = {}
    for pnil in (False, True):
        keras.utils.set_random_seed(0)
        model = kp.models.small_cnn(pnil=pnil, seed=0, filters=(8, 16), dense_units=64)
        trainer = kp.adversarial(model, "nfgsm", 8 / 255)
        trainer.compile(optimizer=keras.optimizers.Adam(2e-3),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        # Keras' own array order, as these models had when the slow tests' statistics were set (0.2.0):
        # test_pnil_gradients' sign of B's pull holds for this order and not for every order.
        keras.Model.fit(trainer, x[:3000], y[:3000], batch_size=100, epochs=2, verbose=0)
        models[pnil] = model
    return models


@pytest.fixture(scope="session")
def clean_control(mnist):
    """The control for `trained_pair`: the same CNN, seed and budget, trained on clean images only."""
    import keras_pnil as kp

    (x, y), _ = mnist
    keras.utils.set_random_seed(0)
    model = kp.models.small_cnn(seed=0, filters=(8, 16), dense_units=64)
    trainer = kp.adversarial(model, "clean", 8 / 255)
    trainer.compile(optimizer=keras.optimizers.Adam(2e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    keras.Model.fit(trainer, x[:3000], y[:3000], batch_size=100, epochs=2, verbose=0)  # as trained_pair
    return model


def _with_noise(model: keras.Model, log_variance: float) -> keras.Model:
    """A copy of a PNIL model with its bias B set to `log_variance` on every pixel (σ ≈ e^(B/2): W stays ≈ 0)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    layer = copy.get_layer("pnil")
    layer.bias.assign(np.full(layer.bias.shape, log_variance, np.float32))
    return copy


@pytest.fixture(scope="session")
def with_noise():
    """`with_noise(model, B)`: a copy of a PNIL model with its noise raised, leaving the shared model as it is."""
    return _with_noise


class ZeroGradientQuantizer(keras.layers.Layer):
    """Rounds inputs to 4 levels with an exactly zero gradient: textbook gradient masking."""

    def call(self, x):
        return tf.stop_gradient(tf.round(x * 3.0) / 3.0) + 0.0 * x


class Recorder(keras.layers.Layer):
    """Passes its input on unchanged and keeps a copy of every batch it is run on, inside compiled attack graphs
    too: a spy on the points an attack evaluates, in order (`seen`, a list of NumPy arrays)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        object.__setattr__(self, "seen", [])  # past Keras' attribute tracking

    def call(self, x):
        kept = tf.py_function(lambda value: self.seen.append(value.numpy()) or 0, [x], Tout=tf.int32)
        with tf.control_dependencies([kept]):
            return tf.identity(x)


@pytest.fixture
def recorder() -> Recorder:
    """A fresh `Recorder` layer to put in a toy model."""
    return Recorder()


@pytest.fixture(scope="session")
def masked_model(trained_pair):
    """The NFGSM-trained CNN behind a zero-gradient quantiser: PGD fails, SPSA should not."""
    base = trained_pair[False]
    inputs = keras.Input((28, 28, 1))
    return keras.Model(inputs, base(ZeroGradientQuantizer()(inputs)), name="masked")
