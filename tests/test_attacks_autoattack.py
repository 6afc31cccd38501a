import pytest

import keras_pnil as kp


def test_autoattack_reports_what_square_finds_on_a_masked_model(masked_model, mnist):
    _, (xt, yt) = mnist
    x, y, eps = xt[:60], yt[:60], 0.3
    x_adv, report = kp.run_autoattack(masked_model, x, y, eps, steps=10, queries=300, targets=3, fab_steps=10)
    assert report.version == "standard" and list(report.after) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert set(report.seconds) == set(report.after) and all(s >= 0 for s in report.seconds.values())
    square_acc = kp.accuracy(masked_model, kp.square(masked_model, x, y, eps, queries=300), y)
    apgd_acc = kp.accuracy(masked_model, kp.apgd(masked_model, x, y, eps, steps=10), y)
    assert apgd_acc > 0.5  # zero gradients defeat APGD ...
    assert report.robust_accuracy <= square_acc + 0.05 < apgd_acc - 0.3  # ... and Square does the breaking
    assert report.broken_by.count("square") > report.broken_by.count("apgd-ce")
    assert kp.accuracy(masked_model, x_adv, y) == pytest.approx(report.robust_accuracy)
    after = [report.after[stage] for stage in ("square", "fab-t", "apgd-t", "apgd-ce")]
    assert after[0] == report.robust_accuracy and after == sorted(after) and after[-1] <= report.clean
    # The registry's form returns the same images, nothing else.
    again = kp.autoattack(masked_model, x, y, eps, steps=10, queries=300, targets=3, fab_steps=10)
    assert (again == x_adv).all()


def test_autoattack_defaults_to_the_rand_version_for_random_models(trained_pair, mnist):
    _, (xt, yt) = mnist
    _, report = kp.run_autoattack(trained_pair[True], xt[:10], yt[:10], 0.1, steps=2, eot_samples=2)
    assert report.version == "rand" and list(report.after) == ["apgd-ce", "apgd-dlr"]
    assert report.eot_samples == 2 and len(report.broken_by) == 10
    with pytest.raises(ValueError, match="Unknown AutoAttack version 'plus'"):
        kp.autoattack(trained_pair[True], xt[:2], yt[:2], 0.1, version="plus")
