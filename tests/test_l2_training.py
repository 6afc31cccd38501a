"""L2 training (issue 26): FGSM-RS, N-FGSM, PGD (and FGSM, TRADES) in the L2 ball against hand computations,
the refusals of the L∞-only methods, ε checked per norm, and an L2 run trained and evaluated in L2 by the commands."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp
from keras_pnil import cli, runs
from keras_pnil.methods import base, uniform_ball
from keras_pnil.threat import get_norm
from keras_pnil.training import get_perturbation


def _linear_fn(weights):
    """model_fn with logits (z·w, 0): for label 1 the loss log(1 + e^(z·w)) has the gradient σ(z·w)·w, whose L2
    direction is w/‖w‖₂ wherever the model is evaluated."""
    w = tf.constant([weights], tf.float32)
    return lambda z: tf.stack([tf.reduce_sum(z * w, axis=1), tf.zeros_like(z[:, 0])], axis=1)


def _fixed_start(monkeypatch, *rows):
    """Replaces the methods' random draw from the ball by `rows`, scaled by the radius asked for (rows of norm 1)."""
    monkeypatch.setattr(base, "uniform_ball", lambda x, radius, norm: radius * tf.constant(rows, tf.float32))


def _norms(delta):
    return np.linalg.norm(np.reshape(delta, (len(delta), -1)), axis=1)


# ---------------------------------------------------------------- each method against a hand computation
def test_l2_fgsm_rs_steps_along_the_normalised_gradient_then_projects_onto_ball_and_box(monkeypatch):
    # ε = 0.5, α = 0.6, w = (3, 4): ∇/‖∇‖ = (0.6, 0.8) at any point. Start u = 0.5·(0, -1) = (0, -0.5).
    # x = (0.5, 0.9): u + α·(0.6, 0.8) = (0.36, -0.02), norm 0.3606 <= ε: x + δ = (0.86, 0.88), inside the box.
    _fixed_start(monkeypatch, [0.0, -1.0])
    rfgsm = get_perturbation("rfgsm", 0.5, "l2", alpha=0.6)
    adv = rfgsm(_linear_fn([3.0, 4.0]), tf.constant([[0.5, 0.9]]), tf.constant([1])).numpy()
    np.testing.assert_allclose(adv, [[0.86, 0.88]], atol=1e-6)
    # Start u = 0.5·(0.6, 0.8) = (0.3, 0.4): u + α·(0.6, 0.8) = (0.66, 0.88), norm 1.1, rescaled onto the ball:
    # 0.5·(0.6, 0.8) = (0.3, 0.4); from x = (0.2, 0.2) that is (0.5, 0.6), inside the box: the step's direction.
    _fixed_start(monkeypatch, [0.6, 0.8])
    adv = rfgsm(_linear_fn([3.0, 4.0]), tf.constant([[0.2, 0.2]]), tf.constant([1])).numpy()
    np.testing.assert_allclose(adv, [[0.5, 0.6]], atol=1e-5)
    # From x = (0.2, 0.8) the box cuts the second pixel at 1: the projection onto ball ∩ box is clip(s·δ) with the
    # largest s whose clipped norm is <= ε: (0.2 + s·0.66, 1) with (s·0.66)² + 0.2² = 0.25: s·0.66 = √0.21.
    adv = rfgsm(_linear_fn([3.0, 4.0]), tf.constant([[0.2, 0.8]]), tf.constant([1])).numpy()
    np.testing.assert_allclose(adv, [[0.2 + np.sqrt(0.21), 1.0]], atol=1e-4)
    assert _norms(adv - [[0.2, 0.8]])[0] == pytest.approx(0.5, abs=1e-4)  # on the ball, not inside it (not clip only)


def test_l2_fgsm_rs_takes_its_gradient_at_the_unclipped_start(monkeypatch):
    # Wong et al. take the gradient at x + u as it is: with u = 0.5·(-1, 0) from x = (0.2, 0.5) the model sees
    # (-0.3, 0.5), outside [0, 1] (clipping the start first would show it (0, 0.5)).
    _fixed_start(monkeypatch, [-1.0, 0.0])
    seen = []

    def model_fn(z):
        seen.append(z)
        return _linear_fn([1.0, 0.0])(z)

    get_perturbation("rfgsm", 0.5, "l2")(model_fn, tf.constant([[0.2, 0.5]]), tf.constant([1]))
    np.testing.assert_allclose(seen[0].numpy(), [[-0.3, 0.5]], atol=1e-6)


def test_l2_nfgsm_is_noise_in_the_k_eps_ball_plus_a_normalised_step_without_projection(monkeypatch):
    # ε = 0.2, k = 2: noise 0.4·(0, 1); x = (0.5, 0.3) → x_n = (0.5, 0.7); step 0.2·(0.6, -0.8) = (0.12, -0.16):
    # (0.62, 0.54), at distance ‖(0.12, 0.24)‖ = 0.268 > ε: not projected back.
    _fixed_start(monkeypatch, [0.0, 1.0])
    nfgsm = get_perturbation("nfgsm", 0.2, "l2", noise_multiplier=2.0)
    adv = nfgsm(_linear_fn([3.0, -4.0]), tf.constant([[0.5, 0.3]]), tf.constant([1])).numpy()
    np.testing.assert_allclose(adv, [[0.62, 0.54]], atol=1e-6)
    # The gradient is taken at the clipped noisy point: x = (0.9, 0.8), noise 0.4·(0.6, 0.8) → (1.14, 1.12) is
    # clipped to (1, 1); a model with a kink at z0 = 1.05 shows where the gradient was taken: w = (3, -4) below it.
    _fixed_start(monkeypatch, [0.6, 0.8])
    kink = lambda z: tf.where(z[:, :1] < 1.05, _linear_fn([3.0, -4.0])(z), _linear_fn([-3.0, -4.0])(z))  # noqa: E731
    adv = nfgsm(kink, tf.constant([[0.9, 0.8]]), tf.constant([1])).numpy()
    np.testing.assert_allclose(adv, [[1.0, 0.84]], atol=1e-6)


def test_l2_pgd_training_ends_on_the_l2_ball_in_the_gradient_direction(monkeypatch):
    # No random start; w = (3, 4): 4 steps of 0.2 along (0.6, 0.8) from x = (0.2, 0.2) would go 0.8 far; the
    # ε = 0.5 L2 ball stops it at x + 0.5·(0.6, 0.8) = (0.5, 0.6) (an L∞ step would reach the corner (0.7, 0.7)).
    monkeypatch.setattr(base, "uniform_ball", lambda x, radius, norm: tf.zeros_like(x))
    pgd = get_perturbation("pgd", 0.5, "l2", steps=4, step_size=0.2)
    adv = pgd(_linear_fn([3.0, 4.0]), tf.constant([[0.2, 0.2]]), tf.constant([1])).numpy()
    np.testing.assert_allclose(adv, [[0.5, 0.6]], atol=1e-5)


def test_l2_fgsm_and_trades_step_in_the_l2_ball():
    # FGSM in L2 (the fast gradient method): x + ε·(0.6, 0.8) = (0.5, 0.6) from (0.2, 0.2) at ε = 0.5.
    adv = get_perturbation("fgsm", 0.5, "l2")(_linear_fn([3.0, 4.0]), tf.constant([[0.2, 0.2]]), tf.constant([1]))
    np.testing.assert_allclose(adv.numpy(), [[0.5, 0.6]], atol=1e-6)
    # TRADES's KL attack in L2 stays in the ε L2 ball and the box, and moves away from x.
    model_fn = lambda z: tf.stack([5 * (z[:, 0] - z[:, 1]), tf.zeros_like(z[:, 0])], axis=1)  # noqa: E731
    x = tf.constant([[0.5, 0.5], [0.1, 0.9]])
    adv = get_perturbation("trades", 0.3, "l2", steps=5).prepare(model_fn, x, tf.constant([1, 1])).context.numpy()
    assert (_norms(adv - x.numpy()) <= 0.3 + 1e-5).all() and _norms(adv - x.numpy()).min() > 0.25
    assert adv.min() >= 0 and adv.max() <= 1


def test_uniform_ball_draws_fill_the_l2_ball_as_a_uniform_draw_does():
    # Uniform in the d-ball: P(‖u‖ <= r·t) = t^d; for d = 2, the mean of ‖u‖ / r is 2/3 and ‖u‖ never exceeds r.
    tf.random.set_seed(0)
    u = uniform_ball(tf.zeros([20000, 2]), 0.5, get_norm("l2")).numpy()
    lengths = _norms(u) / 0.5
    assert lengths.max() <= 1 + 1e-6 and lengths.mean() == pytest.approx(2 / 3, abs=0.01)
    angles = np.arctan2(u[:, 1], u[:, 0])
    assert np.histogram(angles, bins=8)[0].min() > 0.9 * len(u) / 8  # every direction alike
    # On MNIST-sized images the draw lies next to the sphere (within 1 %): the attacks' start.
    big = _norms(uniform_ball(tf.zeros([64, 28, 28, 1]), 2.0, get_norm("l2")).numpy())
    assert big.max() <= 2.0 + 1e-5 and big.min() > 0.98 * 2.0


@pytest.mark.parametrize("method, options", [("rfgsm", {}), ("nfgsm", {"noise_multiplier": 2.0}), ("pgd", {}),
                                             ("fgsm", {})])
def test_l2_methods_respect_their_bound_and_the_box_on_mnist(mnist, method, options):
    (x, y), _ = mnist
    keras.utils.set_random_seed(0)
    model = kp.models.small_cnn((28, 28, 1), seed=0, filters=(4, 8), dense_units=32)
    eps = 1.5
    adv = get_perturbation(method, eps, "l2", **options)(model, tf.constant(x[:32]), tf.constant(y[:32])).numpy()
    norms = _norms(adv - x[:32])
    bound = eps * (1 + options.get("noise_multiplier", 1.0)) if method == "nfgsm" else eps
    assert adv.min() >= 0 and adv.max() <= 1
    assert norms.max() <= bound * (1 + 1e-5) and norms.mean() > 0.5 * eps  # within its ball, and it moved
    assert np.abs(adv - x[:32]).max() > 0.3  # an L2 step concentrates: far beyond an L∞ step of ε/√d = 0.054


# ---------------------------------------------------------------- bad input: one line, before any work
@pytest.mark.parametrize("method, epsilon, norm, message", [
    ("pgd", 0.0, "l2", r"epsilon must be a positive number \(an L2 radius"),
    ("rfgsm", -1.0, "l2", "epsilon must be a positive number"),
    ("pgd", 2.0, "l3", r"Unknown norm 'l3'; expected one of \['l1', 'l2', 'linf'\]"),
    ("pgd", 2.0, "linf", r"epsilon must be a number in \(0, 1\)"),
    ("gradalign", 2.0, "l2", "training method 'gradalign' has no l2 version: .*L∞ ball only.*; train it with norm "
                             "linf, or train fgsm, nfgsm, pgd, rfgsm, trades with norm l2"),
    ("elle", 2.0, "l2", "training method 'elle' has no l2 version"),
    ("rfgsm", 2.0, "l1", "training method 'rfgsm' has no l1 version: it has a version in linf, l2 only"),
])
def test_bad_norms_and_radii_are_refused_by_the_python_api_in_one_line(method, epsilon, norm, message):
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=message) as caught:
        kp.adversarial(model, method, epsilon, norm=norm)
    assert "\n" not in str(caught.value)


def test_an_l2_radius_may_exceed_one():
    assert get_perturbation("pgd", 3.0, "l2").epsilon == 3.0 and get_perturbation("clean", 3.0, "l1").epsilon == 3.0


@pytest.mark.parametrize("flags, status, message", [
    (["--norm", "l2", "--epsilon", "0"], 2, "argument --epsilon: epsilon must be a positive number; got '0'"),
    (["--norm", "l2", "--epsilon", "-2"], 2, "argument --epsilon: epsilon must be a positive number; got '-2'"),
    (["--norm", "l3", "--epsilon", "2"], 2, "argument --norm: invalid choice: 'l3'"),
    (["--norm", "l2"], 1, "epsilon is required with norm l2: the data set's default (0.03137) is an L∞ radius"),
    (["--epsilon", "2"], 2, "argument --epsilon: epsilon must lie in (0, 1) for pixels in [0, 1]; got '2'"),
    (["--norm", "l2", "--epsilon", "2", "--method", "gradalign"], 1,
     "error: training method 'gradalign' has no l2 version"),
    (["--norm", "l2", "--epsilon", "2", "--method", "elle"], 1, "error: training method 'elle' has no l2 version"),
])
def test_bad_norms_and_radii_are_refused_by_the_command_in_one_line(monkeypatch, tmp_path, capsys, flags, status,
                                                                      message):
    monkeypatch.setattr(runs, "train_run", lambda config, out: pytest.fail("trained despite a bad input"))
    try:
        code = cli.train_main([*flags, "--out", str(tmp_path / "run")])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == status and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_config_file_sets_the_norm_and_its_radius(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(runs, "train_run", lambda config, out: seen.append(config) or "trained")
    path = tmp_path / "l2.json"
    path.write_text(json.dumps({"method": "pgd", "norm": "l2", "epsilon": "2"}))
    assert cli.train_main(["--config", str(path), "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert (seen[0]["norm"], seen[0]["epsilon"]) == ("l2", 2.0)
    assert cli.train_main(["--config", str(path), "--epsilon", "3", "--out", str(tmp_path / "run")]) == 0
    assert seen[1]["epsilon"] == 3.0  # the flag, checked against the file's norm


# ---------------------------------------------------------------- the commands, end to end
@pytest.fixture(scope="module")
def l2_run(data_dir, tmp_path_factory):
    """A tiny FGSM-RS run in the L2 ball (ε = 1.5): 300 MNIST images, 1 epoch."""
    out = tmp_path_factory.mktemp("l2") / "run"
    assert cli.train_main(["--method", "rfgsm", "--norm", "l2", "--epsilon", "1.5", "--train-size", "300",
                           "--validation-size", "100", "--epochs", "1", "--monitor-images", "20",
                           "--data-dir", str(data_dir), "--out", str(out)]) == 0
    return out


def test_the_train_command_trains_an_l2_run_and_says_so(l2_run, capsys):
    config = json.loads((l2_run / runs.CONFIG).read_text())
    assert (config["method"], config["norm"], config["epsilon"]) == ("rfgsm", "l2", 1.5)
    assert "L2 ε=1.5" in json.loads((l2_run / runs.DONE).read_text())["summary"]
    history = (l2_run / runs.HISTORY).read_text().splitlines()
    assert "pgd_val_accuracy" in history[0]  # the monitor's PGD ran, in the run's L2 ball


def test_the_evaluate_command_attacks_an_l2_run_in_l2_by_default(l2_run, data_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli.evaluate_main([str(l2_run), "--attacks", "pgd", "--num-images", "20", "--set", "pgd.steps=5",
                              "--set", "checks.enabled=false", "--data-dir", str(data_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "L2 ε=1.5 (inputs in [0, 1])" in printed
    results = json.loads((out / "results.json").read_text())
    (model,), rows = results["models"], results["rows"]
    assert model["threat_model"]["norm"] == "l2" and model["threat_model"]["epsilon"] == 1.5
    assert rows and all(r["norm"] == "l2" and "AutoAttack's budget" in r["label"] for r in rows)  # L2: its budget
    table = (out / "table1.md").read_text()
    assert "RFGSM-L2" in table and "L2 ε=1.5" in table  # labelled, never beside the paper's L∞ row


def test_an_explicit_other_norm_on_an_l2_run_is_an_error_naming_the_fix(l2_run, tmp_path, capsys):
    code = cli.evaluate_main([str(l2_run), "--norm", "linf", "--epsilon", "0.1", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "was trained in l2 and is evaluated in its own norm: drop --norm linf" in err and "model.keras" in err
    assert not (tmp_path / "e").exists()
