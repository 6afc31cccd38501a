"""What the library accepts as images, labels and attack names.

The public functions (the attacks, `probe`, `AdversarialModel.fit`, the
evaluation) check their inputs here, before any work, so that a NaN pixel,
an empty array, one-hot labels or an image shape the model does not take
fail as one `ValueError` line that names the problem and its fix, as the
commands' own checks do.

`check_inputs` is written in `keras_pnil.validation`, below the attacks, so
that every attack can call it while this module reads the attack registry.
"""

from __future__ import annotations

from collections.abc import Iterable

from keras_pnil.attacks.registry import ATTACKS, get_attack
from keras_pnil.validation import check_inputs

__all__ = ["check_attack_names", "check_inputs"]


def check_attack_names(attacks: str | Iterable[str]) -> tuple[str, ...]:
    """Registered attack names, from one name, a comma-separated string of names or an iterable of names.

    Blanks around names are dropped and a name given twice is kept once, in
    its first place.

    Args:
        attacks: "pgd", "pgd,spsa" or ["pgd", "spsa"].

    Returns:
        The names as a tuple, in the order given.

    Raises:
        ValueError: No name, a name that is not a string, or an unknown
            name (`Unknown attack 'x'; expected one of [...]`).

    Example:
        >>> check_attack_names("pgd, spsa")
        ('pgd', 'spsa')
        >>> check_attack_names(["apgd-ce"])
        ('apgd-ce',)
    """
    if isinstance(attacks, str):
        names = attacks.split(",")
    elif isinstance(attacks, Iterable):
        names = list(attacks)
    else:
        raise ValueError(f"attacks must be an attack name, names separated by commas or a list of names; "
                         f"got {attacks!r}.")
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"attacks must be names (strings); got {name!r} in {attacks!r}.")
    chosen = tuple(dict.fromkeys(name.strip() for name in names if name.strip()))
    if not chosen:
        raise ValueError(f"attacks must name at least one attack; got {attacks!r}. "
                         f"Expected names from {sorted(ATTACKS)}.")
    for name in chosen:
        get_attack(name)
    return chosen
