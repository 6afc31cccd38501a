"""Argument checks shared by the layers, attacks, training and commands.

Each raises a `ValueError` that names the argument, quotes the bad value and
says what is allowed, so a command can print it as one line.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def check_count(name: str, value, minimum: int = 1) -> int:
    """An integer >= `minimum` (booleans are not counts)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def check_positive(name: str, value) -> float:
    """A number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not value > 0:
        raise ValueError(f"{name} must be a positive number; got {value!r}.")
    return float(value)


def check_epsilon(value, name: str = "epsilon") -> float:
    """An L∞ radius for pixels in [0, 1]: a number in (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1) for pixels in [0, 1]; got {value!r}.")
    return float(value)


def parse_epsilon(text) -> float:
    """'8/255', '0.03' (or a number) → a float in (0, 1)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return check_epsilon(text)
    try:
        value = float(Fraction(str(text)))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"epsilon must be a number or a fraction like 8/255; got {text!r}.") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"epsilon must lie in (0, 1) for pixels in [0, 1]; got {text!r}.")
    return value


def check_images(x, what: str = "inputs") -> None:
    """A batch (rank >= 2) with every value in [0, 1]."""
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"{what} must be a batch (rank >= 2); got shape {x.shape}.")
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
        raise ValueError(
            f"{what} must lie in [0, 1]; found values in [{x.min():.4g}, {x.max():.4g}]. "
            "Scale images to [0, 1] (e.g. divide uint8 pixels by 255)."
        )


def check_same_length(x, y) -> None:
    """As many labels as images."""
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} images, {len(y)} labels.")


def check_choice(name: str, value, choices) -> None:
    """One of `choices`, named in the message."""
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {sorted(choices)}.")
