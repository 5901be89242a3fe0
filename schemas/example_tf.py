"""The reader's side of the record spec: ``FEATURE_SPEC``, ``parse``, policy targets and
the mask of the observations a record's dataset labels.

Built from ``schemas.example.FEATURES``, the one table the writer also encodes with.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from schemas import chexpert, sources
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


# (formats, 14): 1 where the format labels the observation (``schemas.sources.LABELLED``).
_LABELLED = np.array([[slug in sources.labelled(fmt) for slug in chexpert.OBSERVATIONS] for fmt in sources.FORMATS],
                     np.float32)
_TABLE = np.concatenate([_LABELLED, np.ones((1, _N), np.float32)])


def labelled_mask(dataset: tf.Tensor) -> tf.Tensor:
    """1 where a record's dataset labels the observation, 0 where it labels nothing (graph-safe).

    A policy maps a blank code by ``--blank`` (``negative`` by default); an observation an
    external dataset does not label is blank in every one of its records and must never be
    a target: multiply ``policy_targets``' mask by this. ``pipeline.example_builder.labelled_mask``
    is the writer's twin.

    Args:
        dataset: string (...,) ``source/dataset`` (``b"chexpert"`` where absent); a name
            that is none of ``schemas.sources.FORMATS`` counts as labelling everything.

    Returns:
        float32 (..., 14).
    """
    dataset = tf.convert_to_tensor(dataset, tf.string)
    # Row k of _TABLE for FORMATS[k], its last row (all ones) for any other name. A gather, not
    # a tensordot of the cast comparison: in tf.data that one makes oneDNN log "supports DT_BOOL
    # only on platforms with AVX-512" at start-up (tests/pipeline/test_cli keeps start-up quiet).
    match = tf.cast(tf.equal(tf.expand_dims(dataset, -1), tf.constant(sources.FORMATS)), tf.float32)
    match = tf.concat([match, 1.0 - tf.reduce_max(match, axis=-1, keepdims=True)], axis=-1)  # (..., formats + 1)
    return tf.gather(_TABLE, tf.argmax(match, axis=-1, output_type=tf.int32))
