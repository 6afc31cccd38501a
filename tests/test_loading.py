"""Loading a user's model file (`keras_pnil.loading`): .keras and legacy .h5, subclassed models, several outputs."""

import keras
import numpy as np
import pytest

from keras_pnil import loading
from keras_pnil.layers import PixelwiseNoiseInjection, find_pnil
from keras_pnil.loading import ModelFileError, OutputSelector

SHAPE = (8, 8, 1)


@pytest.fixture
def images():
    return np.random.default_rng(0).random((5, *SHAPE)).astype("float32")


def _sequential():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3)], name="seq")


def _two_outputs(random_layer=False):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(SHAPE)
    x = PixelwiseNoiseInjection(bias_initializer=keras.initializers.Constant(0.0), name="pnil")(inputs) \
        if random_layer else inputs
    features = keras.layers.Flatten()(x)
    return keras.Model(inputs, [keras.layers.Dense(3, name="logits")(features),
                                keras.layers.Dense(2, name="aux")(features)], name="two")


@keras.saving.register_keras_serializable(package="test")
class SubclassedNet(keras.Model):
    def __init__(self, units=3, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.flatten = keras.layers.Flatten()
        self.dense = keras.layers.Dense(units)

    def call(self, x):
        return self.dense(self.flatten(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="test")
class DictNet(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.flatten = keras.layers.Flatten()
        self.features = keras.layers.Dense(4)
        self.dropout = keras.layers.Dropout(0.5, seed=0)
        self.logits = keras.layers.Dense(3)

    def call(self, x, training=None):
        features = self.features(self.flatten(x))
        return {"logits": self.logits(self.dropout(features, training=training)), "features": features}


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_sequential_round_trip_gives_identical_logits(tmp_path, images, suffix):
    model = _sequential()
    path = tmp_path / f"m{suffix}"
    model.save(path)
    if suffix == ".h5":
        assert path.read_bytes()[:8] == loading.HDF5_SIGNATURE  # Keras 3 writes legacy HDF5 for .h5
    loading.check_model_file(path)
    loaded = loading.load_model(path)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
    assert loading.input_shape(loaded) == SHAPE
    assert loading.output_width(loaded) == 3


def test_subclassed_model_loads_and_is_built_from_images(tmp_path, images):
    model = SubclassedNet(name="sub")
    expected = keras.ops.convert_to_numpy(model(images))
    model.save(tmp_path / "sub.keras")
    loaded = loading.load_model(tmp_path / "sub.keras")
    assert isinstance(loaded, SubclassedNet) and not hasattr(loaded, "inputs")
    assert loading.input_shape(loaded, images) == SHAPE
    assert loading.input_shape(loaded) == SHAPE  # the shape it was built for, kept in the file
    assert loading.output_width(loaded, images) == 3
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images)), expected, rtol=1e-6)
    with pytest.raises(ModelFileError, match=r"^model 'sub' cannot take images shaped \(4, 4, 1\): "):
        loading.input_shape(loaded, images[:, :4, :4])


def test_never_built_subclassed_model_asks_for_images(images):
    model = SubclassedNet(name="fresh")
    with pytest.raises(ModelFileError, match=r"model 'fresh' has no known input shape .*pass images"):
        loading.input_shape(model)
    assert loading.input_shape(model, images[:, :4, :4]) == (4, 4, 1)


def test_two_output_model_needs_an_output_chosen(tmp_path, images):
    model = _two_outputs()
    model.save(tmp_path / "two.keras")
    with pytest.raises(ModelFileError, match=r"^model 'two' has 2 outputs \('logits', 'aux'\): choose its logits"):
        loading.load_model(tmp_path / "two.keras")

    chosen = loading.load_model(tmp_path / "two.keras", output="logits")
    assert len(chosen.outputs) == 1 and loading.output_width(chosen) == 3
    np.testing.assert_allclose(chosen.predict(images, verbose=0), model.predict(images, verbose=0)[0], rtol=1e-6)
    by_index = loading.load_model(tmp_path / "two.keras", output="1")
    np.testing.assert_allclose(by_index.predict(images, verbose=0), model.predict(images, verbose=0)[1], rtol=1e-6)

    with pytest.raises(ModelFileError, match=r"has no output 'probs'; its outputs are 'logits', 'aux'$"):
        loading.load_model(tmp_path / "two.keras", output="probs")
    with pytest.raises(ModelFileError, match=r"model 'two' has 2 outputs"):
        loading.output_width(model)


def test_dict_output_subclassed_model_through_output_selector(tmp_path, images):
    model = DictNet(name="dictnet")
    expected = keras.ops.convert_to_numpy(model(images)["logits"])
    model.save(tmp_path / "dict.keras")
    with pytest.raises(ModelFileError, match=r"has 2 outputs \('logits', 'features'\)"):
        loading.load_model(tmp_path / "dict.keras")
    chosen = loading.load_model(tmp_path / "dict.keras", output="logits")
    assert isinstance(chosen, OutputSelector)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(chosen(images)), expected, rtol=1e-6)
    assert loading.input_shape(chosen) == SHAPE and loading.output_width(chosen, images) == 3
    dropped = keras.ops.convert_to_numpy(chosen(images, training=True))  # `training` reaches the model's Dropout
    assert np.abs(dropped - expected).max() > 1e-3
    with pytest.raises(ModelFileError, match=r"has no output 'scores'; its outputs are 'logits', 'features'$"):
        loading.load_model(tmp_path / "dict.keras", output="scores")


def test_unloadable_layers_name_the_file_and_the_remedy(tmp_path):
    path = tmp_path / "sub.keras"
    model = SubclassedNet(name="sub")
    model(np.zeros((1, *SHAPE), "float32"))
    model.save(path)
    unknown = keras.saving.get_custom_objects().pop("test>SubclassedNet")
    try:
        with pytest.raises(ModelFileError) as err:
            loading.load_model(path)
    finally:
        keras.saving.get_custom_objects()["test>SubclassedNet"] = unknown
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"cannot load the model {path}: ")
    assert message.endswith("needs the Python file that defines and registers them: import it first.")


def test_files_of_another_format_fail_in_one_line(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not a model\n")
    truncated = tmp_path / "cut.keras"
    _sequential().save(tmp_path / "whole.keras")
    truncated.write_bytes((tmp_path / "whole.keras").read_bytes()[:200])
    cases = {text: f"{text} is not an HDF5 model file (.h5 files start with the HDF5 signature): truncated or "
                   "another format",
             truncated: f"{truncated} is not a Keras model file (a .keras zip archive): truncated or another format",
             tmp_path / "absent.keras": f"{tmp_path / 'absent.keras'}: no such model file",
             tmp_path: f"{tmp_path} is not a Keras model file: expected a .keras, .h5 or .hdf5 file"}
    for path, expected in cases.items():
        with pytest.raises(ModelFileError) as err:
            loading.load_model(path)
        assert str(err.value) == expected
        assert isinstance(err.value, ValueError)


def test_chosen_output_keeps_a_random_layer_random(tmp_path, images):
    model = _two_outputs(random_layer=True)
    model.save(tmp_path / "noisy.keras")
    chosen = loading.load_model(tmp_path / "noisy.keras", output="logits")
    assert find_pnil(chosen) is not None
    first, second = (keras.ops.convert_to_numpy(chosen(images, training=False)) for _ in range(2))
    assert first.shape == (5, 3) and np.abs(first - second).max() > 1e-3
