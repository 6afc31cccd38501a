"""Our APGD against IBM's Adversarial Robustness Toolbox (ART) on the same models and images."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_pnil as kp

# The only comparison with a third party's attacks: a skip must not hide it where the suite is meant to be
# complete (CI, or a run that requires the data), so there a missing ART fails the collection.
REQUIRED = os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get("KERAS_PNIL_REQUIRE_DATA") == "1"
try:
    from art.attacks.evasion import AutoProjectedGradientDescent
except ImportError:
    if REQUIRED:
        raise
    pytest.skip("the test extra installs adversarial-robustness-toolbox", allow_module_level=True)

# 200 images: the accuracy of one attack run has a standard error near 0.03;
# on the same images the two attacks' difference is smaller still.
IMAGES, EPSILON, STEPS, TOLERANCE = 200, 0.1, 20, 0.03


def art_apgd_accuracy(model, x, y, draws: int) -> float:
    attack = AutoProjectedGradientDescent(kp.attacks.art_classifier(model, draws), eps=EPSILON,
                                          eps_step=2 * EPSILON, max_iter=STEPS, nb_random_init=1,
                                          batch_size=IMAGES, loss_type="cross_entropy", verbose=False)
    x_adv = attack.generate(x, y=keras.utils.to_categorical(y, 10))
    return kp.accuracy(model, x_adv, y, draws=8)


@pytest.mark.parametrize("pnil", [False, True], ids=["deterministic", "pnil"])
def test_our_apgd_is_at_least_as_strong_as_arts(pnil, trained_pair, mnist):
    _, (xt, yt) = mnist
    model, x, y = trained_pair[pnil], xt[:IMAGES], yt[:IMAGES]
    draws = 8 if pnil else 1
    ours = kp.accuracy(model, kp.apgd(model, x, y, EPSILON, steps=STEPS, eot_samples=draws), y, draws=8)
    theirs = art_apgd_accuracy(model, x, y, draws)
    print(f"APGD-CE accuracy: ours {ours:.3f}, ART {theirs:.3f}")
    assert ours <= theirs + TOLERANCE
    assert ours < kp.accuracy(model, x, y, draws=8) - 0.2  # both are real attacks here


def test_our_apgd_t_is_at_least_as_strong_as_arts_targeted_apgd(trained_pair, mnist):
    # ART's targeted APGD takes one target per image: run it on each of the same top-ranked classes ours
    # uses; an image is robust to ART if no target's run made it misclassified.
    _, (xt, yt) = mnist
    model, x, y, targets = trained_pair[False], xt[:100], yt[:100], 2
    ranked = np.argsort(-model.predict(x, verbose=0), axis=1, kind="stable")
    robust = np.ones(len(x), bool)
    for k in range(1, targets + 1):
        attack = AutoProjectedGradientDescent(kp.attacks.art_classifier(model), eps=EPSILON, eps_step=2 * EPSILON,
                                              max_iter=STEPS, targeted=True, nb_random_init=1, batch_size=100,
                                              loss_type="difference_logits_ratio", verbose=False)
        x_adv = attack.generate(x, y=keras.utils.to_categorical(ranked[:, k], 10))
        robust &= model.predict(x_adv, verbose=0).argmax(1) == y
    ours = kp.accuracy(model, kp.apgd_targeted(model, x, y, EPSILON, steps=STEPS, targets=targets), y)
    print(f"APGD-T accuracy: ours {ours:.3f}, ART {robust.mean():.3f}")
    assert ours <= robust.mean() + TOLERANCE
    assert ours < kp.accuracy(model, x, y) - 0.2


def test_without_art_this_module_fails_in_ci_and_is_skipped_elsewhere():
    script = ("import sys; sys.modules['art'] = None; import pytest; "  # as if ART were not installed
              f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '--collect-only', {__file__!r}]))")
    for ci, status in (("true", pytest.ExitCode.INTERRUPTED), ("", pytest.ExitCode.NO_TESTS_COLLECTED)):
        env = {**os.environ, "CI": ci, "KERAS_PNIL_REQUIRE_DATA": ""}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == status, done.stdout[-2000:]
