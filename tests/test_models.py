import keras
import numpy as np
import pytest

from keras_pnil import PixelwiseNoiseInjection, models


def _weight_layers(model):
    return [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]


def test_small_cnn_has_two_convolutions_a_dense_layer_and_logits():
    model = models.small_cnn()
    kinds = [type(layer).__name__ for layer in _weight_layers(model)]
    assert kinds == ["Conv2D", "Conv2D", "Dense", "Dense"]
    out = model(np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype("float32")).numpy()
    assert out.shape == (4, 10)
    assert not np.allclose(out.sum(-1), 1.0)  # logits, not probabilities


def test_pnil_is_the_first_layer():
    model = models.small_cnn(pnil=True)
    assert isinstance(model.layers[1], PixelwiseNoiseInjection)
    assert model.layers[1].kernel.shape == (28, 28, 1)


def test_resnet11_has_eleven_weight_layers():
    model = models.resnet11(pnil=True, widths=(8, 8, 16, 16))
    assert len(_weight_layers(model)) == 11
    assert isinstance(model.layers[1], PixelwiseNoiseInjection)
    assert model(np.zeros((2, 32, 32, 3), "float32")).shape == (2, 10)


def test_for_dataset_picks_the_papers_network():
    assert models.for_dataset("cifar10", widths=(4, 4, 4, 4)).name == "resnet11"
    assert models.for_dataset("fashion_mnist", pnil=True).name == "small_cnn_pnil"


def test_wong_mnist_is_wong_et_als_network():
    model = models.for_dataset("mnist", architecture="wong_mnist")
    assert [layer.output.shape[1:] for layer in _weight_layers(model)] == [(14, 14, 16), (7, 7, 32), (100,), (10,)]
    assert model.count_params() == 166_406  # as the PyTorch net: 272 + 8,224 + 156,900 + 1,010
    assert isinstance(models.wong_mnist(pnil=True).layers[1], PixelwiseNoiseInjection)
    with pytest.raises(ValueError, match="Unknown architecture 'vgg'"):
        models.for_dataset("mnist", architecture="vgg")
