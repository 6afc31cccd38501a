"""Has the PNIL learned? Its noise on object and background pixels, and how the training loss pulls on W and B."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_pnil.layers import LOG_VARIANCE_RANGE, find_pnil


def pnil_structure(layer, x, object_threshold: float = 0.5, background_threshold: float = 0.05) -> dict:
    """Has the PNIL learned structure? Mean noise σ on object vs background pixels, now and at init.

    Object pixels are those above `object_threshold`, background those below
    `background_threshold` (MNIST-like images on black). The paper's Figure 1
    shows low variance on the digit and high variance around it; σ equal to its
    initial value everywhere means the layer has not learned.
    """
    x = np.asarray(x, np.float32)
    sigma = layer.noise_stddev(x).numpy()
    w0 = np.asarray(layer.kernel_initializer(layer.kernel.shape), np.float32)
    b0 = np.asarray(layer.bias_initializer(layer.bias.shape), np.float32)
    sigma0 = np.exp(np.clip(x * w0 + b0, *LOG_VARIANCE_RANGE) / 2)
    on, off = x > object_threshold, x < background_threshold
    return {"sigma_object": float(sigma[on].mean()), "sigma_background": float(sigma[off].mean()),
            "init_sigma_object": float(sigma0[on].mean()), "init_sigma_background": float(sigma0[off].mean()),
            "mean_bias": float(layer.bias.numpy().mean()),
            "mean_abs_kernel": float(np.abs(layer.kernel.numpy()).mean())}


def sign_consistency(gradients) -> np.ndarray:
    """Per parameter, |Σ_t g_t| / Σ_t |g_t| over the first axis (batches t = 1…T) of `gradients`.

    1 when every batch pushes the parameter the same way; about 1/√T when the
    pushes are independent noise. Adam moves a parameter by about its learning
    rate times this per step (it divides the running mean of the gradient by its
    running magnitude), so the consistency, not the gradient's size, decides how
    far a parameter can travel in T steps.
    """
    g = np.asarray(gradients, np.float64)
    total = np.abs(g).sum(0)
    return np.divide(np.abs(g.sum(0)), total, out=np.zeros_like(total), where=total > 0)


def pnil_gradients(trainer, x, y, batch_size: int = 100, object_threshold: float = 0.25,
                   background_threshold: float = 0.01) -> dict:
    """How the training loss pulls on a PNIL's W and B, batch by batch: size, direction and sign consistency.

    `trainer` is an `AdversarialModel` whose first layer is a PNIL; each batch of
    `(x, y)` is perturbed by its training method and the gradient of the mean
    cross-entropy (with the layer's noise, as in training) is taken with respect to
    W and B. Pixel locations are grouped by the mean image of `x`: "object" where it
    exceeds `object_threshold` (where digits usually are), "background" where it is
    below `background_threshold` (the border, always black). Per group and
    parameter: the mean |g| per batch, the mean g (positive: gradient descent lowers
    the parameter, i.e. less noise), and the mean `sign_consistency`.
    """
    layer = find_pnil(trainer)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def gradients(xb, yb):
        x_adv = trainer.perturbation(lambda inputs: trainer(inputs, training=True), xb, yb)
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, trainer(tf.stop_gradient(x_adv), training=True))
        return tape.gradient(loss, [layer.kernel, layer.bias])

    x, y = np.asarray(x, np.float32), np.asarray(y)
    batches = [gradients(x[i:i + batch_size], y[i:i + batch_size])
               for i in range(0, len(x) - batch_size + 1, batch_size)]
    mean_image = x.mean(0)
    groups = {"object": mean_image > object_threshold, "background": mean_image < background_threshold}
    result = {"batches": len(batches)}
    for name, index in (("W", 0), ("B", 1)):
        g = np.stack([b[index].numpy() for b in batches])
        consistency = sign_consistency(g)
        for group, where in groups.items():
            result[f"{group}_{name}"] = {"mean_abs": float(np.abs(g[:, where]).mean()),
                                         "mean": float(g[:, where].mean()),
                                         "consistency": float(consistency[where].mean())}
    result["pure_noise_consistency"] = float(1 / np.sqrt(max(len(batches), 1)))  # what independent pushes give
    return result
