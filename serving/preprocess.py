"""THE model-input preparation: how pixels become what the model saw in training.

One resize, one round/clip/cast and one projective transform, used by every path an image
takes to a model, so that they cannot drift apart (the style guide's big_vision warning):

* tf.data training and evaluation input (``trainer.input``: ``resize``, ``to_pixels``) and
  the random affine augmentation in the training step (``trainer.augment``: ``transform``
  without XLA; under XLA its gather form of the same kernel, tested equal after rounding);
* test-time augmentation (``trainer.evaluate``: ``transform``, ``to_pixels``);
* the SavedModel's encoded-bytes signature (``serving.export``: ``resize_pixels``);
* scoring files (``model_input``: the records job's own decode and resize,
  ``core.imaging.preprocess``, then ``resize_pixels`` to the model's size), used by
  ``trainer.predict``, ``trainer.evaluate --csv``, ``pipeline.score`` and the web demo.

Images are gray, channels last: uint8 (B, H, W, 1) or (H, W, 1) pixels; float32 tensors of
the same shapes hold gray levels in [0, 255] between the steps.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from core import imaging
from schemas.job_spec import JobSpec


def resize(images: tf.Tensor, size: int) -> tf.Tensor:
    """float32 (..., H, W, 1) -> float32 (..., size, size, 1): antialiased bilinear, the
    resize a model trained smaller than its records saw; returned as is when the static
    shape is already ``size`` x ``size``."""
    if images.shape[-3] == size and images.shape[-2] == size:
        return images
    return tf.image.resize(images, [size, size], antialias=True)


def to_pixels(images: tf.Tensor) -> tf.Tensor:
    """float32 gray levels -> uint8 pixels: rounded to the nearest level, clipped to [0, 255]."""
    return tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.uint8)


def resize_pixels(images: np.ndarray | tf.Tensor, size: int) -> tf.Tensor:
    """uint8 (B, H, W, 1) or (H, W, 1) -> uint8 (..., size, size, 1) by ``resize`` then
    ``to_pixels``; the same tensor when it is already ``size`` x ``size``."""
    images = tf.convert_to_tensor(images)
    if images.shape[-3] == size and images.shape[-2] == size:
        return images
    return to_pixels(resize(tf.cast(images, tf.float32), size))


def transform(images: tf.Tensor, transforms: tf.Tensor) -> tf.Tensor:
    """Projective transforms, one per image, bilinear, black (0) outside the source.

    Args:
        images: float32 (B, S, S, 1).
        transforms: float32 (B, 8), ``[a0, a1, a2, b0, b1, b2, c0, c1]``: output pixel
            (x, y) samples the input at ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k),
            k = c0 x + c1 y + 1.

    Returns:
        float32 (B, S, S, 1).
    """
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")


def model_input(data: bytes, name: str, spec: JobSpec) -> np.ndarray:
    """Any supported file's bytes -> uint8 (S, S, 1) as the model saw it in training:
    decoded, gray and resized to the records' size with the records' resize mode (the
    records job's own ``core.imaging.preprocess``), then ``resize_pixels`` to S.

    Raises:
        schemas.chexpert.RowError: not an image, truncated, too large, unreadable DICOM.
    """
    pixels = imaging.preprocess(data, name, spec.records_image_size, spec.records_resize)
    return resize_pixels(pixels[None, :, :, None], spec.image_size).numpy()[0]
