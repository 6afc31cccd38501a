import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp

TINY = dict(pgd_steps=10, spsa_steps=20, spsa_samples=128, spsa_images=40, accuracy_draws=2,
            spsa_learning_rate=0.05, spsa_delta=0.05, square_queries=200)


def test_robustness_reports_min_worst_case_and_flags_masking(masked_model, mnist):
    _, (xt, yt) = mnist
    result = kp.robustness(masked_model, xt[:80], yt[:80], 0.3, seed=1, progress=lambda m: None, **TINY)
    # Min is taken on the 40 images both attacks saw, and never exceeds the clean accuracy there.
    assert len(result.common_images) == 40 and result.effective <= result.effective_clean
    assert result.worst_case <= min(result.accuracy("spsa"), result.clean) + 1e-9
    flags = {c.check: c.flagged for c in result.checks}
    # Zero gradients: PGD cannot even reach ε = 0.5, and both gradient-free witnesses see through it.
    assert flags["spsa vs pgd"] and flags["square vs pgd"] and flags["large-ε PGD"]
    again = kp.robustness(masked_model, xt[:80], yt[:80], 0.3, attacks=("pgd",), seed=1,
                          checks=False, progress=lambda m: None, **TINY)
    assert again.plan.attack("pgd").images == result.plan.attack("pgd").images
    described = result.plan.describe()
    assert "REDUCED budget" in described and "Square 200 queries on 40 images (masking witness)" in described
    assert "APGD" not in described  # only the attacks that ran are described


def test_robustness_does_not_flag_an_honest_model(trained_pair, mnist):
    _, (xt, yt) = mnist
    result = kp.robustness(trained_pair[False], xt[:80], yt[:80], 8 / 255, seed=0, progress=lambda m: None, **TINY)
    assert not any(c.flagged for c in result.checks), result.checks


def test_unknown_attack_is_rejected_before_any_work(trained_pair, mnist):
    _, (xt, yt) = mnist
    with pytest.raises(ValueError, match="Unknown attack 'fab'"):
        kp.robustness(trained_pair[False], xt[:4], yt[:4], 0.1, attacks=("pgd", "fab"))


def test_accuracy_of_a_random_model_is_the_expected_single_pass_accuracy(trained_pair, mnist, with_noise):
    _, (xt, yt) = mnist
    model = with_noise(trained_pair[True], 1.0)  # σ ≈ 1.6: very noisy
    per_example = kp.correctness.per_example_correct(model, xt[:200], yt[:200], draws=8)
    assert set(np.unique(per_example * 8)) <= set(range(9)) and 0 < per_example.mean() < 0.9
    smoothed = kp.accuracy(model, xt[:200], yt[:200], draws=8, mode="mean_softmax")
    assert 0 <= smoothed <= 1
    with pytest.raises(ValueError, match="Unknown accuracy mode 'vote'"):
        kp.accuracy(model, xt[:2], yt[:2], mode="vote")


def test_epsilon_sweep_falls_towards_zero_and_eot_curve_has_one_point_per_setting(trained_pair, mnist):
    _, (xt, yt) = mnist
    sweep = kp.curves.epsilon_sweep(trained_pair[False], xt[:60], yt[:60], [0.02, 0.1, 0.3], steps=10, draws=1)
    assert sweep[0] >= sweep[1] >= sweep[2] and sweep[2] < 0.2
    curve = kp.curves.eot_curve(trained_pair[True], xt[:60], yt[:60], 0.1, [1, 4], steps=5, draws=2)
    assert len(curve) == 2 and all(0 <= a <= 1 for a in curve)


def test_pnil_structure_compares_sigma_with_its_initial_value(trained_pair, mnist, with_noise):
    _, (xt, _) = mnist
    model = with_noise(trained_pair[True], -1.0)
    structure = kp.pnil_diagnostics.pnil_structure(model.get_layer("pnil"), xt[:20])
    assert structure["init_sigma_object"] == pytest.approx(np.exp(-2.5), rel=1e-4)
    assert structure["sigma_background"] == pytest.approx(np.exp(-0.5), rel=0.05)


def test_each_attack_gets_its_own_nested_subset_and_eot_draws(trained_pair, mnist):
    _, (xt, yt) = mnist
    budget = dict(TINY, square_images=60, square_eot_samples=2, spsa_eot_samples=1, eot_samples=3)
    result = kp.robustness(trained_pair[True], xt[:80], yt[:80], 8 / 255, attacks=("pgd", "spsa", "square"), seed=1,
                           checks=False, progress=lambda m: None, **budget)
    assert len(result.common_images) == 40  # the smallest subset: the images every attack ran on
    rows = {r["attack"]: r for r in kp.results.result_rows("m", "mnist", result.to_dict())}
    assert (rows["pgd"]["n_images"], rows["spsa"]["n_images"], rows["square"]["n_images"]) == (80, 40, 60)
    assert (rows["pgd"]["eot_samples"], rows["spsa"]["eot_samples"], rows["square"]["eot_samples"]) == (3, 1, 2)
    assert rows["min"]["n_images"] == 40 and rows["min"]["accuracy"] <= rows["min"]["clean_accuracy"]
    for name in ("pgd", "spsa", "square"):  # each attack row states the clean accuracy on its own images
        assert rows[name]["accuracy"] <= rows[name]["clean_accuracy"]
        on = np.asarray(result.plan.attack(name).images)
        assert rows[name]["clean_accuracy"] == pytest.approx(
            kp.correctness.per_example_correct(trained_pair[True], xt[:80][on], yt[:80][on], 2).mean(), abs=0.06)
    described = result.plan.describe()
    assert "Square 200 queries on 60 of them (EOT 2)" in described and "on 40 of them (EOT 1)" in described
    # A deterministic model gets no EOT from any attack, and one accuracy draw, whatever the plan asks.
    plain = kp.robustness(trained_pair[False], xt[:80], yt[:80], 8 / 255, attacks=("square",), seed=1,
                          checks=False, progress=lambda m: None, **budget)
    assert plain.plan.attack("square").eot_samples == 1 and plain.plan.accuracy_draws == 1
    assert kp.results.result_rows("m", "mnist", plain.to_dict())[0]["accuracy_draws"] == 1
    # The plan's cost counts each attack on its own images at its own EOT.
    square = result.plan.attack("square")
    assert square.cost() == 60 * 200 * 2 and result.plan.attack("spsa").cost() == 40 * 20 * 128 * 1


def test_sign_consistency_is_one_for_agreeing_batches_and_one_over_root_t_for_noise():
    constant = np.tile([[0.3, -2.0, 0.0]], (50, 1))
    np.testing.assert_allclose(kp.pnil_diagnostics.sign_consistency(constant), [1.0, 1.0, 0.0])
    noise = np.random.default_rng(0).normal(size=(400, 2000))
    # E|Σg| / Σ|g| = 1/√T for independent symmetric pushes: 0.05 at T = 400 (2,000 parameters average it).
    assert kp.pnil_diagnostics.sign_consistency(noise).mean() == pytest.approx(1 / np.sqrt(400), rel=0.05)


def test_pnil_gradients_show_the_loss_pushing_loud_noise_down_consistently(trained_pair, mnist, with_noise):
    (x, y), _ = mnist
    trainers = {name: kp.adversarial(with_noise(trained_pair[True], b), "nfgsm", 8 / 255)
                for name, b in (("quiet", -5.0), ("loud", 1.0))}
    stats = {name: kp.pnil_diagnostics.pnil_gradients(t, x[:2000], y[:2000]) for name, t in trainers.items()}
    assert stats["loud"]["batches"] == 20 and stats["loud"]["pure_noise_consistency"] == pytest.approx(20 ** -0.5)
    noise = stats["loud"]["pure_noise_consistency"]
    # σ ≈ 1.6 drowns the digit: the batches agree on asking for less noise where digits are (dL/dB > 0),
    # far more than independent pushes would (1/√20 = 0.22).
    assert stats["loud"]["object_B"]["mean"] > 0 and stats["loud"]["object_B"]["consistency"] > 2 * noise
    # σ ≈ 0.08 barely matters: B's pull is orders of magnitude weaker and hardly more consistent than noise.
    assert stats["quiet"]["object_B"]["mean_abs"] < 0.1 * stats["loud"]["object_B"]["mean_abs"]
    assert stats["quiet"]["object_B"]["consistency"] < 1.5 * noise


def test_min_is_the_lowest_attack_whatever_its_place(trained_pair, mnist):
    _, (xt, yt) = mnist
    weak = {"pgd.steps": 1, "pgd.step_size": 0.01, "apgd-ce.steps": 10, "checks.enabled": False}
    for attacks in (("apgd-ce", "pgd"), ("pgd", "apgd-ce")):
        result = kp.robustness(trained_pair[False], xt[:100], yt[:100], 0.2, attacks=attacks, budget="quick",
                               progress=lambda m: None, **weak)
        assert result.accuracy("apgd-ce") < result.accuracy("pgd")  # the strong one must decide Min
        assert result.effective == min(result.accuracy(a) for a in attacks) == result.accuracy("apgd-ce")
        assert result.worst_case == pytest.approx(result.accuracy("apgd-ce"), abs=0.02)


@pytest.mark.parametrize("name", sorted(kp.attacks.ATTACKS))
def test_each_attack_runs_with_the_plans_settings_eot_draws_seed_and_images(name, trained_pair, mnist, monkeypatch):
    _, (xt, yt) = mnist
    calls = []
    spec = kp.attacks.ATTACKS[name]

    def spy(model, x, y, epsilon, **keywords):
        calls.append((len(x), keywords))
        return np.asarray(x)

    monkeypatch.setitem(kp.attacks.ATTACKS, name, dataclasses.replace(spec, function=spy))
    values = {f"{name}.images": 30, f"{name}.eot_samples": 3, f"{name}.seed": 7, "eot_samples": 5,
              "checks.enabled": False}
    result = kp.robustness(trained_pair[True], xt[:40], yt[:40], 0.1, attacks=name, budget="quick",
                           progress=lambda m: None, **values)
    planned = result.plan.attack(name)
    (count, keywords), = calls
    assert count == len(planned.images) == 30 and keywords["seed"] == 7
    assert keywords["eot_samples"] == planned.eot_samples == (spec.fixed_eot or 3)
    assert {k: keywords[k] for k in spec.keywords(planned.settings)} == spec.keywords(planned.settings)
    calls.clear()
    kp.robustness(trained_pair[False], xt[:40], yt[:40], 0.1, attacks=name, budget="quick", progress=lambda m: None,
                  **values)
    assert calls[0][1]["eot_samples"] == 1  # a deterministic model: one draw, whatever the plan asked


class CyclingLogits(keras.layers.Layer):
    """Random-looking at inference with known draws: right (class 0) on three calls of every four."""

    def build(self, input_shape):
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

    def call(self, x):
        self.calls.assign_add(1.0)
        right = tf.cast(tf.math.floormod(self.calls, 4.0) > 0, tf.float32)
        logits = tf.stack([10.0 * right, 10.0 * (1 - right)] + [tf.zeros(())] * 8)
        return tf.zeros_like(x[:, :1]) + logits + 1e-3 * self.calls  # every call differs; the argmax cycles


def test_the_accuracy_of_a_random_model_is_the_fraction_of_right_draws():
    model = keras.Sequential([keras.Input((4,)), CyclingLogits()])
    x, y = np.zeros((6, 4), np.float32), np.zeros(6, np.int64)
    assert kp.probe(model, x).random
    per_image = kp.correctness.per_example_correct(model, x, y, draws=8)
    np.testing.assert_array_equal(per_image, np.full(6, 0.75))  # 6 right draws of 8, every image
    assert kp.accuracy(model, x, y, draws=8) == 0.75
    assert kp.accuracy(model, x, y, draws=8, mode="mean_softmax") == 1.0  # the mean softmax favours class 0
    assert kp.accuracy(model, x, y, draws=4, mode="expected") == 0.75


def test_the_eot_curve_uses_each_of_its_draws(trained_pair, mnist, monkeypatch):
    _, (xt, yt) = mnist
    used = []
    real = kp.curves.pgd
    monkeypatch.setattr(kp.curves, "pgd", lambda *a, **k: used.append(k["eot_samples"]) or real(*a, **k))
    curve = kp.curves.eot_curve(trained_pair[True], xt[:10], yt[:10], 0.1, [1, 4, 2], steps=2, draws=1)
    assert used == [1, 4, 2] and len(curve) == 3


def test_the_convergence_check_flags_a_pgd_that_has_not_converged(trained_pair, mnist):
    _, (xt, yt) = mnist
    # One step of 0.03 at ε = 0.3 is far from converged: two steps go twice as far.
    result = kp.robustness(trained_pair[False], xt[:100], yt[:100], 0.3, attacks="pgd", budget="quick",
                           progress=lambda m: None, **{"pgd.steps": 1, "pgd.step_size": 0.03, "checks.images": 100,
                                                       "checks.square_queries": 20})
    flags = {c.check: c for c in result.checks}
    assert flags["PGD convergence"].flagged and flags["PGD convergence"].value < -0.03
    assert not flags["large-ε PGD"].flagged  # PGD itself works: only its budget is too small


def test_an_image_the_model_gets_wrong_is_never_robust(monkeypatch):
    # The model says class 1 when the mean pixel exceeds 0.5; the images sit at 0.45 with label 1, so it gets
    # them wrong, and an "attack" that brightens them by ε makes it right: still not robust.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.set_weights([np.tile([[-0.25, 0.25]], (4, 1)).astype("float32"), np.array([0.5, -0.5], "float32")])
    x, y = np.full((10, 4), 0.45, np.float32), np.ones(10, np.int64)

    def brighten(model, x, y, epsilon, **keywords):
        return np.clip(x + epsilon, 0, 1).astype(np.float32)

    spec = kp.attacks.AttackSpec("brighten", brighten, {}, lambda s: "brighten", lambda s, eot: 1)
    monkeypatch.setitem(kp.attacks.ATTACKS, "brighten", spec)
    assert kp.accuracy(model, x, y) == 0 and kp.accuracy(model, brighten(model, x, y, 0.1), y) == 1
    result = kp.robustness(model, x, y, 0.1, attacks="brighten", checks=False, progress=lambda m: None)
    assert result.accuracy("brighten") == 0 and result.effective == 0 and result.clean == 0


TINY_AA = {"autoattack.apgd_steps": 2, "autoattack.fab_steps": 2, "autoattack.targets": 1, "checks.images": 10,
           "checks.square_queries": 10, "pgd.steps": 2}


def test_autoattacks_square_stage_is_its_own_witness_on_a_deterministic_model(trained_pair, masked_model, mnist):
    # As AutoAttack's own check: the share of images its Square stage broke after APGD and FAB-T had failed.
    _, (xt, yt) = mnist
    values = {**TINY_AA, "autoattack.queries": 100}
    honest = kp.robustness(trained_pair[False], xt[:20], yt[:20], 0.1, attacks="autoattack", budget="autoattack",
                           progress=lambda m: None, **values)
    assert not honest.plan.checks.square_witness and honest.plan.checks.stage_witness == "autoattack"
    assert "Square 10 queries" not in honest.plan.describe()
    assert "autoattack's last stage as the masking witness" in honest.plan.describe()
    assert [c.check for c in honest.checks] == ["square stage of autoattack", "large-ε PGD", "zero gradients",
                                                 "NaN/inf"]
    # The check's value is what the ensemble's own report says, run alone with the same settings and seed.
    _, report = kp.attacks.run_autoattack(trained_pair[False], xt[:20], yt[:20], 0.1, steps=2, fab_steps=2,
                                          targets=1, queries=100, seed=honest.plan.seed)
    assert honest.checks[0].value == pytest.approx(report.after["fab-t"] - report.after["square"])
    # Behind a zero-gradient quantiser APGD and FAB-T find nothing and Square breaks images: flagged.
    masked = kp.robustness(masked_model, xt[:20], yt[:20], 0.3, attacks="autoattack", budget="autoattack",
                           progress=lambda m: None, **values)
    square = masked.checks[0]
    assert square.check == "square stage of autoattack" and square.flagged and square.value > 0.1, square


def test_the_square_witness_is_compared_with_the_ensemble_on_a_random_model(trained_pair, mnist):
    # AutoAttack's rand version has no Square stage: Square runs beside it as the witness.
    _, (xt, yt) = mnist
    result = kp.robustness(trained_pair[True], xt[:20], yt[:20], 0.1, attacks="autoattack", budget="autoattack",
                           progress=lambda m: None, **{**TINY_AA, "eot_samples": 2, "accuracy_draws": 2,
                                                       "autoattack.eot_samples": 2, "square.eot_samples": 2})
    assert result.plan.checks.square_witness and result.plan.checks.stage_witness is None
    assert result.checks[0].check == "square vs autoattack"
    assert "on the same 10 images" in result.checks[0].detail


def test_stage_codes_of_another_version_are_an_error_not_a_quiet_zero():
    # Codes from a 4-stage standard run read as the 2-stage rand version's (or the reverse) must not pass.
    with pytest.raises(ValueError, match="another version than the plan's"):
        kp.masking.stage_witness("autoattack", np.array([3.0, -1.0, 0.0]), True, "linf")
    check = kp.masking.stage_witness("autoattack", np.array([3.0, -1.0, 0.0, -2.0, np.nan]), False, "linf")
    assert check.value == 0.25 and check.flagged
