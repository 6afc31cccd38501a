"""The evaluation plan: one resolved object behind every number, label and estimate."""

import importlib
import json

import numpy as np
import pytest

import keras_pnil as kp
from keras_pnil.attacks.registry import get_attack
from keras_pnil.plan import PRESETS, PlanRequest


def _plan(preset="paper", attacks=None, random=True, num_images=None, **values):
    request = PlanRequest.from_preset(preset, attacks).with_values(values)
    return request.resolve(epsilon=8 / 255, random=random,
                           num_images=num_images or PRESETS[preset]["values"]["num_images"])


def test_the_paper_label_needs_every_field_of_the_paper():
    assert _plan().label().startswith("paper protocol")
    assert _plan(random=False).label() == "paper protocol"  # no EOT is the protocol for a deterministic model
    for key, value in (("pgd.steps", 49), ("spsa.samples", 1024), ("spsa.images", 999), ("eot_samples", 50),
                       ("accuracy_draws", 5), ("pgd.restarts", 2), ("spsa.learning_rate", 0.02)):
        label = _plan(**{key: value}).label()
        assert not label.startswith("paper protocol"), key
        assert key.replace("accuracy_draws", "accuracy draws").replace("eot_samples", "pgd.eot_samples") in label, label
    assert "images 4999 (reference 5000)" in _plan(num_images=4999).label()
    # A missing attack is named, and so is an extra attack below its own reference values.
    assert "spsa not run" in _plan(attacks="pgd").label()
    assert "square.queries 100 (reference 5000)" in _plan(attacks="pgd,spsa,square", **{"square.queries": 100}).label()
    assert _plan(attacks="pgd,spsa,square").label().startswith("paper protocol")
    assert _plan("quick").label().startswith("REDUCED budget (not the paper's protocol")
    assert _plan("autoattack", random=False).label() == "AutoAttack's budget"
    assert "autoattack.queries" in _plan("autoattack", random=False, **{"autoattack.queries": 100}).label()


def test_a_deterministic_model_is_planned_with_one_draw_everywhere():
    plan = _plan("quick", "pgd,spsa,square", random=False, num_images=50, **{"square.eot_samples": 3})
    assert plan.accuracy_draws == 1 and {a.eot_samples for a in plan.attacks} == {1}
    assert plan.checks.eot_samples == 1 and plan.checks.square_eot_samples == 1
    assert "deterministic model: no EOT, one draw" in plan.describe() and "(EOT" not in plan.describe()
    random = _plan("quick", "pgd,spsa,square", num_images=50, **{"square.eot_samples": 3})
    assert [a.eot_samples for a in random.attacks] == [4, 4, 3] and random.accuracy_draws == 5
    # The checks' PGD and Square take the draws of the attacks they stand for, not only the plan's.
    own = _plan("quick", "pgd,square", num_images=50, **{"pgd.eot_samples": 6, "square.eot_samples": 3})
    assert (own.checks.eot_samples, own.checks.square_eot_samples) == (6, 3) == (
        own.attack("pgd").eot_samples, own.attack("square").eot_samples)
    assert random.attack("square").eot_samples == 3 and "Square 300 queries on 50 of them (EOT 3)" not in \
        random.describe()  # 50 images: Square attacks all of them, so no "on N of them"
    assert "Square 300 queries (EOT 3)" in random.describe()


def test_subsets_are_nested_and_min_is_planned_on_the_images_every_attack_saw():
    plan = _plan("quick", "pgd,spsa,square,autoattack", num_images=100,
                 **{"spsa.images": 20, "square.images": 60, "autoattack.images": 40})
    images = {a.name: set(a.images) for a in plan.attacks}
    assert len(images["pgd"]) == 100 and images["spsa"] < images["autoattack"] < images["square"] < images["pgd"]
    assert set(plan.common_images) == images["spsa"] and len(plan.checks.images) == 20
    assert set(plan.checks.images) <= set(plan.common_images)
    other_seed = _plan("quick", "pgd,spsa", num_images=100, seed=1, **{"spsa.images": 20})
    assert set(other_seed.attack("spsa").images) != images["spsa"]  # the seed picks the subset


def test_settings_follow_the_registry_and_bad_ones_are_named():
    request = PlanRequest.from_preset("quick").with_values({"pgd.steps": 7, "pgd_restarts": 3})
    assert dict(request.settings["pgd"]) == {"steps": 7, "step_size": None, "restarts": 3, "images": None,
                                             "eot_samples": None, "seed": None}
    # PGD without EOT follows PGD unless set itself.
    plan = request.with_attacks("pgd,pgd-no-eot").resolve(epsilon=0.1, random=True, num_images=10)
    assert plan.attack("pgd-no-eot").settings["steps"] == 7 and plan.attack("pgd-no-eot").eot_samples == 1
    own = request.with_attacks("pgd-no-eot").with_values({"pgd-no-eot.steps": 3})
    assert own.resolve(epsilon=0.1, random=True, num_images=10).attack("pgd-no-eot").settings["steps"] == 3
    for key, value, message in (("pgd.stepz", 3, "attack 'pgd' has no setting 'stepz'"),
                                ("spsa.samples", 7, "spsa.samples must be even"),
                                ("pgd.steps", 0, "pgd.steps must be an integer >= 1"),
                                ("cw.steps", 3, "Unknown attack 'cw'"),
                                ("steps", 3, "unknown plan setting 'steps'"),
                                ("checks.enabled", "yes", "checks.enabled must be true or false"),
                                ("num_images", 0, "num_images must be an integer >= 1")):
        with pytest.raises(ValueError, match=message):
            request.with_values({key: value})
    with pytest.raises(ValueError, match="Unknown budget 'huge'"):
        PlanRequest.from_preset("huge")


def test_a_plan_file_round_trips_and_the_fingerprint_sees_every_number(tmp_path):
    request = PlanRequest.from_preset("quick", "pgd,square").with_values({"square.queries": 77, "seed": 3})
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(request.to_dict()))
    again = PlanRequest.from_dict(json.loads(path.read_text()))
    resolve = dict(epsilon=0.1, random=True, num_images=30)
    assert again.resolve(**resolve).to_dict() == request.resolve(**resolve).to_dict()
    # A resolved plan's own file reads back as its request too.
    assert PlanRequest.from_dict(request.resolve(**resolve).to_dict()).to_dict() == request.to_dict()
    base = request.resolve(**resolve).fingerprint()
    for changed in ({"square.queries": 78}, {"seed": 4}, {"eot_samples": 5}, {"checks.images": 3}):
        assert request.with_values(changed).resolve(**resolve).fingerprint() != base, changed
    assert request.resolve(**{**resolve, "epsilon": 0.2}).fingerprint() != base
    assert request.resolve(**{**resolve, "random": False}).fingerprint() != base


def test_the_cost_is_the_plans_and_grows_with_every_field():
    plan = _plan("quick", "pgd,spsa", num_images=100, **{"spsa.images": 10})
    pgd, spsa = plan.attack("pgd"), plan.attack("spsa")
    assert pgd.cost() == 100 * 20 * 1 * 4 * 3 and spsa.cost() == 10 * 10 * 64 * 4
    checks = plan.checks.cost()
    assert plan.checks.square_witness and not _plan("quick", "pgd,square", num_images=100).checks.square_witness
    assert not _plan("quick", "spsa", num_images=100).checks.square_witness  # no gradient attack to compare with
    assert checks == 10 * (20 * 4 * 3 * 3 + 300 * 4)
    assert plan.cost_units() == (100 + 100 + 10) * 5 + pgd.cost() + spsa.cost() + checks
    bigger = _plan("quick", "pgd,spsa", num_images=100, **{"spsa.images": 10, "pgd.restarts": 2})
    assert bigger.cost_units() > plan.cost_units()


def test_robustness_accepts_a_plan_and_one_attack_name(trained_pair, mnist):
    _, (xt, yt) = mnist
    request = PlanRequest.from_preset("quick").with_values({"pgd.steps": 3, "checks.enabled": False})
    result = kp.robustness(trained_pair[False], xt[:20], yt[:20], 0.1, attacks="pgd", plan=request,
                           progress=lambda m: None)
    assert list(result.attacks) == ["pgd"] and result.plan.attack("pgd").settings["steps"] == 3
    assert result.plan.checks is None and result.checks == []
    assert np.isclose(result.effective, result.accuracy("pgd"))


def test_each_attack_gets_batches_sized_to_its_input_and_draws(monkeypatch):
    # Deterministic MNIST-sized images go in batches of 1,024; CIFAR-sized and any random model (the model sees
    # the batch once per draw) in the default 256.
    from keras_pnil.attacks import common

    assert common.attack_batch_size((28, 28, 1), 1) == 1024
    assert common.attack_batch_size((32, 32, 3), 1) == common.DEFAULT_BATCH_SIZE == 256
    assert common.attack_batch_size((28, 28, 1), 20) == 256 and common.attack_batch_size((224, 224, 3), 1) == 256
    seen = []
    spec = get_attack("pgd")
    monkeypatch.setattr(type(spec), "__call__", lambda self, model, x, y, eps, settings, **kw: seen.append(
        kw["batch_size"]) or np.asarray(x))
    x, y = np.zeros((6, 28, 28, 1), np.float32), np.zeros(6, np.int64)
    for random in (False, True):
        plan = PlanRequest.from_preset("quick", ["pgd"]).resolve(epsilon=0.1, random=random, num_images=6)
        plan.attack("pgd").run(None, x, y, plan.threat)
    assert seen == [1024, 256]


def test_the_ensemble_runs_the_version_of_the_plans_judgement(monkeypatch):
    # Whether the model is random is judged once, by the plan: the ensemble is told its version rather than
    # probing the model again (a second judgement could run stages the masking checks do not expect).
    autoattack = importlib.import_module("keras_pnil.attacks.autoattack")  # the module, not the function
    seen = []
    monkeypatch.setattr(autoattack, "run_autoattack", lambda model, x, y, eps, **kw: seen.append(kw.get("version"))
                        or (np.asarray(x), autoattack.AutoAttackReport(kw.get("version"), 1, 1.0)))
    x, y = np.zeros((4, 28, 28, 1), np.float32), np.zeros(4, np.int64)
    for random in (False, True):
        plan = PlanRequest.from_preset("quick", ["autoattack"]).resolve(epsilon=0.1, random=random, num_images=4)
        assert plan.attack("autoattack").random is random
        plan.attack("autoattack").run(None, x, y, plan.threat)
        plan.attack("autoattack").run(None, x, y, plan.threat, staged=True)
    assert seen == ["standard", "standard", "rand", "rand"]
    assert get_attack("pgd").keywords_for_model(True) == {}  # attacks without versions take nothing
