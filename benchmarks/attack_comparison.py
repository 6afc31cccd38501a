"""Our APGD-CE, PGD and Square against IBM ART's APGD-CE and Square: accuracy and seconds, side by side.

One trained MNIST model (a reproduce run's `model.keras`, or a small CNN
trained here with NFGSM), the same held-out images for every attack, each
attack warmed up (traced) on a few images first. Targets: ours at least as
strong as ART (accuracy no higher) and at least 3× faster.

    python benchmarks/attack_comparison.py [--model runs/.../model.keras] [--images 500]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_pnil as kp  # noqa: E402


def trained_model(path: str | None, x, y, epsilon: float):
    if path:
        return keras.models.load_model(path)
    keras.utils.set_random_seed(0)
    model = kp.models.small_cnn(seed=0)
    trainer = kp.adversarial(model, "nfgsm", epsilon)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer.fit(x[:6000], y[:6000], batch_size=100, epochs=2, verbose=0)
    return model


def attacks(model, epsilon: float, args) -> dict:
    from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack

    classifier = kp.attacks.art_classifier(model)

    def art(attack):
        return lambda x, y: attack.generate(x, y=keras.utils.to_categorical(y, 10))

    return {
        f"ours APGD-CE-{args.apgd_steps}": lambda x, y: kp.attacks.apgd(model, x, y, epsilon, steps=args.apgd_steps),
        f"ART APGD-CE-{args.apgd_steps}": art(AutoProjectedGradientDescent(
            classifier, eps=epsilon, eps_step=2 * epsilon, max_iter=args.apgd_steps, nb_random_init=1,
            batch_size=args.images, loss_type="cross_entropy", verbose=False)),
        "ours PGD-50": lambda x, y: kp.attacks.pgd(model, x, y, epsilon, steps=50),
        f"ours Square-{args.square_queries}": lambda x, y: kp.attacks.square(model, x, y, epsilon,
                                                                             queries=args.square_queries),
        f"ART Square-{args.square_queries}": art(SquareAttack(
            classifier, eps=epsilon, max_iter=args.square_queries, p_init=0.8, nb_restarts=1,
            batch_size=args.images, verbose=False)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a trained model.keras (default: train a small CNN here)")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--apgd-steps", type=int, default=100)
    parser.add_argument("--square-queries", type=int, default=1000)
    args = parser.parse_args()
    (x, y), (xt, yt) = kp.data.load_dataset("mnist")
    model = trained_model(args.model, x, y, args.epsilon)
    images, labels = xt[-args.images:], yt[-args.images:]
    print(f"MNIST, {args.images} test images, ε={args.epsilon}, clean accuracy "
          f"{kp.accuracy(model, images, labels):.3f}")
    print(f"{'attack':<22}{'accuracy':>10}{'seconds':>10}")
    seconds = {}
    for name, attack in attacks(model, args.epsilon, args).items():
        attack(images[:8], labels[:8])  # trace and warm up
        start = time.perf_counter()
        adv = attack(images, labels)
        seconds[name] = time.perf_counter() - start
        assert np.abs(adv - images).max() <= args.epsilon + 1e-5
        print(f"{name:<22}{kp.accuracy(model, adv, labels):>10.3f}{seconds[name]:>10.1f}")
    floor = model_work(model, images, labels)
    for kind, units, unit in ((f"APGD-CE-{args.apgd_steps}", args.apgd_steps * floor["gradient"], "gradients"),
                              (f"Square-{args.square_queries}", args.square_queries * floor["forward"],
                               "forward passes")):
        ours, theirs = seconds["ours " + kind], seconds["ART " + kind]
        print(f"{kind}: ours is {theirs / ours:.1f}x faster than ART (target >= 3x); the model's own {unit} "
              f"take {units:.1f} s: ours spends {ours / units:.2f}x that, ART {theirs / units:.2f}x")


def model_work(model, images, labels, batch: int = 256) -> dict:
    """Seconds of one input gradient and of one forward pass over all `images`, in batches of `batch`."""
    gradient = tf.function(lambda x, y: kp.attacks.input_gradient(model, x, y))
    forward = tf.function(lambda x: model(x, training=False))
    chunks = [(tf.constant(images[i:i + batch]), tf.constant(labels[i:i + batch].astype(np.int32)))
              for i in range(0, len(images), batch)]
    work = {"gradient": lambda: [gradient(x, y).numpy() for x, y in chunks],
            "forward": lambda: [forward(x).numpy() for x, _ in chunks]}
    seconds = {}
    for name, run in work.items():
        run()  # trace
        start = time.perf_counter()
        for _ in range(10):
            run()
        seconds[name] = (time.perf_counter() - start) / 10
    return seconds


if __name__ == "__main__":
    main()
