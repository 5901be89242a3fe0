"""The reader's side of the record spec: ``FEATURE_SPEC``, ``parse`` and policy targets.

Built from ``schemas.example.FEATURES``, the one table the writer also encodes with.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from schemas import chexpert
from schemas.example import DEFAULTS, FEATURES, IMAGE_ENCODED, IMAGE_FORMAT, IMAGE_HEIGHT, IMAGE_WIDTH

_N = chexpert.NUM_OBSERVATIONS
_DTYPES = {"bytes": tf.string, "int64": tf.int64, "float": tf.float32}
FEATURE_SPEC = {
    key: tf.io.FixedLenFeature(list(shape), _DTYPES[kind], default_value=DEFAULTS.get(key))
    for key, (kind, shape) in FEATURES.items()
}


def decode_image(encoded: tf.Tensor, image_format: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Decodes a stored image (graph-safe, for tf.data).

    Returns:
        uint8 tensor (height, width, 1).
    """

    def raw():
        return tf.reshape(tf.io.decode_raw(encoded, tf.uint8), tf.stack([height, width, 1]))

    def compressed():
        # decode_png/decode_jpeg via decode_image; channels=1 keeps grayscale as stored.
        return tf.io.decode_image(encoded, channels=1, dtype=tf.uint8, expand_animations=False)

    image = tf.cond(tf.equal(image_format, b"raw"), raw, compressed)
    image.set_shape([None, None, 1])
    return image


def parse(serialized: tf.Tensor, *, decode: bool = True) -> dict[str, tf.Tensor]:
    """Parses one serialized record (the reader's side).

    Args:
        serialized: scalar string tensor.
        decode: also decode the pixels into ``"image"``.

    Returns:
        Every ``FEATURE_SPEC`` key with the dtypes and shapes in the module docstring, plus,
        when ``decode``, ``"image"``: uint8 (height, width, 1).
    """
    features = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    if decode:
        features["image"] = decode_image(
            features[IMAGE_ENCODED], features[IMAGE_FORMAT], features[IMAGE_HEIGHT], features[IMAGE_WIDTH]
        )
    return features


def policy_targets(
    raw: tf.Tensor, draws: tf.Tensor, table: np.ndarray | tf.Tensor, labeller: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Maps raw codes to targets and masks in TensorFlow (the reader's side).

    Evaluates the same table as ``chexpert.apply_policy`` with the same arithmetic, so the
    two agree exactly.

    Args:
        raw: int64 (..., 14) ``labels/raw``.
        draws: float32 (..., 14) ``labels/draw``.
        table: float32 (14, 4, 4) from ``chexpert.policy_matrix``.
        labeller: float32 (..., 14) ``labels/teacher`` (``NO_LABELLER_VALUE`` where absent), or None.

    Returns:
        ``(targets, mask)``: float32 (..., 14) each.
    """
    cols = len(chexpert.TABLE_COLUMNS)
    table = tf.reshape(tf.constant(table, tf.float32), [_N * len(chexpert.CODES), cols])
    flat = tf.range(_N, dtype=tf.int64) * len(chexpert.CODES) + (tf.cast(raw, tf.int64) + chexpert.CODE_OFFSET)
    entry = tf.gather(table, flat)  # (..., 14, 4)
    low, high, mask, from_labeller = (entry[..., k] for k in range(cols))
    draws = tf.cast(draws, tf.float32)
    labeller = (tf.fill(tf.shape(draws), chexpert.NO_LABELLER_VALUE) if labeller is None
                else tf.cast(labeller, tf.float32))
    use_labeller = from_labeller > 0
    have = labeller >= 0.0
    source = tf.where(use_labeller, tf.where(have, labeller, 0.0), draws)
    mask = tf.where(use_labeller & ~have, 0.0, mask)
    return low + source * (high - low), mask
