"""Training-set augmentation inside the tf.data pipeline: the CIFAR-10 references' random crop and flip.

Wong et al., de Jorge et al. and Andriushchenko & Flammarion train on
`RandomCrop(32, padding=4)` then `RandomHorizontalFlip()` (torchvision, on the
unnormalised image: the padding is black, 0). `crop_flip` does the same to a
batch at once: each image is zero-padded by `pad` pixels on every side, a
window of the image's size is cut at a uniformly drawn offset (0 to 2·`pad` in
each direction), and the window is mirrored left-right with probability 1/2.
The draws are stateless, keyed by a per-batch seed from a seeded
`tf.data.Dataset.random` stream that is drawn afresh each epoch, so an epoch's
augmentation is reproducible from the run's seed and differs from the last.
"""

from __future__ import annotations

import tensorflow as tf

from keras_pnil.validation import check_choice

AUGMENTATIONS = ("none", "crop_flip")
CROP_PADDING = 4  # the references' RandomCrop(32, padding=4)


def check_augmentation(name: str) -> str:
    """`name`, or a ValueError naming the augmentations there are.

    Example:
        >>> check_augmentation("crop_flip")
        'crop_flip'
    """
    check_choice("augmentation", name, AUGMENTATIONS)
    return name


def crop_flip(images: tf.Tensor, seed: tf.Tensor, pad: int = CROP_PADDING) -> tf.Tensor:
    """A batch (N, H, W, C) randomly shifted by up to `pad` pixels (zero padding) and mirrored with probability 1/2.

    Args:
        images: A batch of images.
        seed: A shape-[2] integer seed for the stateless draws.
        pad: The padding on each side, and so the largest shift.

    Example:
        >>> out = crop_flip(tf.zeros((8, 32, 32, 3)), tf.constant([0, 1], tf.int64))
        >>> out.shape
        TensorShape([8, 32, 32, 3])
    """
    count, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    offsets_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    offsets = tf.random.stateless_uniform([count, 2], offsets_seed, 0, 2 * pad + 1, dtype=tf.int32)
    flipped = tf.random.stateless_uniform([count, 1], flip_seed, 0, 2, dtype=tf.int32) == 1
    rows = offsets[:, :1] + tf.range(height)[None]  # (N, H): the window's rows in the padded image
    columns = offsets[:, 1:] + tf.range(width)[None]
    columns = tf.where(flipped, tf.reverse(columns, axis=[1]), columns)  # a mirrored window reads right to left
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    return tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), columns, axis=2, batch_dims=1)


def augment(dataset: tf.data.Dataset, name: str, seed: int) -> tf.data.Dataset:
    """`dataset` of (images, labels) batches with the augmentation `name` applied to the images, seeded by `seed`.

    Example:
        >>> ds = tf.data.Dataset.from_tensor_slices((tf.zeros((4, 32, 32, 3)), tf.zeros(4))).batch(2)
        >>> [int(x.shape[0]) for x, _ in augment(ds, "crop_flip", seed=0)]
        [2, 2]
    """
    if check_augmentation(name) == "none":
        return dataset
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip(dataset, seeds).map(
        lambda batch, key: (crop_flip(batch[0], key), *batch[1:]), num_parallel_calls=tf.data.AUTOTUNE)
