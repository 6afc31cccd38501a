"""The training methods that add loss terms (GradAlign, ELLE, TRADES), the method registry, and a toy method
registered in one module's worth of code: its flag, configuration, cost and training follow from the registration."""

import importlib
import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp
from keras_pnil import cli, methods, recipe, reproduce, runs
from keras_pnil.methods import base, elle, gradalign, trades
from keras_pnil.training import get_perturbation


def _softplus(z):
    return np.log1p(np.exp(z))


# ---------------------------------------------------------------- the loss terms against hand computations
def test_gradalign_term_on_a_hand_computed_case(monkeypatch):
    # Logits (a·z0² - z1, 0), label 1: ∇z ℓ = σ(l)·(2a·z0, -1). At x = (0.5, 0.5) that is ∝ (a, -1); at
    # x + η = (0.3, 0.6) ∝ (0.6a, -1). With a = 1: 1 - cos = 1 - 1.6 / (√2·√1.36) = 0.029857.
    monkeypatch.setattr("keras_pnil.methods.base.uniform", lambda x, radius: tf.constant([[-0.2, 0.1]]))
    a = tf.Variable(1.0)
    model_fn = lambda z: tf.stack([a * z[:, 0] ** 2 - z[:, 1], tf.zeros_like(z[:, 0])], axis=1)  # noqa: E731
    x, y = tf.constant([[0.5, 0.5]]), tf.constant([1])
    method = get_perturbation("gradalign", 0.3, lam=2.0)
    with tf.GradientTape() as tape:
        batch = method.prepare(model_fn, x, y)
        term = method.penalty(model_fn, x, batch, y, None)["gradalign"]
    assert term.weight == 2.0 and float(term.value) == pytest.approx(1 - 1.6 / (np.sqrt(2) * np.sqrt(1.36)), abs=1e-6)
    np.testing.assert_allclose(batch.inputs, [[0.8, 0.2]], atol=1e-6)  # FGSM from x: its gradient is the first
    # d/da through ∇ℓ(x + η) only (the authors detach ∇ℓ(x)): the finite difference of 1 - cos((1, -1), (0.6a, -1)).
    misalignment = lambda a: 1 - (0.6 * a + 1) / (np.sqrt(2) * np.sqrt(0.36 * a**2 + 1))  # noqa: E731
    expected = (misalignment(1 + 1e-4) - misalignment(1 - 1e-4)) / 2e-4
    assert float(tape.gradient(term.value, a)) == pytest.approx(expected, rel=1e-3)


def test_gradalign_leaves_images_with_a_zero_gradient_out():
    g1 = tf.constant([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    g2 = tf.constant([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    # Only the first image counts: cos 45° = 0.7071; the zero rows would otherwise pull the mean to 0.2357.
    assert float(gradalign.gradient_misalignment(g1, g2)) == pytest.approx(1 - np.sqrt(0.5), abs=1e-6)
    assert float(gradalign.gradient_misalignment(g1 * 0, g2)) == 0.0


def test_elle_term_on_a_hand_computed_case():
    # Logits (w·z, 0), label 1: ℓ(z) = softplus(w·z); x_c = (1-α)x_a + αx_b per image.
    w = np.array([2.0, -1.0])
    x_a, x_b = np.array([[0.1, 0.2], [0.5, 0.9]]), np.array([[0.7, 0.3], [0.2, 0.4]])
    alpha = np.array([0.25, 0.6])
    x_c = (1 - alpha[:, None]) * x_a + alpha[:, None] * x_b
    loss = lambda z: _softplus(z @ w)  # noqa: E731
    expected = np.mean((loss(x_c) - (1 - alpha) * loss(x_a) - alpha * loss(x_b)) ** 2)
    model_fn = lambda z: tf.stack([tf.reduce_sum(z * w.astype("float32"), 1), tf.zeros_like(z[:, 0])], 1)  # noqa: E731
    got = elle.linearity_error(model_fn, tf.constant([1, 1]), *(tf.constant(v, tf.float32) for v in (x_a, x_b, alpha)))
    assert expected > 1e-4 and float(got) == pytest.approx(expected, rel=1e-4)


def test_trades_kl_on_a_hand_computed_case():
    # p = (0.25, 0.75), q = (0.5, 0.5): KL(p ‖ q) = 0.25 ln 0.5 + 0.75 ln 1.5 = 0.130812 (KL(q ‖ p) = 0.143841).
    got = trades.kl_divergence(tf.constant([[0.0, np.log(3.0)]]), tf.constant([[0.0, 0.0]]))
    np.testing.assert_allclose(got, [0.130812], atol=1e-6)


@pytest.mark.parametrize("start, corner", [([1.0, -1.0], [0.6, 0.4]), ([-1.0, 1.0], [0.4, 0.6])])
def test_trades_attack_climbs_the_kl_away_from_its_random_start(monkeypatch, start, corner):
    # Logits (z0 - z1, 0): the KL to f(x) grows whichever way z0 - z1 moves, so x′ follows the direction its
    # start x + 0.001·n leans to, to the corner of the ε = 0.1 ball (3 steps of 0.05), never back to x.
    monkeypatch.setattr("keras_pnil.methods.base.gaussian", lambda x, scale: scale * tf.constant([start]))
    model_fn = lambda z: tf.stack([z[:, 0] - z[:, 1], tf.zeros_like(z[:, 0])], axis=1)  # noqa: E731
    method = get_perturbation("trades", 0.1, steps=3, step_size=0.05)
    batch = method.prepare(model_fn, tf.constant([[0.5, 0.5]]), tf.constant([1]))
    np.testing.assert_allclose(batch.inputs, [[0.5, 0.5]])  # TRADES trains on the clean images
    np.testing.assert_allclose(batch.context, [corner], atol=1e-6)


# ---------------------------------------------------------------- the terms reach Keras' own step
def _dense():
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(3)])


def _ce(y, logits):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)


def _input_gradient(model, z, y):
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = tf.reduce_sum(_ce(y, model(z)))
    return tape.gradient(loss, z)


def _reference_loss(method, model, x, y, draws, options):
    """Each paper's objective, written out here apart from the library (the random draws recorded from it)."""
    eps = 0.1
    if method == "trades":
        adv = x + draws[0]
        target = tf.nn.softmax(model(x))
        for _ in range(options["steps"]):
            with tf.GradientTape() as tape:
                tape.watch(adv)
                kl = tf.reduce_sum(target * (tf.math.log(target) - tf.nn.log_softmax(model(adv))))
            adv = tf.clip_by_value(tf.clip_by_value(adv + (2 * eps / 3) * tf.sign(tape.gradient(kl, adv)),
                                                    x - eps, x + eps), 0.0, 1.0)
        p, log_q = tf.nn.softmax(model(x)), tf.nn.log_softmax(model(adv))
        kl = tf.reduce_mean(tf.reduce_sum(p * (tf.math.log(p) - log_q), 1))
        return tf.reduce_mean(_ce(y, model(x))) + options["beta"] * kl
    g1 = tf.stop_gradient(_input_gradient(model, x, y))  # FGSM's gradient: the authors detach it
    loss = tf.reduce_mean(_ce(y, model(tf.clip_by_value(x + eps * tf.sign(g1), 0.0, 1.0))))
    if method == "gradalign":
        g2 = _input_gradient(model, x + draws[0], y)
        cos = tf.reduce_sum(g1 * g2, 1) / (tf.norm(g1, axis=1) * tf.norm(g2, axis=1))
        return loss + options["lam"] * (1 - tf.reduce_mean(cos))
    x_a, x_b, alpha = x + draws[0], x + draws[1], 0.5 + draws[2]
    x_c = (1 - alpha[:, None]) * x_a + alpha[:, None] * x_b
    linear = (1 - alpha) * _ce(y, model(x_a)) + alpha * _ce(y, model(x_b))
    return loss + options["lam"] * tf.reduce_mean((_ce(y, model(x_c)) - linear) ** 2)


@pytest.mark.parametrize("method, options", [("gradalign", {"lam": 3.0}), ("elle", {"lam": 50.0}),
                                             ("trades", {"beta": 2.0, "steps": 3})])
def test_one_fit_step_follows_the_papers_objective(monkeypatch, method, options):
    # One SGD step of `fit` (eagerly, so the random draws can be recorded) must equal a step on the paper's
    # objective written out apart, with the same draws: the term, its weight and its double backpropagation.
    draws = []
    for name in ("uniform", "gaussian"):
        real = getattr(base, name)
        monkeypatch.setattr(base, name, lambda x, r, real=real: draws.append(real(x, r)) or draws[-1])
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0.2, 0.8, size=(8, 4)).astype("float32"), rng.integers(0, 3, 8).astype("int32")
    model = _dense()
    start = model.get_weights()
    trainer = kp.adversarial(model, method, 0.1, **options)
    trainer.compile(optimizer=keras.optimizers.SGD(0.5), run_eagerly=True,
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = trainer.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert set(trainer.perturbation.penalties) <= set(history.history)  # the term is logged under its name
    reference = _dense()
    reference.set_weights(start)
    with tf.GradientTape() as tape:
        loss = _reference_loss(method, reference, tf.constant(x), tf.constant(y), draws, options)
    expected = [w - 0.5 * g for w, g in zip(start, tape.gradient(loss, reference.trainable_weights), strict=True)]
    assert history.history["loss"][0] == pytest.approx(float(loss), rel=1e-4)
    for got, want in zip(model.get_weights(), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- from the Python API and the command
def _tiny(seed=0):
    keras.utils.set_random_seed(seed)
    return kp.models.small_cnn((28, 28, 1), seed=seed, filters=(4, 8), dense_units=32)


@pytest.mark.parametrize("method, options", [("gradalign", {}), ("elle", {"lam": 100.0}),
                                             ("trades", {"steps": 2})])
def test_each_new_method_trains_from_the_python_api(mnist, method, options):
    (x, y), (xt, yt) = mnist
    trainer = kp.adversarial(_tiny(), method, 0.3, **options)
    trainer.compile(optimizer=keras.optimizers.Adam(2e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = trainer.fit(x[:600], y[:600], batch_size=100, epochs=2, verbose=0, validation_data=(xt[:100], yt[:100]))
    term = trainer.perturbation.penalties[0]
    assert np.isfinite(history.history["loss"]).all() and history.history["loss"][-1] < history.history["loss"][0]
    assert np.isfinite(history.history[term]).all() and f"val_{term}" in history.history


@pytest.mark.parametrize("method, flags", [("gradalign", ["--gradalign-lambda", "0.5"]),
                                           ("elle", ["--elle-lambda", "100"]),
                                           ("trades", ["--trades-beta", "6", "--trades-steps", "2"])])
def test_each_new_method_trains_from_the_command(data_dir, tmp_path, method, flags):
    out = tmp_path / "run"
    assert cli.train_main(["--data-dir", str(data_dir), "--method", method, *flags, "--architecture", "wong_mnist",
                           "--epsilon", "0.3", "--train-size", "200", "--validation-size", "50", "--epochs", "1",
                           "--monitor-images", "10", "--monitor-eot", "1", "--out", str(out)]) == 0
    config = json.loads((out / runs.CONFIG).read_text())
    assert config["method"] == method and runs.is_finished(out)
    header = (out / runs.HISTORY).read_text().splitlines()[0].split(",")
    term = methods.get_method(method).build(0.3).penalties[0]
    assert {term, f"val_{term}"} <= set(header)


@pytest.mark.parametrize("flags, options", [
    (["--method", "gradalign", "--gradalign-lambda", "0.5"], {"lam": 0.5}),
    (["--method", "gradalign"], {"lam": 2.0}),
    (["--method", "elle", "--elle-lambda", "100"], {"lam": 100.0}),
    (["--method", "elle"], {"lam": 10000.0}),
    (["--method", "trades", "--trades-beta", "6", "--trades-steps", "10", "--trades-step-size", "0.03"],
     {"beta": 6.0, "steps": 10, "step_size": 0.03}),
    (["--method", "trades", "--epsilon", "0.3"], {"beta": 1.0, "steps": 40, "step_size": pytest.approx(0.015)}),
])
def test_new_method_flags_reach_the_built_method(monkeypatch, tmp_path, flags, options):
    seen = []
    monkeypatch.setattr(runs, "train_run", lambda config, out: seen.append(config) or "trained")
    assert cli.train_main([*flags, "--out", str(tmp_path / "run")]) == 0
    method = recipe.build_trainer(seen[0]).perturbation
    assert {name: getattr(method, name) for name in options} == options


@pytest.mark.parametrize("options, message", [
    ({"method": "gradalign", "gradalign_lambda": 0}, "gradalign_lambda must be a positive number; got 0"),
    ({"method": "elle", "elle_lambda": -1.0}, "elle_lambda must be a positive number; got -1.0"),
    ({"method": "trades", "trades_steps": 0}, "trades_steps must be an integer >= 1; got 0"),
    ({"method": "trades", "trades_step_size": "big"}, "trades_step_size must be a positive number; got 'big'"),
    ({"method": "rfgsm", "trades_beta": 0}, "trades_beta must be a positive number; got 0"),  # checked for all
])
def test_bad_method_options_are_rejected_up_front(options, message):
    with pytest.raises(ValueError, match=message):
        runs.training_config(options)


def test_bad_method_flags_and_keywords_name_the_problem(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        cli.train_main(["--method", "trades", "--trades-steps", "0", "--out", str(tmp_path / "run")])
    message = "argument --trades-steps: must be an integer >= 1; got 0"
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(ValueError, match="beta must be a positive number; got -1"):
        kp.adversarial(_tiny(), "trades", 0.3, beta=-1)
    with pytest.raises(ValueError, match="Bad option for method 'gradalign'"):
        kp.adversarial(_tiny(), "gradalign", 0.3, beta=1.0)


def test_the_cost_model_prices_each_method_and_refuses_an_unknown_one():
    units = {m: reproduce._training_units({"method": m, "epochs": 1, "validation_size": 0, "monitor_images": 0,
                                           **extra}, 1) for m, extra in
             [("clean", {}), ("rfgsm", {}), ("gradalign", {}), ("elle", {}), ("trades", {"trades_steps": 10}),
              ("pgd", {"pgd_steps": 10})]}
    assert units["clean"] == 3 and units["rfgsm"] == 6
    assert units["rfgsm"] < units["gradalign"] < units["pgd"] and units["rfgsm"] < units["elle"] < units["pgd"]
    assert units["trades"] > units["pgd"]  # one more forward pass (f(x′)) than PGD-10's step
    with pytest.raises(ValueError, match="Unknown training method 'madry'"):
        reproduce._training_units({"method": "madry"}, 100)


def test_pgd_training_and_the_pgd_attack_share_their_loop():
    attack = importlib.import_module("keras_pnil.attacks.pgd")
    assert importlib.import_module("keras_pnil.methods.pgd").signed_ascent is attack.signed_ascent
    assert trades.signed_ascent is attack.signed_ascent


# ---------------------------------------------------------------- a new method: one module, one registration
class Shift(methods.Method):
    """A toy method (one module's worth): trains on x moved by `amount`·ε, clipped to [0, 1]."""

    name = "toy_shift"

    def __init__(self, epsilon, amount=1.0):
        super().__init__(epsilon)
        self.amount = methods.positive("amount", amount)

    def __call__(self, model_fn, x, y):
        return tf.clip_by_value(x + self.amount * self.epsilon, 0.0, 1.0)


@pytest.fixture
def toy_method():
    spec = methods.register(methods.MethodSpec(
        "toy_shift", Shift, (methods.Option("toy_shift_amount", 1.0, methods.positive, "shift in units of ε",
                                            keyword="amount"),),
        cost=lambda o: methods.STEP_COST + 1, about="a toy"))
    yield spec
    del methods.METHODS["toy_shift"]


def test_a_registered_toy_method_gets_its_flag_configuration_cost_and_trains(toy_method, monkeypatch, tmp_path,
                                                                              mnist):
    assert "--toy-shift-amount" in cli.train_parser()._option_string_actions
    assert runs.TRAIN_DEFAULTS["toy_shift_amount"] == 1.0
    with pytest.raises(ValueError, match="toy_shift_amount must be a positive number; got 0"):
        runs.training_config({"method": "toy_shift", "toy_shift_amount": 0})
    assert reproduce._training_units({"method": "toy_shift", "epochs": 1, "validation_size": 0,
                                      "monitor_images": 0}, 10) == 40
    seen = []
    monkeypatch.setattr(runs, "train_run", lambda config, out: seen.append(config) or "trained")
    assert cli.train_main(["--method", "toy_shift", "--toy-shift-amount", "0.5", "--epsilon", "0.2",
                           "--out", str(tmp_path / "run")]) == 0
    assert seen[0]["method_options"] == {"amount": 0.5}
    trainer = recipe.build_trainer({**seen[0], "architecture": "wong_mnist"})
    assert isinstance(trainer.perturbation, Shift) and trainer.perturbation.amount == 0.5
    (x, y), _ = mnist
    recipe.compile_trainer(trainer, keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 1.0))
    history = trainer.fit(x[:200], y[:200], batch_size=100, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_the_registry_refuses_a_second_method_of_a_name_or_an_option_key_taken():
    with pytest.raises(ValueError, match="already registered"):
        methods.register(methods.MethodSpec("trades", Shift))
    with pytest.raises(ValueError, match="Option 'trades_beta' of method 'other' is already declared by method"):
        methods.register(methods.MethodSpec("other", Shift, (methods.Option("trades_beta", 1.0, methods.positive,
                                                                            "taken"),)))
    assert "other" not in methods.METHODS


# ---------------------------------------------------------------- norms: each method has an L2 version or refuses it
@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_each_method_builds_in_l2_or_refuses_it_with_its_reason(name):
    spec = methods.get_method(name)
    if "l2" in spec.norms:
        assert methods.build(name, 2.0, "l2").threat.describe() == "L2 ε=2 (inputs in [0, 1])"
        assert name in methods.methods_with_norm("l2")
        return
    reason = spec.build.linf_only
    assert reason != methods.Method.linf_only  # an L∞-only method of the package says why in its own words
    with pytest.raises(ValueError, match=re.escape(f"training method '{name}' has no l2 version: {reason};")):
        methods.build(name, 2.0, "l2")
    with pytest.raises(ValueError, match="has no l2 version"):  # constructed directly, too
        spec.build(0.3, norm="l2")


def test_a_toy_method_that_knows_no_norm_is_l_inf_only_and_refused_in_l2(toy_method):
    assert methods.build("toy_shift", 0.1).threat.norm.name == "linf"  # never handed a norm it does not take
    with pytest.raises(ValueError, match="'toy_shift' has no l2 version: it is defined for the L∞ ball only; train "
                                         "it with norm linf, or train fgsm, nfgsm, pgd, rfgsm, trades with norm l2"):
        methods.build("toy_shift", 2.0, "l2")
