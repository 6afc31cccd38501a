"""A Keras model as an IBM ART classifier, for checking our attacks against a third party's."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_pnil.attacks.eot import tile


def art_classifier(model: keras.Model, draws: int = 1):
    """`model` as an ART `TensorFlowV2Classifier`, its logits averaged over `draws` noise draws.

    ART's attacks have no EOT: averaging the logits is the closest they get.
    Needs `adversarial-robustness-toolbox` (the test extra).
    """
    # A local import: ART is an optional dependency, used only by tests and benchmarks.
    from art.estimators.classification import TensorFlowV2Classifier

    classes = model.output_shape[-1]

    def averaged_logits(x, training=False):
        logits = model(tile(x, draws), training=False)
        return tf.reduce_mean(tf.reshape(logits, [draws, -1, classes]), axis=0)

    return TensorFlowV2Classifier(model=averaged_logits, nb_classes=classes, input_shape=model.input_shape[1:],
                                  clip_values=(0.0, 1.0),
                                  loss_object=keras.losses.CategoricalCrossentropy(from_logits=True))
