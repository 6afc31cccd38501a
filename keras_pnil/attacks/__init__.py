"""Attacks: PGD, SPSA, Auto-PGD (APGD-CE/DLR/T), FAB-T, Square and an AutoAttack ensemble, all EOT-aware.

Every attack is called as `attack(model, x, y, epsilon, *, norm, bounds,
eot_samples, batch_size, seed, **budget)` and returns the adversarial images
as a NumPy array; `norm` ("linf", "l2", "l1") and `bounds` (the model's input
range) form the threat model (`keras_pnil.threat`), and an attack without a
version in the norm raises. `batch_size` counts images; `eot_samples` counts noise draws (default:
20 on random models, judged by calling them twice, 1 otherwise); `seed` seeds the attack's own
stateless draws (`common.Draws`: TensorFlow's global seed is never read or reset). `ATTACKS` holds
one `AttackSpec` per name.
"""

from keras_pnil.attacks.apgd import apgd, apgd_checkpoints, apgd_targeted
from keras_pnil.attacks.art_adapter import art_classifier
from keras_pnil.attacks.autoattack import AutoAttackReport, autoattack, run_autoattack
from keras_pnil.attacks.common import progress_bars
from keras_pnil.attacks.eot import EOT, Behaviour, input_gradient, negative_log_likelihood, probe
from keras_pnil.attacks.fab import fab_targeted
from keras_pnil.attacks.pgd import default_step_size, pgd
from keras_pnil.attacks.registry import ATTACKS, AttackSpec, get_attack, register
from keras_pnil.attacks.spsa import spsa
from keras_pnil.attacks.square import square

__all__ = [
    "ATTACKS", "AttackSpec", "AutoAttackReport", "Behaviour", "EOT", "apgd", "apgd_checkpoints", "apgd_targeted",
    "art_classifier", "autoattack", "default_step_size", "fab_targeted", "get_attack", "input_gradient",
    "negative_log_likelihood", "pgd", "probe", "progress_bars", "register", "run_autoattack", "spsa", "square",
]
