"""Accuracy after each stage of the standard AutoAttack ensemble, and the seconds each stage took.

Trains Wong et al.'s MNIST network with FGSM-RS (α = 1.25ε) at ε = 0.1 on all 60,000 training images for
2 epochs (a deterministic, fairly robust model), then runs `run_autoattack` (standard: APGD-CE, APGD-T,
FAB-T, Square; 100 steps, 9 targets, 5,000 queries) on the first N test images. Usage:

    KERAS_PNIL_DATA_DIR=../shared/datasets python benchmarks/autoattack_stages.py [N]
"""

import sys
import time

import keras

import keras_pnil as kp


def main(n_images: int = 500, epsilon: float = 0.1) -> None:
    (x, y), (xt, yt) = kp.data.load_dataset("mnist")
    keras.utils.set_random_seed(0)
    model = kp.models.wong_mnist(seed=0)
    trainer = kp.adversarial(model, "rfgsm", epsilon, alpha=1.25 * epsilon)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.perf_counter()
    trainer.fit(x, y, batch_size=100, epochs=2, verbose=0)
    print(f"trained in {time.perf_counter() - start:.0f} s")
    x_eval, y_eval = xt[:n_images], yt[:n_images]
    start = time.perf_counter()
    _, report = kp.run_autoattack(model, x_eval, y_eval, epsilon)
    total = time.perf_counter() - start
    print(f"AutoAttack standard on {n_images} test images, ε = {epsilon}: APGD 100 steps, 9 targets (APGD-T, "
          f"FAB-T 100 steps), Square 5000 queries")
    print("| stage | robust accuracy after it | seconds |\n|---|---|---|")
    print(f"| clean | {report.clean:.3f} | |")
    for stage, accuracy in report.after.items():
        print(f"| {stage} | {accuracy:.3f} | {report.seconds[stage]:.0f} |")
    print(f"total {total:.0f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
