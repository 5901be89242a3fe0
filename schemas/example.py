"""The ``tf.train.Example`` layout of a CheXpert record, written once for both sides.

The records job calls ``to_example``; tf.data calls ``parse`` with ``FEATURE_SPEC``. Keys
are namespaced like TFDS's. Every per-observation vector has length 14 in
``schemas.chexpert.OBSERVATIONS`` order.

Keys (dtype, shape):
    image/encoded       bytes   ()      PNG, JPEG or raw row-major uint8 pixels
    image/format        bytes   ()      b"png" | b"jpeg" | b"raw"
    image/height        int64   ()
    image/width         int64   ()
    image/view          bytes   ()      b"frontal" | b"lateral"
    image/projection    bytes   ()      b"AP" | b"PA" | b"LL" | b"RL" | b""
    image/source_path   bytes   ()      the CSV's Path: the record's unique key
    patient/id          bytes   ()      b"patient00001"
    patient/sex         bytes   ()      b"Male" | b"Female" | b"Unknown"
    patient/age         int64   ()
    study/id            bytes   ()      b"patient00001/study1"
    labels/raw          int64   (14,)   Code values: 1, 0, -1, -2 (blank)
    labels/draw         float32 (14,)   uniform [0, 1) draws for label smoothing
    labels/target       float32 (14,)   targets under the job's policy mapping
    labels/mask         float32 (14,)   1 where the target enters the loss
    schema/version      int64   ()

The raw codes are always stored, so a different policy never needs a rebuild: the reader
maps ``labels/raw`` and ``labels/draw`` with ``policy_targets`` and the same table the writer
used (``schemas.chexpert.policy_matrix``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from schemas import chexpert

IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_VIEW = "image/view"
IMAGE_PROJECTION = "image/projection"
SOURCE_PATH = "image/source_path"
PATIENT_ID = "patient/id"
PATIENT_SEX = "patient/sex"
PATIENT_AGE = "patient/age"
STUDY_ID = "study/id"
LABELS_RAW = "labels/raw"
LABELS_DRAW = "labels/draw"
LABELS_TARGET = "labels/target"
LABELS_MASK = "labels/mask"
VERSION = "schema/version"

IMAGE_FORMATS = ("png", "jpeg", "raw")

_N = chexpert.NUM_OBSERVATIONS
FEATURE_SPEC: dict[str, Any] = {
    IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
    IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string),
    IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
    IMAGE_VIEW: tf.io.FixedLenFeature([], tf.string),
    IMAGE_PROJECTION: tf.io.FixedLenFeature([], tf.string),
    SOURCE_PATH: tf.io.FixedLenFeature([], tf.string),
    PATIENT_ID: tf.io.FixedLenFeature([], tf.string),
    PATIENT_SEX: tf.io.FixedLenFeature([], tf.string),
    PATIENT_AGE: tf.io.FixedLenFeature([], tf.int64),
    STUDY_ID: tf.io.FixedLenFeature([], tf.string),
    LABELS_RAW: tf.io.FixedLenFeature([_N], tf.int64),
    LABELS_DRAW: tf.io.FixedLenFeature([_N], tf.float32),
    LABELS_TARGET: tf.io.FixedLenFeature([_N], tf.float32),
    LABELS_MASK: tf.io.FixedLenFeature([_N], tf.float32),
    VERSION: tf.io.FixedLenFeature([], tf.int64),
}


def _bytes(v: bytes | str) -> tf.train.Feature:
    if isinstance(v, str):
        v = v.encode("utf-8")
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _ints(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(x) for x in np.ravel(values)]))


def _floats(values) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(values).astype(np.float32).tolist()))


def to_example(
    row: chexpert.Row,
    *,
    encoded: bytes,
    image_format: str,
    height: int,
    width: int,
    draws: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
) -> tf.train.Example:
    """Builds the record for one radiograph (the writer's side).

    Args:
        row: the validated CSV row.
        encoded: the image bytes in ``image_format``.
        image_format: one of ``IMAGE_FORMATS``.
        height, width: pixel size of the stored image.
        draws: float32 (14,) from ``chexpert.draws_for``.
        targets, mask: float32 (14,) from ``chexpert.apply_policy``.

    Returns:
        A ``tf.train.Example`` with every key in ``FEATURE_SPEC``.
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format={image_format!r}; expected one of {IMAGE_FORMATS}")
    feature = {
        IMAGE_ENCODED: _bytes(encoded),
        IMAGE_FORMAT: _bytes(image_format),
        IMAGE_HEIGHT: _ints([height]),
        IMAGE_WIDTH: _ints([width]),
        IMAGE_VIEW: _bytes(row.view),
        IMAGE_PROJECTION: _bytes(row.projection),
        SOURCE_PATH: _bytes(row.path),
        PATIENT_ID: _bytes(row.patient_id),
        PATIENT_SEX: _bytes(row.sex),
        PATIENT_AGE: _ints([row.age]),
        STUDY_ID: _bytes(row.study_id),
        LABELS_RAW: _ints(row.codes),
        LABELS_DRAW: _floats(draws),
        LABELS_TARGET: _floats(targets),
        LABELS_MASK: _floats(mask),
        VERSION: _ints([chexpert.SCHEMA_VERSION]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


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


def policy_targets(raw: tf.Tensor, draws: tf.Tensor, table: np.ndarray | tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Maps raw codes to targets and masks in TensorFlow (the reader's side).

    Evaluates the same table as ``chexpert.apply_policy`` with the same arithmetic, so the
    two agree exactly.

    Args:
        raw: int64 (..., 14) ``labels/raw``.
        draws: float32 (..., 14) ``labels/draw``.
        table: float32 (14, 4, 3) from ``chexpert.policy_matrix``.

    Returns:
        ``(targets, mask)``: float32 (..., 14) each.
    """
    table = tf.reshape(tf.constant(table, tf.float32), [_N * len(chexpert.CODES), 3])
    flat = tf.range(_N, dtype=tf.int64) * len(chexpert.CODES) + (tf.cast(raw, tf.int64) + chexpert.CODE_OFFSET)
    entry = tf.gather(table, flat)  # (..., 14, 3)
    low, high, mask = entry[..., 0], entry[..., 1], entry[..., 2]
    return low + tf.cast(draws, tf.float32) * (high - low), mask
