import pytest

import keras_pnil as kp


def test_square_with_eot_beats_square_without_on_a_very_noisy_model(trained_pair, mnist, with_noise):
    _, (xt, yt) = mnist
    model = with_noise(trained_pair[True], -1.4)  # σ = 0.5 on every pixel
    x, y = xt[:100], yt[:100]
    acc = {e: kp.accuracy(model, kp.square(model, x, y, 0.2, queries=200, eot_samples=e), y, draws=16)
           for e in (1, 8)}
    print("Square accuracy by EOT samples", acc)
    # Without EOT, greedy acceptance keeps lucky draws and then stalls against them.
    assert acc[8] < acc[1] - 0.03


def test_square_rejects_bad_arguments(trained_pair, mnist):
    _, (xt, yt) = mnist
    with pytest.raises(ValueError, match="queries must be an integer"):
        kp.square(trained_pair[True], xt[:2], yt[:2], 0.1, queries=0)
    with pytest.raises(ValueError, match="NHWC"):
        kp.square(trained_pair[True], xt[:2, :, :, 0], yt[:2], 0.1)
