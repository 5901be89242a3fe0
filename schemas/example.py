"""The ``tf.train.Example`` layout of a CheXpert record, written once for both sides.

``FEATURES`` below is the spec. The records job calls ``to_example`` (pure Python: it
encodes the protobuf wire format itself, so Beam workers never import TensorFlow, which
costs ~3 s per worker process); tf.data calls ``schemas.example_tf.parse``, whose
``FEATURE_SPEC`` is built from this same table. A test checks that ``to_example`` gives
byte for byte what ``tf.train.Example.SerializeToString(deterministic=True)`` gives.

Keys are namespaced like TFDS's. Every per-observation vector has length 14 in
``schemas.chexpert.OBSERVATIONS`` order.

Keys (dtype, shape):
    image/encoded       bytes   ()      PNG, JPEG or raw row-major uint8 pixels
    image/format        bytes   ()      b"png" | b"jpeg" | b"raw"
    image/height        int64   ()
    image/width         int64   ()
    image/view          bytes   ()      b"frontal" | b"lateral"; external rows also
                                        b"unknown" (MIMIC's AP AXIAL, blank, ...)
    image/projection    bytes   ()      b"AP" | b"PA" | b"LL" | b"RL" | b""
    image/source_path   bytes   ()      the CSV's Path: the record's unique key (external
                                        rows: the image's path in the dataset folder)
    patient/id          bytes   ()      b"patient00001" (NIH b"00000001", MIMIC its subject_id)
    patient/sex         bytes   ()      b"Male" | b"Female" | b"Unknown"
    patient/age         int64   ()      years; -1 where the source has none (MIMIC-CXR-JPG)
    study/id            bytes   ()      b"patient00001/study1" (NIH b"PATIENT/FOLLOWUP",
                                        MIMIC b"SUBJECT/STUDY")
    labels/raw          int64   (14,)   Code values: 1, 0, -1, -2 (blank)
    labels/draw         float32 (14,)   uniform [0, 1) draws for label smoothing
    labels/target       float32 (14,)   targets under the job's policy mapping
    labels/mask         float32 (14,)   1 where the target enters the loss
    labels/teacher      float32 (14,)   the U-SelfTrained labeller's P(positive) where the
                                        job ran one (``build_records --labeller``), else -1; absent
                                        from version 1 records, parsed as all -1
    schema/version      int64   ()
    source/dataset      bytes   ()      b"nih" | b"mimic": the dataset the row came from;
                                        written only for external rows, parsed as
                                        b"chexpert" where absent (so CheXpert records
                                        are byte-identical to before)
    source/labels       bytes   ()      the source's own labels as it wrote them, ``|``
                                        between (NIH ``Cardiomegaly|Effusion``, MIMIC the
                                        observation names it labelled 1.0); external rows
                                        only, parsed as b"" where absent

An external dataset's observation that it does not label is ``labels/raw`` = -2 (blank) in
every one of its records: readers must mask it there (``schemas.sources.labelled``), never
read it as negative.

The raw codes are always stored, so a different policy never needs a rebuild: the reader
maps ``labels/raw``, ``labels/draw`` and ``labels/teacher`` with
``example_tf.policy_targets`` and the same table the writer used
(``schemas.chexpert.policy_matrix``). Only switching an observation *to* ``self_trained``
needs labeller values the job did not store, i.e. a rebuild with ``--labeller``.
"""

from __future__ import annotations

import functools

import numpy as np

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
# The U-SelfTrained labeller's values. The key string keeps the concept's old name ("teacher"):
# it is written into every record, and renaming it would make existing records unreadable.
LABELS_LABELLER = "labels/teacher"
VERSION = "schema/version"
SOURCE_DATASET = "source/dataset"
SOURCE_LABELS = "source/labels"

IMAGE_FORMATS = ("png", "jpeg", "raw")

_N = chexpert.NUM_OBSERVATIONS
# key -> (kind, shape): kind is the tf.train.Feature list type (bytes, int64, float).
FEATURES: dict[str, tuple[str, tuple[int, ...]]] = {
    IMAGE_ENCODED: ("bytes", ()),
    IMAGE_FORMAT: ("bytes", ()),
    IMAGE_HEIGHT: ("int64", ()),
    IMAGE_WIDTH: ("int64", ()),
    IMAGE_VIEW: ("bytes", ()),
    IMAGE_PROJECTION: ("bytes", ()),
    SOURCE_PATH: ("bytes", ()),
    PATIENT_ID: ("bytes", ()),
    PATIENT_SEX: ("bytes", ()),
    PATIENT_AGE: ("int64", ()),
    STUDY_ID: ("bytes", ()),
    LABELS_RAW: ("int64", (_N,)),
    LABELS_DRAW: ("float", (_N,)),
    LABELS_TARGET: ("float", (_N,)),
    LABELS_MASK: ("float", (_N,)),
    LABELS_LABELLER: ("float", (_N,)),
    VERSION: ("int64", ()),
    SOURCE_DATASET: ("bytes", ()),
    SOURCE_LABELS: ("bytes", ()),
}
# Keys written only for some records (external datasets'): left out of CheXpert records, so
# those stay byte-identical to records written before the keys existed.
OPTIONAL = (SOURCE_DATASET, SOURCE_LABELS)
# Parse defaults for keys older records lack (FixedLenFeature default_value).
DEFAULTS = {LABELS_LABELLER: [chexpert.NO_LABELLER_VALUE] * _N, SOURCE_DATASET: b"chexpert", SOURCE_LABELS: b""}


# How records are ordered inside a shard (the manifest's ``record_order``): frontal views
# first, each group by path. A reader that wants frontal views then reads each shard's first
# N records (N from the manifest's shard_stats) instead of parsing every record's view.
RECORD_ORDER = "frontal_first"


def record_order(path: str, view: str) -> tuple[bool, str]:
    """Sort key of a record inside its shard (``RECORD_ORDER``)."""
    return (view != "frontal", path)


# --- protobuf wire format (just what tf.train.Example needs) ---------------------------------
# Built as a list of chunks joined once at the end, so the ~100 KB image is copied once.


@functools.lru_cache(maxsize=4096)
def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 two's complement, as protobuf encodes negative int64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2) as one small bytes object."""
    return _varint(tag << 3 | 2) + _varint(len(payload)) + payload


# Map-entry key field per feature key: tag 1, length, UTF-8 key.
_KEY_FIELDS = {key: _field(1, key.encode()) for key in FEATURES}
_VALUE_TAG = _varint(2 << 3 | 2)  # MapEntry.value
_ENTRY_TAG = _varint(1 << 3 | 2)  # Features.feature (a repeated map entry); also Example.features


def _entry_head(key: str, fsize: int) -> bytes:
    """Everything of a Features.feature map entry before its Feature's ``fsize`` bytes."""
    key_field = _KEY_FIELDS[key]
    value_head = _VALUE_TAG + _varint(fsize)
    return _ENTRY_TAG + _varint(len(key_field) + len(value_head) + fsize) + key_field + value_head


@functools.lru_cache(maxsize=256)
def _packed_head(key: str, tag: bytes, packed_len: int) -> bytes:
    """The map entry of ``key`` up to its packed values (``packed_len`` bytes): the fixed-size
    float features' heads are the same for every record, so they are built once."""
    inner_head = (b"\x0a" + _varint(packed_len)) if packed_len else b""  # packed repeated value = 1
    feature_head = tag + _varint(len(inner_head) + packed_len)
    return _entry_head(key, len(feature_head) + len(inner_head) + packed_len) + feature_head + inner_head


def _entry(key: str, kind: str, values) -> list[bytes]:
    """A serialized map entry ``key -> tf.train.Feature(values)``, as chunks (a bytes value is
    its own chunk, so the ~100 KB image is copied only by ``encode``'s final join)."""
    if kind == "bytes":
        vals = [values] if isinstance(values, (bytes, str)) else values
        body: list[bytes] = []
        size = 0
        for v in vals:
            v = v.encode() if isinstance(v, str) else bytes(v)
            head = b"\x0a" + _varint(len(v))  # BytesList.value = 1
            body += [head, v]
            size += len(head) + len(v)
        feature_head = b"\x0a" + _varint(size)  # Feature.bytes_list = 1
        return [_entry_head(key, len(feature_head) + size) + feature_head, *body]
    if kind == "float":
        packed = np.asarray(values, "<f4").tobytes()  # Feature.float_list = 2
        return [_packed_head(key, b"\x12", len(packed)) + packed]
    packed = b"".join(map(_varint, np.ravel(values).tolist()))  # Feature.int64_list = 3
    return [_packed_head(key, b"\x1a", len(packed)) + packed]


# Keys whose values repeat across records (a format, a view, a sex, a small int): their whole
# map entry is built once per distinct value. Paths and ids are not cached (all distinct).
_REPEATED_BYTES = frozenset({IMAGE_FORMAT, IMAGE_VIEW, IMAGE_PROJECTION, PATIENT_SEX, SOURCE_DATASET})


@functools.lru_cache(maxsize=64)
def _key_order(keys: tuple[str, ...]) -> tuple[tuple[str, str, bool], ...]:
    """(key, kind, cacheable) in the serialized order (sorted by key) for a feature set."""
    return tuple((key, FEATURES[key][0], key in _REPEATED_BYTES or (FEATURES[key][0] == "int64"))
                 for key in sorted(keys))


@functools.lru_cache(maxsize=4096)
def _cached_entry(key: str, kind: str, value) -> bytes:
    """A whole map entry for a value that repeats (hashable: str, int or a tuple of ints)."""
    return b"".join(_entry(key, kind, value))


def _hashable(value):
    """``value`` as an lru_cache key: a str or a tuple of ints, or None when it is neither."""
    if isinstance(value, str):
        return value
    if isinstance(value, tuple) and all(type(v) is int for v in value):
        return value
    if isinstance(value, list) and len(value) == 1 and type(value[0]) is int:
        return (value[0],)
    return None


def _entries(features: dict) -> tuple[list, int]:
    """The serialized map entries of ``features`` in key order, as chunks, and their length."""
    chunks: list = []
    for key, kind, cacheable in _key_order(tuple(features)):
        value = features[key]
        hashable = _hashable(value) if cacheable else None
        if hashable is not None:
            chunks.append(_cached_entry(key, kind, hashable))
        else:
            chunks += _entry(key, kind, value)
    return chunks, sum(map(len, chunks))


def encode_parts(features: dict) -> tuple[list, int]:
    """``encode``'s bytes as a list of chunks and their total length, for a writer that
    frames and writes them without joining (the ~100 KB image is then never copied)."""
    return _example(*_entries(features))


def _example(chunks: list, size: int) -> tuple[list, int]:
    """An Example's chunks and length from its map entries' chunks and their length."""
    head = _ENTRY_TAG + _varint(size)  # Example.features = 1
    return [head, *chunks], len(head) + size


# image/encoded sorts before every other key, so its map entry comes first in a record and
# the rest of the record does not depend on the pixels (``encode_rest``, ``with_image``).
assert min(FEATURES) == IMAGE_ENCODED


def encode_rest(features: dict) -> bytes:
    """The map entries of every feature but ``image/encoded``, serialized: what follows the
    image in the record. A writer builds these for a whole shard before it decodes any image
    (cheaper in a tight loop than between decodes: BUILD_NOTES, issue 14).

    ``b"".join(with_image(encoded, encode_rest(f))[0]) == encode({**f, IMAGE_ENCODED: encoded})``.
    """
    if IMAGE_ENCODED in features:
        raise ValueError("encode_rest: features hold image/encoded")
    return b"".join(_entries(features)[0])


def with_image(encoded: bytes, rest: bytes) -> tuple[list, int]:
    """A record's chunks and length (as ``encode_parts``) from its image and ``encode_rest``."""
    chunks = _entry(IMAGE_ENCODED, "bytes", encoded)
    chunks.append(rest)
    return _example(chunks, sum(map(len, chunks)))


def encode(features: dict) -> bytes:
    """Serializes ``{key: value}`` (keys of ``FEATURES``) as a tf.train.Example.

    Map entries are sorted by key, as protobuf's deterministic serialization does, so equal
    records are equal bytes on every run. Float values are written as float32 (any shape,
    flattened); int64 values as varints (negative ones as 10-byte two's complement).
    """
    return b"".join(encode_parts(features)[0])


def to_example(row: chexpert.Row, **kwargs) -> bytes:
    """Builds the serialized record for one radiograph (the writer's side): the bytes of
    ``to_example_parts``, joined."""
    return b"".join(to_example_parts(row, **kwargs)[0])


def to_example_parts(row: chexpert.Row, *, encoded: bytes, **kwargs) -> tuple[list, int]:
    """Builds the serialized record for one radiograph (the writer's side), as chunks and
    their total length (``encode_parts``).

    Args:
        row: the validated CSV row.
        encoded: the image bytes in ``image_format``.
        **kwargs: the rest of the record, as ``record_rest`` takes it.

    Returns:
        A serialized ``tf.train.Example`` with every key in ``FEATURES`` (the ``OPTIONAL``
        ones only for external rows), as ``(chunks, length)``.
    """
    return with_image(encoded, record_rest(row, **kwargs))


def record_rest(
    row: chexpert.Row,
    *,
    image_format: str,
    height: int,
    width: int,
    draws: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    labeller: np.ndarray | None = None,
    dataset: str = "chexpert",
    source_labels: str = "",
) -> bytes:
    """Everything of a radiograph's record but its image (``encode_rest``): ``with_image``
    of this and the image bytes is ``to_example_parts``.

    Args:
        row: the validated CSV row.
        image_format: one of ``IMAGE_FORMATS``.
        height, width: pixel size of the stored image.
        draws: float32 (14,) from ``chexpert.draws_for``.
        targets, mask: float32 (14,) from ``chexpert.apply_policy``.
        labeller: float32 (14,) ``labels/teacher`` (None: all ``chexpert.NO_LABELLER_VALUE``).
        dataset: ``chexpert``, ``nih`` or ``mimic``; source_labels: the source's own labels
            (``source/labels``). Both written only when ``dataset`` is not ``chexpert``.
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format={image_format!r}; expected one of {IMAGE_FORMATS}")
    features = {
        IMAGE_FORMAT: image_format,
        IMAGE_HEIGHT: [height],
        IMAGE_WIDTH: [width],
        IMAGE_VIEW: row.view,
        IMAGE_PROJECTION: row.projection,
        SOURCE_PATH: row.path,
        PATIENT_ID: row.patient_id,
        PATIENT_SEX: row.sex,
        PATIENT_AGE: [row.age],
        STUDY_ID: row.study_id,
        LABELS_RAW: row.codes,
        LABELS_DRAW: draws,
        LABELS_TARGET: targets,
        LABELS_MASK: mask,
        LABELS_LABELLER: chexpert.no_labeller_values() if labeller is None else labeller,
        VERSION: [chexpert.SCHEMA_VERSION],
    }
    if dataset != "chexpert":
        features[SOURCE_DATASET] = dataset
        features[SOURCE_LABELS] = source_labels
    return encode_rest(features)
