"""The threat model (keras_pnil.threat): exact projections per norm, steps within the ball and the box,
strength on a closed-form case, and the errors that come before any work."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp
from keras_pnil import masking
from keras_pnil.attacks import apgd, apgd_targeted, fab_targeted, pgd, run_autoattack, spsa, square
from keras_pnil.plan import PlanRequest
from keras_pnil.threat import NORMS, threat_model

RNG = np.random.default_rng(0)


def _case(norm, rows=6, features=5, scale=0.8):
    """Random perturbations, images in [0, 1] (so the box is [-x, 1 - x]) and a radius."""
    d = (RNG.normal(size=(rows, features)) * scale).astype(np.float32)
    x = RNG.uniform(size=(rows, features)).astype(np.float32)
    return d, -x, 1 - x, {"linf": 0.2, "l2": 0.5, "l1": 0.6}[norm]


def _feasible_points(norm, low, high, epsilon, count=3000):
    """Points of the ball ∩ box: random ones scaled into the ball, and the box's vertices scaled likewise."""
    points = RNG.uniform(low, high, size=(count, *low.shape)).astype(np.float64)
    corners = np.where(RNG.uniform(size=(count, *low.shape)) > 0.5, high, low)
    points = np.concatenate([points, corners])
    norms = np.linalg.norm(points, ord=NORMS[norm].p, axis=-1)
    return points * np.minimum(1.0, epsilon / np.maximum(norms, 1e-12))[..., None]


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_projection_onto_the_ball_and_the_box_is_exact(norm):
    d, low, high, epsilon = _case(norm)
    p = NORMS[norm].project(tf.constant(d), epsilon, tf.constant(low), tf.constant(high)).numpy().astype(np.float64)
    assert (p >= low - 1e-6).all() and (p <= high + 1e-6).all()
    assert (np.linalg.norm(p, ord=NORMS[norm].p, axis=1) <= epsilon * (1 + 1e-5)).all()
    # The projection onto a convex set is the feasible p with (d - p)·(q - p) <= 0 for every feasible q.
    q = _feasible_points(norm, low, high, epsilon)
    assert np.max(np.einsum("rf,crf->cr", d - p, q - p)) < 2e-4
    # A perturbation already inside is kept.
    inside = p * 0.5
    kept = NORMS[norm].project(tf.constant(inside, tf.float32), epsilon, tf.constant(low), tf.constant(high))
    np.testing.assert_allclose(kept.numpy(), inside, atol=1e-6)


def test_l2_projection_is_not_ball_then_box():
    # d points outside the box on one coordinate: scaling to the ball then clipping loses length that the
    # exact projection spends on the other coordinate.
    d, low, high = np.array([[3.0, 1.0]], np.float32), np.array([[-1.0, -1.0]], np.float32), np.array([[0.1, 1.0]],
                                                                                                        np.float32)
    p = NORMS["l2"].project(tf.constant(d), 1.0, tf.constant(low), tf.constant(high)).numpy()
    naive = np.clip(d / np.linalg.norm(d) * 1.0, low, high)
    assert np.linalg.norm(d - p) < np.linalg.norm(d - naive) - 0.05
    np.testing.assert_allclose(p, [[0.1, np.sqrt(1 - 0.01)]], atol=1e-4)


def test_l1_projection_is_sparse_soft_thresholding():
    d = np.array([[0.9, 0.5, -0.1, 0.05]], np.float32)
    box = np.full_like(d, 10.0)
    p = NORMS["l1"].project(tf.constant(d), 0.6, tf.constant(-box), tf.constant(box)).numpy()
    np.testing.assert_allclose(p, [[0.5, 0.1, 0.0, 0.0]], atol=1e-5)  # τ = 0.4: the small coordinates vanish


@pytest.mark.parametrize("norm, dual", [("linf", 1), ("l2", 2), ("l1", np.inf)])
def test_hyperplane_step_is_the_smallest_move_when_the_box_is_far(norm, dual):
    w = RNG.normal(size=(4, 6)).astype(np.float32)
    c = RNG.normal(size=4).astype(np.float32)
    box = np.full_like(w, 100.0)
    delta = NORMS[norm].hyperplane(tf.constant(w), tf.constant(c), tf.constant(-box), tf.constant(box)).numpy()
    np.testing.assert_allclose((w * delta).sum(1), c, atol=1e-4)
    # Hölder: the smallest Lp norm with w·δ = c is |c| / ‖w‖ of the dual norm.
    expected = np.abs(c) / np.linalg.norm(w, ord=dual, axis=1)
    np.testing.assert_allclose(np.linalg.norm(delta, ord=NORMS[norm].p, axis=1), expected, rtol=1e-3)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_hyperplane_step_stays_in_the_box(norm):
    w = np.abs(RNG.normal(size=(3, 5))).astype(np.float32)
    low, high = -np.full_like(w, 0.1), np.full_like(w, 0.1)
    delta = NORMS[norm].hyperplane(tf.constant(w), tf.constant([0.05, 0.1, 10.0]), tf.constant(low),
                                   tf.constant(high)).numpy()
    assert (delta >= low - 1e-6).all() and (delta <= high + 1e-6).all()
    np.testing.assert_allclose(delta[2], high[2], atol=1e-6)  # unreachable: as close as the box allows


# ---------------------------------------------------------------- a linear model with known distances
W = np.linspace(-1.0, 1.5, 16).astype(np.float32)  # the margin is w·x - t on 4 × 4 images
DUALS = {"linf": 1, "l2": 2, "l1": np.inf}


def _linear(scale=1.0):
    """Four classes: 0 scores 0, 1 scores w·x/scale - t, 2 and 3 score -50: class 0 while w·x/scale < t."""
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(4)])
    kernel = np.zeros((16, 4), np.float32)
    kernel[:, 1] = W / scale
    model.layers[-1].set_weights([kernel, np.array([0.0, -0.5, -50.0, -50.0], np.float32)])
    return model


def _images(scale=1.0, n=3):
    """Images in the middle of [0, scale] with margin -0.3, -0.6, -0.9 (before scaling): label 0."""
    x = np.full((n, 16), 0.5 * scale, np.float32)
    margins = np.array([0.3, 0.6, 0.9])[:n]
    x = x - (margins[:, None] + (0.5 * W.sum() - 0.5)) * W / (W @ W) * scale  # w·x/scale - t = -margin
    return x.reshape(n, 4, 4, 1), np.zeros(n, np.int64), margins


def _minimal_distance(norm, margins, scale=1.0):
    return margins * scale / np.linalg.norm(W, ord=DUALS[norm])


ATTACKS = {
    "pgd": (pgd, ("linf", "l2"), {"steps": 20}),
    "apgd": (apgd, ("linf", "l2", "l1"), {"steps": 30}),
    "apgd-t": (apgd_targeted, ("linf", "l2", "l1"), {"steps": 30, "targets": 3}),
    "fab-t": (fab_targeted, ("linf", "l2", "l1"), {"steps": 30, "targets": 1}),
    "square": (square, ("linf", "l2", "l1"), {"queries": 300}),
}
CASES = [(name, norm) for name, (_, norms, _) in ATTACKS.items() for norm in norms]


@pytest.mark.parametrize("name, norm", CASES)
def test_each_attack_breaks_an_image_just_beyond_its_distance_and_never_below_it(name, norm):
    attack, _, options = ATTACKS[name]
    model = _linear()
    x, y, margins = _images()
    distance = _minimal_distance(norm, margins)
    # Square's random windows need more room than the gradient attacks on this 16-pixel image; in L1 far more:
    # the closest point moves the corner pixel alone, and an L1 window (3 × 3 at least) peaks at its centre.
    above = 2.5 if (name, norm) == ("square", "l1") else 1.45 if name == "square" else 1.25
    for factor, broken in ((0.8, False), (above, True)):
        epsilon = float(factor * distance[1])
        x_adv = attack(model, x, y, epsilon, norm=norm, **options)
        masking.largest_perturbation(threat_model(norm, epsilon), x_adv, x, name)  # in the ball and the box
        fooled = model.predict(x_adv, verbose=0).argmax(-1) != 0
        assert fooled[1] == broken, (factor, masking.largest_perturbation(threat_model(norm, epsilon), x_adv, x, name))
        assert not fooled[distance > epsilon].any()  # never beyond the closed-form distance
        if broken:
            assert fooled[0]  # a closer image falls too


def test_attacks_keep_to_other_input_ranges():
    # The same model on inputs in [0, 255]: ε in those units, the distances scale with the range.
    model = _linear(scale=255.0)
    x, y, margins = _images(scale=255.0)
    distance = _minimal_distance("l2", margins, scale=255.0)
    epsilon = float(1.45 * distance[1])
    for attack, options in ((apgd, {"steps": 30}), (square, {"queries": 300}), (pgd, {"steps": 20})):
        x_adv = attack(model, x, y, epsilon, norm="l2", bounds=(0, 255), **options)
        masking.largest_perturbation(threat_model("l2", epsilon, (0, 255)), x_adv, x, "attack")  # an error above ε
        assert (model.predict(x_adv, verbose=0).argmax(-1)[:2] != 0).all()


def test_autoattack_composes_per_norm():
    model = _linear()
    x, y, margins = _images()
    epsilon = float(1.25 * _minimal_distance("l2", margins)[1])
    _, report = run_autoattack(model, x, y, epsilon, norm="l2", steps=20, queries=50, fab_steps=20, targets=2)
    assert list(report.after) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert report.robust_accuracy == pytest.approx(1 / 3)
    _, report = run_autoattack(model, x, y, 0.05, norm="l1", steps=5, fab_steps=5, targets=2, queries=20)
    assert list(report.after) == ["apgd-ce", "apgd-t", "fab-t", "square"]  # the official L1 composition too


def test_attacks_without_a_version_in_a_norm_say_so():
    model = _linear()
    x, y, _ = _images()
    with pytest.raises(ValueError, match=r"spsa has no L2 version \(norm='l2'\); it has linf"):
        spsa(model, x, y, 0.5, norm="l2", steps=1, perturbations=2)
    with pytest.raises(ValueError, match=r"pgd has no L1 version"):
        pgd(model, x, y, 0.5, norm="l1")


def test_threat_model_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"Unknown norm 'l3'; expected one of \['l1', 'l2', 'linf'\]"):
        threat_model("l3", 0.1)
    with pytest.raises(ValueError, match=r"epsilon must be a number in \(0, 1\) for pixels in \[0, 1\]"):
        threat_model("linf", 2.0)
    with pytest.raises(ValueError, match=r"epsilon must be a number in \(0, 255\) for pixels in \[0, 255\]"):
        threat_model("linf", 300.0, (0, 255))
    assert threat_model("l2", 2.0).epsilon == 2.0  # an L2 radius may exceed the pixel range
    with pytest.raises(ValueError, match="bounds must be finite with lo < hi"):
        threat_model("linf", 0.1, (1, 0))
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]; found values in \[2, 2\]"):
        pgd(_linear(), np.full((1, 4, 4, 1), 2.0, np.float32), [0], 0.1, bounds=(-1, 1))


# ---------------------------------------------------------------- the plan and the checks
def test_the_plan_carries_the_threat_model_and_claims_autoattack_only_where_official():
    request = PlanRequest.from_preset("autoattack")
    l2 = request.resolve(epsilon=0.5, random=False, num_images=1000, norm="l2", bounds=(0, 255))
    assert l2.label() == "AutoAttack's budget"
    assert "L2 ε=0.5 (inputs in [0, 255])" in l2.describe()
    assert l2.to_dict()["norm"] == "l2" and l2.to_dict()["bounds"] == [0.0, 255.0]
    l1 = request.resolve(epsilon=5.0, random=False, num_images=1000, norm="l1")
    assert l1.label() == "AutoAttack's budget"  # the L1 composition is the official one too
    linf = request.resolve(epsilon=0.5, random=False, num_images=1000)
    assert len({linf.fingerprint(), l2.fingerprint(), l1.fingerprint()}) == 3
    assert linf.fingerprint() != request.resolve(epsilon=0.5, random=False, num_images=1000,
                                                 bounds=(-1, 1)).fingerprint()
    paper = PlanRequest.from_preset("paper", ["pgd"]).resolve(epsilon=0.5, random=False, num_images=10, norm="l2")
    assert "norm l2 (reference linf)" in paper.label()
    with pytest.raises(ValueError, match="spsa has no l2 version; attacks with one: pgd, pgd-no-eot, apgd-ce"):
        PlanRequest.from_preset("paper").resolve(epsilon=0.5, random=False, num_images=10, norm="l2")
    checks = PlanRequest.from_preset("quick", ["apgd-ce"]).resolve(epsilon=3.0, random=False, num_images=10,
                                                                    norm="l1").checks
    assert checks.attack == "apgd-ce" and checks.square_witness  # no PGD in L1, but Square


def test_largest_perturbation_above_epsilon_is_an_error():
    x = np.zeros((2, 4), np.float32)
    x_adv = x.copy()
    x_adv[1, :2] = 0.3
    threat = threat_model("l2", 0.5)
    assert masking.largest_perturbation(threat, x_adv, x, "a") == pytest.approx(0.3 * np.sqrt(2))
    with pytest.raises(masking.PerturbationError, match=r"a used a L2 perturbation of 0.424264, above ε=0.4"):
        masking.largest_perturbation(threat_model("l2", 0.4), x_adv, x, "a")
    with pytest.raises(masking.PerturbationError, match="left the input range"):
        masking.largest_perturbation(threat, x_adv - 0.2, x, "a")
    with pytest.raises(masking.PerturbationError, match="NaN/inf"):
        masking.largest_perturbation(threat, x_adv * np.nan, x, "a")


def test_gradient_health_flags_zero_gradients_and_nan():
    x, y, _ = _images()
    healthy = masking.gradient_health(_linear(), x, y, 1)
    assert [c.flagged for c in healthy] == [False, False]
    flat = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                             keras.layers.Lambda(lambda t: tf.round(t * 0.0)), keras.layers.Dense(4)])
    zero = masking.gradient_health(flat, x, y, 1)
    assert zero[0].flagged and zero[0].value == 1.0
    nan = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(4),
                            keras.layers.Lambda(lambda t: t + np.nan)])
    assert masking.gradient_health(nan, x, y, 1)[1].flagged


def test_robustness_in_l2_on_another_input_range():
    model = _linear(scale=255.0)
    x, y, margins = _images(scale=255.0)
    epsilon = float(1.25 * _minimal_distance("l2", margins, scale=255.0)[1])
    result = kp.robustness(model, x, y, epsilon, "apgd-ce", norm="l2", bounds=(0, 255), budget="quick",
                           **{"apgd-ce.steps": 20, "pgd.steps": 5, "square.queries": 50})
    assert result.accuracy("apgd-ce") == pytest.approx(1 / 3)
    assert 0 < result.largest_perturbation["apgd-ce"] <= epsilon * (1 + masking.NORM_TOLERANCE)
    names = [c.check for c in result.checks]
    assert "zero gradients" in names and "NaN/inf" in names and "square vs apgd-ce" in names
    assert result.to_dict()["threat_model"] == {"norm": "l2", "epsilon": epsilon, "bounds": [0.0, 255.0]}


def test_l1_steps_move_only_the_largest_gradient_coordinates():
    grad = tf.constant([[0.1, -4.0, 0.3, 2.0, -0.2, 1.0, 0.05, 0.4]])
    step = NORMS["l1"].ascent(grad, tf.constant([0.25])).numpy()
    np.testing.assert_allclose(step, [[0, -0.5, 0, 0.5, 0, 0, 0, 0]], atol=1e-6)  # 2 of 8, L1 norm 1
    np.testing.assert_allclose(np.abs(NORMS["l2"].ascent(grad).numpy()).sum() > 1, True)
    np.testing.assert_allclose(np.linalg.norm(NORMS["l2"].ascent(grad).numpy()), 1.0, rtol=1e-5)


# ---------------------------------------------------------------- the command
def test_the_command_in_l2_on_inputs_in_0_255_writes_the_threat_model_and_a_robustbench_record(tmp_path, capsys):
    import csv
    import json

    from keras_pnil import cli

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(10)], name="u255")
    model.save(tmp_path / "m.keras")
    x = np.random.default_rng(1).uniform(0, 255, (12, 8, 8, 1)).astype(np.float32)
    y = model.predict(x, verbose=0).argmax(-1)  # all classified right
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out = tmp_path / "out"
    argv = [str(tmp_path / "m.keras"), "--data", str(tmp_path / "d.npz"), "--norm", "l2", "--bounds", "0,255",
            "--epsilon", "300", "--budget", "quick", "--attacks", "apgd-ce,square", "--set", "apgd-ce.steps=5",
            "--set", "square.queries=20", "--set", "pgd.steps=2", "--set", "checks.images=4", "--out", str(out)]
    assert cli.evaluate_main(argv) == 0
    printed = capsys.readouterr().out
    assert "L2 ε=300 (inputs in [0, 255])" in printed and "largest L2 perturbation" in printed
    rows = {r["attack"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert list(rows["clean"])[-3:] == ["norm", "bounds", "largest_perturbation"]
    assert rows["apgd-ce"]["norm"] == "l2" and rows["apgd-ce"]["bounds"] == "0,255"
    assert 0 < float(rows["apgd-ce"]["largest_perturbation"]) <= 300 * (1 + masking.NORM_TOLERANCE)
    details = json.loads((out / "results.json").read_text())["models"][0]
    assert {"zero gradients", "NaN/inf", "large-ε PGD"} <= {c["check"] for c in details["checks"]}
    assert details["threat_model"] == {"norm": "l2", "epsilon": 300.0, "bounds": [0.0, 255.0]}
    record = json.loads((out / "robustbench.json").read_text())
    assert record["threat_model"] == "L2" and record["eps"] == "300" and record["n_examples"] == 12
    assert record["autoattack_acc"] is None and "AutoAttack was not run" in record["footnote"]
    assert record["clean_acc"] == "100.00" and record["random"] is False and record["plan"]["norm"] == "l2"
    assert {"architecture", "additional_data", "reported"} <= set(record)


@pytest.mark.parametrize("flags, message", [
    (["--norm", "l3"], "argument --norm: invalid choice: 'l3' (choose from 'linf', 'l2', 'l1')"),
    (["--epsilon", "2"], "argument --epsilon: epsilon must be a number in (0, 1) for pixels in [0, 1]"),
    (["--bounds", "255,0"], "argument --bounds: LO must be below HI (e.g. 0,255); got '255,0'"),
    (["--norm", "l1", "--attacks", "pgd"], "pgd has no l1 version; attacks with one: apgd-ce"),
])
def test_the_command_rejects_bad_threat_models_in_one_line(tmp_path, capsys, flags, message):
    from keras_pnil import cli

    keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(4)]).save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x=np.full((2, 4, 4, 1), 0.5, np.float32), y=np.zeros(2, np.int64))
    argv = [str(tmp_path / "m.keras"), "--data", str(tmp_path / "d.npz"), "--epsilon", "0.5", *flags,
            "--out", str(tmp_path / "out")]
    try:
        code = cli.evaluate_main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code in (1, 2) and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_apgd_is_as_strong_as_the_official_code_on_the_closed_form_case(norm):
    # The official APGD (fra31/auto-attack, `pyautoattack` on the package index) on the same linear model:
    # ours must break every image theirs breaks (tolerance: none, on 3 images with known distances), and
    # exactly the images within ε. (In L1 theirs, 30 steps, misses the image at 1.25× its distance that ours breaks.)
    torch = pytest.importorskip("torch")
    official = pytest.importorskip("pyautoattack.autopgd_base")
    model = _linear()
    kernel, bias = (torch.tensor(w) for w in model.layers[-1].get_weights())

    def forward(images):
        return images.reshape(len(images), -1) @ kernel + bias

    x, y, margins = _images()
    for factor in (0.8, 1.25):
        epsilon = float(factor * _minimal_distance(norm, margins)[1])
        attack = official.APGDAttack(forward, n_iter=30, norm=norm.upper(), eps=epsilon, seed=0, device="cpu")
        theirs = attack.perturb(torch.tensor(x).permute(0, 3, 1, 2), torch.tensor(y))
        theirs = theirs.permute(0, 2, 3, 1).detach().numpy()
        ours = apgd(model, x, y, epsilon, norm=norm, steps=30)
        fooled = [model.predict(a, verbose=0).argmax(-1) != 0 for a in (theirs, ours)]
        np.testing.assert_array_equal(fooled[1], _minimal_distance(norm, margins) < epsilon)  # exactly those within ε
        assert (fooled[1] >= fooled[0]).all(), fooled
