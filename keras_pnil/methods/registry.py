"""One entry per training method: its class, the options it declares, and what a training step costs.

An entry declares its options as `Option`s: the run configuration's key (which
is also the train command's flag, `--key-with-dashes`), its default, check and
help, and the method's keyword it sets. The run configuration
(`keras_pnil.runs`), the train command's flags (`keras_pnil.cli`), validation
and the cost model (`keras_pnil.reproduce`) all derive from this table: a new
method is one module and one `register` call.

Example:
    >>> from keras_pnil.methods import get_method
    >>> spec = get_method("gradalign")
    >>> spec.defaults()
    {'gradalign_lambda': 2.0}
    >>> spec.method_keywords(spec.defaults(), epsilon=0.3)
    {'lam': 2.0}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from keras_pnil.methods.base import Method, refusal
from keras_pnil.threat import get_norm
from keras_pnil.validation import check_choice, check_count, check_positive

# A backward pass costs about two forward passes; costs count forward-pass equivalents per training image.
GRADIENT_COST = 3
STEP_COST = GRADIENT_COST  # Keras' own train step: a forward and a backward pass


def count(name: str, value) -> int:
    """An integer >= 1."""
    return check_count(name, value)


def positive(name: str, value) -> float:
    """A number > 0."""
    return check_positive(name, value)


def optional_positive(name: str, value) -> float | None:
    """None, or a number > 0."""
    return None if value is None else check_positive(name, value)


def switch(name: str, value) -> bool:
    """True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false; got {value!r}.")
    return value


def parse_count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer >= 1; got {text!r}") from None


def parse_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a positive number; got {text!r}") from None


_PARSERS = {count: parse_count, positive: parse_number, optional_positive: parse_number}


@dataclass(frozen=True)
class Option:
    """One option of a training method.

    Attributes:
        key: The run configuration's key, and the train command's flag (`--` + key with dashes).
        default: Its value when neither a configuration file nor a flag sets it (the method's paper's).
        check: (name, value) → the value, or a ValueError naming the problem (`count`, `positive`,
            `optional_positive`, `switch` or your own).
        help: The flag's help: what it sets, and the default's source.
        keyword: The method's constructor keyword it sets (default: `key`); None when the spec's
            `keywords` reads it instead (e.g. RFGSM's `alpha_ratio`, a multiple of ε).
    """

    key: str
    default: Any
    check: Callable[[str, Any], Any]
    help: str
    keyword: str | None = ""

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def is_switch(self) -> bool:
        return self.check is switch

    def parse(self, text: str):
        """The flag's text as a checked value (ValueError: the problem, without the flag's name)."""
        value = _PARSERS.get(self.check, parse_number)(text)
        return self.check(self.key, value)


@dataclass(frozen=True)
class MethodSpec:
    """How the train command builds and prices one training method.

    Attributes:
        name: The name used in `--method`, run configurations, suites and tables.
        build: (ε, **keywords) → the `Method`.
        options: The method's `Option`s.
        cost: The option values → forward-pass equivalents per training image of one step, Keras' own
            forward and backward pass included (clean training: 3).
        keywords: (option values, ε) → `build`'s keywords; default: each option's keyword → its value.
        about: One line for the command's help: the method and the paper (and file) it follows.
    """

    name: str
    build: Callable[..., Method]
    options: tuple[Option, ...] = ()
    cost: Callable[[Mapping], float] = lambda values: STEP_COST + GRADIENT_COST
    keywords: Callable[[Mapping, float], dict] | None = None
    about: str = ""

    def defaults(self) -> dict:
        """Option key → default."""
        return {o.key: o.default for o in self.options}

    def method_keywords(self, config: Mapping, epsilon: float) -> dict:
        """`build`'s keywords from a run configuration holding (at least) this method's option keys."""
        values = {o.key: config[o.key] for o in self.options}
        if self.keywords is not None:
            return self.keywords(values, epsilon)
        return {o.keyword or o.key: values[o.key] for o in self.options if o.keyword is not None}

    @property
    def norms(self) -> tuple[str, ...]:
        """The norms the method has a version in (its class's `norms`; L∞ only for a plain builder)."""
        return getattr(self.build, "norms", ("linf",))

    def training_cost(self, config: Mapping) -> float:
        """`cost` of the options in `config` (defaults for those it lacks)."""
        return self.cost({**self.defaults(), **{k: v for k, v in config.items() if k in self.defaults()}})


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Adds a training method to the registry (a name, and an option key, can be registered once)."""
    if spec.name in METHODS:
        raise ValueError(f"A training method named {spec.name!r} is already registered.")
    taken = {o.key: m.name for m in METHODS.values() for o in m.options}
    for option in spec.options:
        if option.key in taken:
            raise ValueError(f"Option {option.key!r} of method {spec.name!r} is already declared by method "
                             f"{taken[option.key]!r}; give it a name of its own (e.g. {spec.name}_...).")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The registered training method named `name`."""
    check_choice("training method", name, METHODS)
    return METHODS[name]


def all_options() -> list[Option]:
    """Every registered method's options, in registration order."""
    return [o for spec in METHODS.values() for o in spec.options]


def methods_with_norm(norm: str) -> list[str]:
    """The registered methods that have a version in `norm`.

    Example:
        >>> methods_with_norm("l2")
        ['clean', 'fgsm', 'nfgsm', 'pgd', 'rfgsm', 'trades']
    """
    return sorted(name for name, spec in METHODS.items() if norm in spec.norms)


def check_norm(name: str, norm: str) -> str:
    """`norm`'s name, after checking that it is a norm and that the method `name` has a version in it."""
    spec, norm = get_method(name), get_norm(norm).name
    if norm not in spec.norms:
        reason = getattr(spec.build, "linf_only", Method.linf_only)
        others = [m for m in methods_with_norm(norm) if m != "clean"]  # the adversarial ones
        raise ValueError(refusal(name, norm, spec.norms, reason, others))
    return norm


def build(name: str, epsilon: float, norm: str = "linf", **keywords) -> Method:
    """The method `name` in the `norm` ball of radius ε with its constructor `keywords`, checked by the method
    itself (a norm it has no version in is refused first, naming those that have one)."""
    spec = get_method(name)
    norm = check_norm(name, norm)
    try:
        # Only a method with a version in another norm takes `norm` (an L∞-only method need not know of it).
        return spec.build(epsilon, **keywords, **({} if norm == "linf" else {"norm": norm}))
    except TypeError as err:
        raise ValueError(f"Bad option for method {name!r}: {err}") from None
