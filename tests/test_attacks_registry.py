import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp
from keras_pnil.attacks import ATTACKS, AttackSpec, get_attack, register
from keras_pnil.attacks.common import DEFAULT_BATCH_SIZE

# Each attack's budget, tiny: the point is the convention, not the strength.
TINY_BUDGET = {"pgd_steps": 3, "pgd_restarts": 2, "spsa_steps": 2, "spsa_samples": 8, "apgd_steps": 3,
               "square_queries": 10, "eot_samples": 2, "fab_steps": 3, "target_classes": 2}
EPSILON = 0.1


def _settings(name):
    """The attack's settings under TINY_BUDGET, as the plan resolves them."""
    request = kp.PlanRequest.from_preset("paper", name).with_values(TINY_BUDGET)
    return request.resolve(epsilon=EPSILON, random=True, num_images=10).attack(name).settings


def _run(name, model, x, y, **conventions):
    return get_attack(name)(model, x, y, EPSILON, _settings(name), **conventions)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_shares_the_signature(name):
    parameters = inspect.signature(get_attack(name).function).parameters
    assert list(parameters)[:4] == ["model", "x", "y", "epsilon"]
    for keyword, default in (("eot_samples", None), ("batch_size", DEFAULT_BATCH_SIZE), ("seed", 0)):
        assert parameters[keyword].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters[keyword].default == default, keyword


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_is_called_the_same_way_and_returns_images_in_the_ball(name, trained_pair, mnist):
    _, (xt, yt) = mnist
    x, y = xt[:20], yt[:20]
    x_adv = _run(name, trained_pair[True], x, y, eot_samples=2, batch_size=7, seed=3)
    assert isinstance(x_adv, np.ndarray) and x_adv.shape == x.shape and x_adv.dtype == np.float32
    assert np.abs(x_adv - x).max() <= EPSILON + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    single = _run(name, trained_pair[True], x[:1], y[:1], eot_samples=2, batch_size=7, seed=3)
    assert single.shape == (1, 28, 28, 1)  # a batch of one works


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_draw_from_their_own_generator_and_leave_the_global_seed_alone(name, trained_pair, mnist):
    _, (xt, yt) = mnist
    model, x, y = trained_pair[False], xt[:12], yt[:12]  # deterministic: all randomness is the attack's
    tf.random.set_seed(1)
    first = _run(name, model, x, y, seed=5, eot_samples=None)
    tf.random.set_seed(2)
    assert np.array_equal(first, _run(name, model, x, y, seed=5, eot_samples=None))  # the global seed plays no part
    if ATTACKS[name].seeded:
        assert not np.array_equal(first, _run(name, model, x, y, seed=6, eot_samples=None))  # the attack's seed does
    tf.random.set_seed(7)
    expected = tf.random.uniform([4]).numpy()
    tf.random.set_seed(7)
    _run(name, model, x, y, seed=5, eot_samples=None)
    np.testing.assert_array_equal(tf.random.uniform([4]).numpy(), expected)  # not reset, not advanced


def test_registry_rejects_unknown_and_duplicate_names_and_describes_budgets():
    with pytest.raises(ValueError, match="Unknown attack 'cw'; expected one of"):
        get_attack("cw")
    with pytest.raises(ValueError, match="already registered"):
        register(ATTACKS["pgd"])
    assert get_attack("pgd").describe(_settings("pgd")) == "PGD 3 steps × 2 restarts"
    assert get_attack("pgd").keywords(_settings("pgd")) == {"steps": 3, "step_size": None, "restarts": 2}
    assert get_attack("pgd-no-eot").fixed_eot == 1 and _settings("pgd-no-eot")["steps"] == 3  # follows PGD
    assert get_attack("spsa").keywords(_settings("spsa"))["perturbations"] == 8
    assert get_attack("spsa").gradient_free and not get_attack("spsa").full_set
    # Costs grow with the settings and with EOT, except where EOT is fixed at one draw.
    # (AutoAttack is the exception: EOT > 1 means a random model, whose rand version runs fewer attacks.)
    for spec in (s for s in ATTACKS.values() if s.name != "autoattack"):
        assert spec.cost(_settings(spec.name), 4) >= spec.cost(_settings(spec.name), 1) > 0, spec.name
    assert get_attack("pgd-no-eot").cost(_settings("pgd-no-eot"), 4) == get_attack("pgd-no-eot").cost(
        _settings("pgd-no-eot"), 1)


def test_a_new_attack_is_one_function_and_one_registry_entry(trained_pair, mnist):
    _, (xt, yt) = mnist

    def sign_noise(model, x, y, epsilon, *, eot_samples=None, batch_size=DEFAULT_BATCH_SIZE, seed=0):
        rng = np.random.default_rng(seed)
        return np.clip(x + epsilon * rng.choice([-1.0, 1.0], size=x.shape), 0, 1).astype(np.float32)

    spec = register(AttackSpec("sign-noise", sign_noise, {}, lambda s: "random signs", lambda s, eot: 1,
                               gradient_free=True, full_set=False))
    try:
        result = kp.robustness(trained_pair[False], xt[:30], yt[:30], 0.1, attacks=("pgd", "sign-noise"),
                               checks=False, progress=lambda m: None, pgd_steps=5, spsa_images=20,
                               **{"sign-noise.images": 20})
        assert set(result.attacks) == {"pgd", "sign-noise"} and "random signs" in result.plan.describe()
        assert result.attacks["sign-noise"].n_images == 20  # its own images, set like any registered attack's
        assert result.accuracy("pgd") < result.accuracy("sign-noise")
    finally:
        del ATTACKS[spec.name]


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "apgd-t", "fab-t", "square"])
def test_one_trace_serves_every_batch_size(name, trained_pair, mnist):
    # The last, smaller batch and the shrinking sets of images still standing must not trace again.
    _, (xt, yt) = mnist
    model = keras.models.clone_model(trained_pair[False])  # a fresh model: no graphs cached yet
    model.set_weights(trained_pair[False].get_weights())
    for n in (5, 12, 7):
        _run(name, model, xt[:n], yt[:n], seed=0, eot_samples=None, batch_size=4)
    graphs = list(vars(model)["_keras_pnil_attack_graphs"].values())
    assert len(graphs) == 1 and graphs[0].experimental_get_tracing_count() == 1
