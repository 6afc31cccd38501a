"""PreActResNet-18 and the Wide ResNets: the references' parameter counts, logits, the PNIL in front, and (with
PyTorch installed) the same logits as Wong et al.'s PyTorch network given its weights."""

import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_pnil import PixelwiseNoiseInjection, models

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _trainable(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _images(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(n, 32, 32, 3)).astype("float32")


def test_preact_resnet18_has_wong_et_als_parameter_count_and_outputs_logits():
    model = models.for_dataset("cifar10", architecture="preact_resnet18")
    # As PyTorch's PreActResNet18().parameters() in Wong et al.'s and de Jorge et al.'s files, 10 classes (11,171,146,
    # a figure also quoted, is the same network without their final BatchNorm's 2 × 512)
    assert _trainable(model) == 11_172_170
    out = model(_images(), training=False).numpy()
    assert out.shape == (2, 10) and not np.allclose(out.sum(-1), 1.0)


@pytest.mark.parametrize(("depth", "count"), [(34, 46_160_474), (28, 36_479_194)])
def test_wide_resnet_has_the_trades_parameter_count(depth, count):
    model = models.wide_resnet(depth=depth, width=10)
    assert model.name == f"wrn_{depth}_10"
    assert _trainable(model) == count
    if depth == 28:  # one forward pass of two images is enough on a CPU
        assert model(_images(), training=False).shape == (2, 10)


def test_wide_resnet_is_registered_and_small_widths_work():
    model = models.for_dataset("cifar10", architecture="wide_resnet", depth=10, width=1, pnil=True)
    assert model(_images()).shape == (2, 10)
    assert [layer.output.shape[1:3] for layer in model.layers if layer.name.endswith("_add")] == [
        (32, 32), (16, 16), (8, 8)]


@pytest.mark.parametrize("depth", [16.5, 30, 4])
def test_wide_resnet_rejects_a_depth_not_6n_plus_4(depth):
    with pytest.raises(ValueError, match=rf"`depth` must be 6n \+ 4 .* Received: depth={depth}"):
        models.wide_resnet(depth=depth)


@pytest.mark.parametrize("build", [models.preact_resnet18, lambda **kw: models.wide_resnet(depth=10, width=1, **kw)])
def test_the_pnil_sits_in_front_and_makes_the_network_random_at_inference(build):
    model = build(pnil=True, seed=3)
    assert isinstance(model.layers[1], PixelwiseNoiseInjection) and model.name.endswith("_pnil")
    assert model.layers[1].kernel.shape == (32, 32, 3)
    x = _images()
    assert not np.allclose(model(x, training=False), model(x, training=False))


def test_preact_resnet18_gives_the_pytorch_networks_logits_with_its_weights():
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(BENCHMARKS))
    from torch_preact_resnet import PreActResNet18, copy_weights, trainable_parameters

    torch.manual_seed(0)
    reference = PreActResNet18()
    for module in reference.modules():  # BatchNorm statistics away from their 0/1 start, so the copy shows
        if isinstance(module, torch.nn.BatchNorm2d):
            for tensor, low, high in ((module.weight, 0.5, 1.5), (module.bias, -0.1, 0.1),
                                      (module.running_mean, -0.1, 0.1), (module.running_var, 0.5, 1.5)):
                tensor.data.uniform_(low, high)
    reference.logits.weight.data.mul_(100)  # logits of order 1 (about 0.05 at PyTorch's initialisation)
    reference.eval()
    model = copy_weights(reference, models.preact_resnet18())
    assert trainable_parameters(reference) == _trainable(model) == 11_172_170
    x = _images()
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    assert np.abs(expected).max() > 0.5
    np.testing.assert_allclose(model(x, training=False).numpy(), expected, atol=1e-4)
