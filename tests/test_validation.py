import numpy as np
import pytest

from keras_pnil import validation


def test_each_check_quotes_the_bad_value():
    with pytest.raises(ValueError, match="steps must be an integer >= 1; got 0"):
        validation.check_count("steps", 0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1; got True"):
        validation.check_count("steps", True)
    with pytest.raises(ValueError, match="alpha must be a positive number; got -0.1"):
        validation.check_positive("alpha", -0.1)
    with pytest.raises(ValueError, match=r"epsilon must be a number in \(0, 1\).*got 1.5"):
        validation.check_epsilon(1.5)
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]; found values in \[0, 255\]"):
        validation.check_images(np.array([[0.0, 255.0]]), "images")
    with pytest.raises(ValueError, match="differ in length: 2 images, 3 labels"):
        validation.check_same_length([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match=r"Unknown colour 'red'; expected one of \['blue', 'green'\]"):
        validation.check_choice("colour", "red", ("green", "blue"))
    assert validation.check_count("seed", np.int64(0), minimum=0) == 0


def test_epsilon_fractions_are_parsed():
    assert validation.parse_epsilon("8/255") == pytest.approx(8 / 255)
    assert validation.parse_epsilon(0.03) == 0.03
    for bad in ("eight", "1/0", "2"):
        with pytest.raises(ValueError, match="epsilon"):
            validation.parse_epsilon(bad)
