"""The Pixelwise Noise Injection Layer (PNIL) of Schwinn et al."""

from __future__ import annotations

import keras
from keras import ops

# Σ is clipped to this range before exp(Σ/2): the noise standard deviation then
# lies in [exp(-10), exp(2)] ≈ [4.5e-5, 7.4], far outside what a trained layer
# uses on inputs in [0, 1], yet finite in float16.
LOG_VARIANCE_RANGE = (-20.0, 4.0)

# Default log-variance bias: σ = exp(-5/2) ≈ 0.08, about 2.5× the paper's
# MNIST and CIFAR-10 ε. Much smaller (say B = -10, σ ≈ 0.007) and the gradient
# reaching B, which is proportional to σ, is too small for the layer to move;
# much larger and the first epochs train on pure noise.
DEFAULT_BIAS = -5.0


@keras.saving.register_keras_serializable(package="keras_pnil")
class PixelwiseNoiseInjection(keras.layers.Layer):
    """Adds learnable, input-dependent Gaussian noise to every input feature.

    The log-variance of the noise is an affine function of the input with one
    weight and one bias per input feature (Schwinn et al., Equations 2 and 3):

        Σ  = X ⊙ W + B
        X' = X + ε ⊙ exp(Σ / 2),   ε ~ N(0, 1) drawn per element and call.

    Gradients reach W and B through the reparameterization trick. Unlike
    Keras' `GaussianNoise`, the layer is random at inference too, because the
    randomness is the defence; pass `noise_at_inference=False` for the
    regulariser behaviour.

    Args:
        kernel_initializer: Initializer for W (default zeros: the noise starts
            independent of the input).
        bias_initializer: Initializer for B (default constant -5.0, a noise
            standard deviation of about 0.08; see `DEFAULT_BIAS`).
        kernel_regularizer, bias_regularizer: Optional regularizers.
        kernel_constraint, bias_constraint: Optional constraints.
        noise_at_inference: Whether noise is added when `training` is false.
        seed: Optional integer seed for the noise.

    Call arguments:
        inputs: Tensor of any rank >= 2; W and B have the shape of one sample.
        training: Python boolean; noise is always added when true.
    """

    def __init__(
        self,
        kernel_initializer="zeros",
        bias_initializer=None,
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        noise_at_inference: bool = True,
        seed: int | None = None,
        **kwargs,
    ):
        # Inputs (and W, B: `build`) are not autocast: the layer computes in its variables' dtype (see `call`).
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if not isinstance(noise_at_inference, bool):
            raise ValueError(
                "`noise_at_inference` must be a bool. "
                f"Received: noise_at_inference={noise_at_inference!r}"
            )
        if seed is not None and (not isinstance(seed, int) or seed < 0):
            raise ValueError(
                "`seed` must be a non-negative integer or None. "
                f"Received: seed={seed!r}"
            )
        if bias_initializer is None:
            bias_initializer = keras.initializers.Constant(DEFAULT_BIAS)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.noise_at_inference = noise_at_inference
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        feature_shape = tuple(input_shape[1:])
        if len(input_shape) < 2 or any(d is None for d in feature_shape):
            raise ValueError(
                "PixelwiseNoiseInjection needs a batch dimension and fully "
                f"known feature dimensions. Received: input_shape={input_shape}"
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=feature_shape,
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            autocast=False,
        )
        self.bias = self.add_weight(
            name="bias",
            shape=feature_shape,
            initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
            autocast=False,
        )

    # The noise is computed in the variables' dtype (float32 under `mixed_float16`) and only the result is
    # cast to the compute dtype: exp(Σ/2) reaches exp(-10) ≈ 4.5e-5, below float16's smallest normal number
    # (6.1e-5), and the gradient reaching W and B is that scale times the upstream gradient. In float32 the
    # draws are also the same as a float32 model's with the same seed.

    def log_variance(self, inputs):
        """Σ = X ⊙ W + B, clipped to `LOG_VARIANCE_RANGE` (in the variables' dtype)."""
        inputs = ops.cast(inputs, self.variable_dtype)
        sigma = inputs * self.kernel + self.bias
        return ops.clip(sigma, *LOG_VARIANCE_RANGE)

    def noise_stddev(self, inputs):
        """Per-feature noise standard deviation exp(Σ / 2) for `inputs` (in the variables' dtype)."""
        return ops.exp(self.log_variance(inputs) / 2.0)

    def call(self, inputs, training=None):
        if not (training or self.noise_at_inference):
            return ops.cast(inputs, self.compute_dtype)
        inputs = ops.cast(inputs, self.variable_dtype)
        noise = keras.random.normal(
            ops.shape(inputs), dtype=self.variable_dtype, seed=self.seed_generator
        )
        return ops.cast(inputs + noise * self.noise_stddev(inputs), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
                "bias_constraint": keras.constraints.serialize(self.bias_constraint),
                "noise_at_inference": self.noise_at_inference,
                "seed": self.seed,
            }
        )
        return config


def find_pnil(model: keras.Model) -> PixelwiseNoiseInjection | None:
    """The first PixelwiseNoiseInjection layer of `model`, if any."""
    for layer in model._flatten_layers():
        if isinstance(layer, PixelwiseNoiseInjection):
            return layer
    return None
