"""Results keyed on exactly what was evaluated; stages kept for resume; one writer per output folder."""

import keras
import numpy as np
import pytest

import keras_pnil as kp
from keras_pnil import files, records
from keras_pnil.plan import PlanRequest


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])


def _plan(**values):
    request = PlanRequest.from_preset("quick", "pgd").with_values({"pgd.steps": 2, "checks.enabled": False, **values})
    return request.resolve(epsilon=0.1, random=False, num_images=6)


def test_the_key_changes_with_the_images_labels_weights_plan_and_version(monkeypatch):
    rng = np.random.default_rng(0)
    x, y, model, plan = rng.uniform(size=(6, 4, 4, 1)).astype("float32"), np.arange(6), _model(), _plan()
    key = records.evaluation_key(model, x, y, plan)
    assert key == records.evaluation_key(model, x.copy(), y.copy(), _plan())  # the same contents: the same key
    other_x = x.copy()
    other_x[3, 1, 1, 0] += 1e-3
    assert records.evaluation_key(model, other_x, y, plan) != key
    assert records.evaluation_key(model, x, y[::-1].copy(), plan) != key
    assert records.evaluation_key(_model(seed=1), x, y, plan) != key
    assert records.evaluation_key(model, x, y, _plan(**{"pgd.steps": 3})) != key
    monkeypatch.setattr(records, "VERSION", "9.9.9")
    assert records.evaluation_key(model, x, y, plan) != key


def test_a_record_is_read_back_only_under_its_key(tmp_path):
    path = tmp_path / "m.json"
    records.write_record(path, "abc", {"record": {"clean": 0.9}})
    assert records.read_record(path, "abc")["record"] == {"clean": 0.9}
    assert records.read_record(path, "abd") is None
    path.write_text("{truncated")
    assert records.read_record(path, "abc") is None and records.read_record(tmp_path / "none.json", "abc") is None


def test_an_evaluation_resumes_at_its_next_stage(trained_pair, mnist, tmp_path, monkeypatch):
    _, (xt, yt) = mnist
    x, y = xt[:20], yt[:20]
    plan = PlanRequest.from_preset("quick", "pgd,square").with_values(
        {"pgd.steps": 2, "square.queries": 10, "checks.enabled": False}).resolve(epsilon=0.1, random=False,
                                                                                 num_images=20)
    store = records.StageStore(tmp_path / "stages", "key-1")
    first = kp.evaluation.evaluate(trained_pair[False], x, y, plan, store=store, progress=lambda m: None)
    assert sorted(p.name for p in (tmp_path / "stages").iterdir()) == [
        "clean.json", "pgd.json", "pgd.largest.json", "square.json", "square.largest.json"]
    ran = []
    for name in ("pgd", "square"):
        spec = kp.attacks.ATTACKS[name]
        monkeypatch.setitem(kp.attacks.ATTACKS, name, kp.attacks.AttackSpec(
            name, lambda *a, **k: ran.append(1) or np.asarray(a[1]), spec.settings, spec.describe, spec.cost))
    again = kp.evaluation.evaluate(trained_pair[False], x, y, plan, store=store, progress=lambda m: None)
    assert ran == [] and again.to_dict()["attacks"] == first.to_dict()["attacks"]  # read back, not attacked
    assert again.largest_perturbation == first.largest_perturbation and first.largest_perturbation["pgd"] > 0
    other = records.StageStore(tmp_path / "stages", "key-2")  # another key: every stage runs again
    kp.evaluation.evaluate(trained_pair[False], x, y, plan, store=other, progress=lambda m: None)
    assert ran == [1, 1]
    store.clear()
    assert not (tmp_path / "stages").exists()


def test_one_output_folder_has_one_writer(tmp_path):
    with files.exclusive(tmp_path, "an evaluation"):
        with pytest.raises(OSError, match="is in use: process .* is writing an evaluation there"):
            with files.exclusive(tmp_path, "an evaluation"):
                pass
    with files.exclusive(tmp_path):  # released: the next writer gets it
        pass
    assert not (tmp_path / ".lock").exists()


def test_an_ensembles_stages_are_kept_and_read_back_with_it(trained_pair, mnist, tmp_path):
    # AutoAttack's stages feed the masking check that reads its Square stage: they are stored with its results,
    # read back with them, and results without them are an error, not a check run on nothing.
    _, (xt, yt) = mnist
    x, y = xt[:20], yt[:20]
    plan = PlanRequest.from_preset("autoattack", "autoattack").with_values(
        {"autoattack.apgd_steps": 2, "autoattack.fab_steps": 2, "autoattack.targets": 1, "autoattack.queries": 50,
         "checks.images": 5, "pgd.steps": 2}).resolve(epsilon=0.2, random=False, num_images=20)
    store = records.StageStore(tmp_path / "stages", "key-1")
    first = kp.evaluation.evaluate(trained_pair[False], x, y, plan, store=store, progress=lambda m: None)
    assert (tmp_path / "stages" / "autoattack.stages.json").exists()
    again = kp.evaluation.evaluate(trained_pair[False], x, y, plan, store=store, progress=lambda m: None)
    assert again.checks[0] == first.checks[0] and first.checks[0].check == "square stage of autoattack"
    (tmp_path / "stages" / "autoattack.stages.json").unlink()
    with pytest.raises(RuntimeError, match="no record of its stages"):
        kp.evaluation.evaluate(trained_pair[False], x, y, plan, store=store, progress=lambda m: None)
