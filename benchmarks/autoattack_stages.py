"""Accuracy after each stage of the standard AutoAttack ensemble, and the seconds each stage took.

Runs `run_autoattack` (standard for deterministic models: APGD-CE, APGD-T, FAB-T, Square; 100 steps,
9 targets, 5,000 queries) on the last N MNIST test images, against a saved model (`--model`) or, without
one, Wong et al.'s MNIST network trained here with FGSM-RS (α = 1.25ε) on all 60,000 training images for
2 epochs. Usage:

    KERAS_PNIL_DATA_DIR=../shared/datasets python benchmarks/autoattack_stages.py [--images N]
        [--epsilon E] [--model path/to/model.keras]
"""

import argparse
import time

import keras

import keras_pnil as kp


def trained_here(x, y, epsilon: float) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = kp.models.wong_mnist(seed=0)
    trainer = kp.adversarial(model, "rfgsm", epsilon, alpha=1.25 * epsilon)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.perf_counter()
    trainer.fit(x, y, batch_size=100, epochs=2, verbose=0)
    print(f"trained in {time.perf_counter() - start:.0f} s")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--model", help="a saved .keras model (default: train one here)")
    args = parser.parse_args()
    n_images, epsilon = args.images, args.epsilon
    (x, y), (xt, yt) = kp.data.load_dataset("mnist")
    model = keras.models.load_model(args.model) if args.model else trained_here(x, y, epsilon)
    x_eval, y_eval = xt[-n_images:], yt[-n_images:]
    start = time.perf_counter()
    _, report = kp.run_autoattack(model, x_eval, y_eval, epsilon)
    total = time.perf_counter() - start
    print(f"{args.model or 'trained here'}: AutoAttack {report.version} on the last {n_images} test images, "
          f"ε = {epsilon}: APGD 100 steps, 9 targets (APGD-T, FAB-T 100 steps), Square 5000 queries")
    print("| stage | robust accuracy after it | seconds |\n|---|---|---|")
    print(f"| clean | {report.clean:.3f} | |")
    for stage, accuracy in report.after.items():
        print(f"| {stage} | {accuracy:.3f} | {report.seconds[stage]:.0f} |")
    print(f"total {total:.0f} s")


if __name__ == "__main__":
    main()
