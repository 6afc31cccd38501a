"""The input boundary: every public function rejects bad images, labels and models with one clear line."""

import re

import keras
import numpy as np
import pytest

import keras_pnil as kp
from keras_pnil.attacks import common
from keras_pnil.attacks.eot import probe
from keras_pnil.inputs import check_attack_names, check_inputs

EPS = 0.1
X = np.random.default_rng(0).uniform(0.1, 0.9, size=(4, 8, 8, 1)).astype(np.float32)
Y = np.array([1, 2, 3, 4])


def _tiny(name: str = "tiny") -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)], name=name)


def _two_outputs() -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    flat = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, [keras.layers.Dense(10, name="logits")(flat), keras.layers.Dense(1, name="aux")(flat)],
                       name="two")


class Subclassed(keras.Model):
    """No static input shape: the boundary must call it (once, on one image) to learn what it takes."""

    def __init__(self, outputs: str = "logits"):
        super().__init__(name="sub")
        self.flatten, self.dense = keras.layers.Flatten(), keras.layers.Dense(10)
        self.outputs_kind, self.calls = outputs, []

    def call(self, x):
        self.calls.append(x.shape[0])
        logits = self.dense(self.flatten(x))
        return {"a": logits, "b": logits} if self.outputs_kind == "dict" else logits


def _fit(model, x, y):
    trainer = kp.adversarial(model, "fgsm", EPS)
    trainer.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return trainer.fit(x, y, batch_size=2, epochs=1, verbose=0)


# Each public function with a tiny budget, as (model, x, y) -> result.
FUNCTIONS = {
    "pgd": lambda m, x, y: kp.pgd(m, x, y, EPS, steps=2),
    "apgd": lambda m, x, y: kp.apgd(m, x, y, EPS, steps=2),
    "apgd_targeted": lambda m, x, y: kp.apgd_targeted(m, x, y, EPS, steps=2, targets=2),
    "spsa": lambda m, x, y: kp.spsa(m, x, y, EPS, steps=2, perturbations=4),
    "square": lambda m, x, y: kp.square(m, x, y, EPS, queries=10),
    "fab_targeted": lambda m, x, y: kp.fab_targeted(m, x, y, EPS, steps=2, targets=2),
    "autoattack": lambda m, x, y: kp.autoattack(m, x, y, EPS, steps=2, queries=10, targets=2, fab_steps=2),
    "run_autoattack": lambda m, x, y: kp.run_autoattack(m, x, y, EPS, steps=2, queries=10, targets=2,
                                                        fab_steps=2)[0],
    "probe": lambda m, x, y: probe(m, x),
    "fit": lambda m, x, y: _fit(m, x, y),
}
ATTACKS = [name for name in FUNCTIONS if name not in ("probe", "fit")]
WHAT = {"probe": "images to probe with", "fit": "training images"}


def _with(x=None, y=None, index=None, value=None):
    """A change of X (or Y): one value set at `index`."""
    def change(x0, y0):
        x1, y1 = (X.copy() if x is None else x), (Y.copy() if y is None else y)
        if index is not None:
            (x1 if len(index) == 4 else y1)[index] = value
        return x1, y1
    return change


# (case, change of (X, Y), message (with {what} for the images' name), about the labels, model)
CASES = [
    ("nan", _with(index=(1, 0, 0, 0), value=np.nan),
     r"^{what} must be finite; found 1 NaN and 0 infinite values \(first in image 1\)\. "
     r"Replace or drop those images\.$",
     False, _tiny),
    ("inf", lambda x, y: (np.where(np.arange(4)[:, None, None, None] >= 2, np.inf, X).astype(np.float32), Y),
     r"^{what} must be finite; found 0 NaN and 128 infinite values \(first in image 2\)\.", False, _tiny),
    ("empty", lambda x, y: (X[:0], Y[:0]),
     r"^{what} must not be empty; got an array shaped \(0, 8, 8, 1\)\. Pass at least one image\.$", False, _tiny),
    ("above one", lambda x, y: (X * 255, Y),
     r"^{what} must lie in \[0, 1\]; found values in \[[0-9.]+, [0-9.]+\]\. "
     r"Scale images to \[0, 1\] \(e\.g\. divide uint8 pixels by 255\), or give the model's input range as "
     r"bounds=\(lo, hi\)\.$", False, _tiny),
    ("wrong shape", lambda x, y: (np.full((4, 28, 28, 1), 0.5, np.float32), Y),
     r"^model 'tiny' cannot take images shaped \(28, 28, 1\): it takes images shaped \(8, 8, 1\)\. "
     r"Reshape the images, or pass a model built for them\.$", False, _tiny),
    ("multi-output", lambda x, y: (X, Y),
     r"^model 'two' has 2 outputs \(logits, aux\); pass a model with one output of logits, "
     r"e\.g\. keras\.Model\(model\.inputs, model\.outputs\[0\]\)\.$", False, _two_outputs),
    ("one-hot", lambda x, y: (X, np.eye(10)[Y]),
     r"^labels look one-hot \(shape \(4, 10\)\); pass integer class indices: y\.argmax\(-1\)\.$", True, _tiny),
    ("non-integral", lambda x, y: (X, Y + 0.5),
     r"^labels must be integer class indices; got 1\.5 \(label 0\)\.$", True, _tiny),
    ("label >= classes", _with(index=(2,), value=10),
     r"^labels must lie in \[0, 10\) for model 'tiny', which has 10 classes; got 10 \(label 2\)\.$", True, _tiny),
    ("negative label", _with(index=(0,), value=-1),
     r"^labels must lie in \[0, 10\) for model 'tiny', which has 10 classes; got -1 \(label 0\)\.$", True, _tiny),
    ("length mismatch", lambda x, y: (X, Y[:3]), r"^x and y differ in length: 4 images, 3 labels\.$", True, _tiny),
]


def _raises(call, pattern: str) -> str:
    """Runs `call`, which must raise one ValueError line matching `pattern`; returns the message."""
    with pytest.raises(ValueError, match=pattern) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message and "\x1b" not in message, message
    return message


# Every function with every bad input, except the label cases for `probe`, which takes no labels.
PAIRS = [(f, c) for c in CASES for f in FUNCTIONS if not (c[3] and f == "probe")]


@pytest.mark.parametrize(("function", "case"), PAIRS, ids=[f"{c[0]}-{f}" for f, c in PAIRS])
def test_each_public_function_rejects_each_bad_input_with_one_clear_line(function, case):
    _, change, pattern, _, make_model = case
    x, y = change(X, Y)
    pattern = pattern.format(what=re.escape(WHAT.get(function, "images to attack")))
    _raises(lambda: FUNCTIONS[function](make_model(), x, y), pattern)


@pytest.mark.parametrize("function", list(FUNCTIONS))
def test_valid_inputs_still_work_and_float_labels_are_class_indices(function):
    model = _tiny()
    result = FUNCTIONS[function](model, X.astype(np.float64), Y.astype(np.float64))  # 3.0 is class 3
    if function in ATTACKS:
        assert result.shape == X.shape and result.dtype == np.float32
        assert np.abs(result - X).max() <= EPS + 1e-6 and result.min() >= 0 and result.max() <= 1
    elif function == "probe":
        assert not result.random and not result.probabilities
    else:
        assert np.isfinite(result.history["loss"][0])


@pytest.mark.parametrize("function", ["pgd", "autoattack"])
def test_an_attack_checks_its_inputs_once_not_per_restart_or_stage(function, monkeypatch):
    seen = []

    def counting(model, x, y=None, **kwargs):
        seen.append(len(x))
        return check_inputs(model, x, y, **kwargs)

    monkeypatch.setattr(common, "check_inputs", counting)
    if function == "pgd":
        kp.pgd(_tiny(), X, Y, EPS, steps=2, restarts=3)
    else:
        kp.autoattack(_tiny(), X, Y, EPS, steps=2, queries=10, targets=2, fab_steps=2, version="standard")
    assert seen == [len(X)]


def test_fit_checks_validation_data_too():
    bad = X.copy()
    bad[3, 0, 0, 0] = np.nan
    trainer = kp.adversarial(_tiny(), "fgsm", EPS)
    trainer.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    _raises(lambda: trainer.fit(X, Y, validation_data=(bad, Y), epochs=1, verbose=0),
            r"^validation images must be finite; found 1 NaN and 0 infinite values \(first in image 3\)")


def test_a_subclassed_model_gets_the_clean_shape_error_from_one_call_on_one_image():
    model = Subclassed()
    model(X[:1])  # built for 8×8 images (unbuilt, it would build itself for whatever it is first given)
    model.calls.clear()
    wrong = np.full((3, 28, 28, 1), 0.5, np.float32)
    pattern = (r"^model 'sub' cannot take images shaped \(28, 28, 1\): "
               r"Input 0 .*of layer 'dense.*' is incompatible with the layer")
    message = _raises(lambda: check_inputs(model, wrong, [1, 2, 3]), pattern)
    assert "Exception encountered" not in message
    _raises(lambda: kp.pgd(model, wrong, [1, 2, 3], EPS, steps=2), pattern)
    _raises(lambda: probe(model, wrong), pattern)
    assert model.calls == [1, 1, 1]  # one image per check, no attack work
    model.calls.clear()
    x, y = check_inputs(model, X, [1.0, 2, 3, 9])
    assert model.calls == [1] and y.dtype == np.int64 and y.tolist() == [1, 2, 3, 9] and x.dtype == np.float32
    _raises(lambda: check_inputs(model, X, [1, 2, 3, 10]),
            r"^labels must lie in \[0, 10\) for model 'sub', which has 10 classes; got 10 \(label 3\)\.$")
    assert kp.pgd(model, X, Y, EPS, steps=2).shape == X.shape


def test_a_subclassed_model_with_several_outputs_is_named_as_such():
    _raises(lambda: check_inputs(Subclassed("dict"), X, Y),
            r"^model 'sub' has 2 outputs \(a, b\); pass a model with one output of logits")


def test_check_inputs_returns_float32_images_and_int64_labels_and_rejects_the_rest():
    model = _tiny()
    x, y = check_inputs(model, (X * 255).astype(np.uint8) / 255, [3.0, 0, 9, 1])
    assert x.dtype == np.float32 and y.dtype == np.int64 and y.tolist() == [3, 0, 9, 1]
    x, none = check_inputs(model, X.tolist())
    assert none is None and np.array_equal(x, X)
    _raises(lambda: check_inputs(model, X, Y > 2), r"^labels must be integer class indices; got booleans")
    _raises(lambda: check_inputs(model, X, ["a", "b", "c", "d"]),
            r"^labels must be integer class indices; got dtype <U1")
    _raises(lambda: check_inputs(model, X, Y[:, None]),
            r"^labels must be a vector of class indices shaped \(4,\); got shape \(4, 1\)\. "
            r"Flatten them with y\.reshape\(-1\)\.$")
    _raises(lambda: check_inputs(model, X, np.full((4, 10), 0.1)),
            r"^labels must be a vector of class indices shaped \(4,\); got shape \(4, 10\)\.$")
    _raises(lambda: check_inputs(model, X, [np.nan, 1, 2, 3]), r"^labels must be integer class indices; got nan")
    _raises(lambda: check_inputs(model, X[0, :, :, 0].ravel()),
            r"^images must be a batch \(rank >= 2\); got shape \(64,\)")
    _raises(lambda: check_inputs(model, np.full((2, 64), 0.5), what="my images"),
            r"^model 'tiny' cannot take images shaped \(64,\): it takes images shaped \(8, 8, 1\)")
    _raises(lambda: check_inputs(model, np.array([["a", "b"]])), r"^images must be an array of numbers; got dtype <U1")


def test_attack_names_are_one_name_a_comma_separated_string_or_a_list():
    assert check_attack_names("pgd") == ("pgd",)
    assert check_attack_names("pgd,spsa") == ("pgd", "spsa")
    assert check_attack_names(" pgd , apgd-ce ") == ("pgd", "apgd-ce")
    assert check_attack_names(["square", "pgd", "square"]) == ("square", "pgd")
    assert check_attack_names(name for name in ("fab-t",)) == ("fab-t",)
    _raises(lambda: check_attack_names("p"), r"^Unknown attack 'p'; expected one of \['apgd-ce', .*'pgd'")
    _raises(lambda: check_attack_names("pgd,cw"), r"^Unknown attack 'cw'; expected one of \[")
    _raises(lambda: check_attack_names(["pgd", "PGD"]), r"^Unknown attack 'PGD'")
    for empty in ("", " , ", [], ()):
        _raises(lambda e=empty: check_attack_names(e), r"^attacks must name at least one attack; got .*\. "
                                                       r"Expected names from \['apgd-ce'")
    _raises(lambda: check_attack_names(3), r"^attacks must be an attack name, names separated by commas or a list")
    _raises(lambda: check_attack_names(["pgd", 3]), r"^attacks must be names \(strings\); got 3")
