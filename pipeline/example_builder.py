"""One record from one CSV row: the row's image read, decoded, resized and encoded, its
labels mapped by the uncertainty policy, all as a serialized ``tf.train.Example`` (by the
TF-free encoder ``schemas.example``); and the label counts a shard's stats hold. Plain
functions: no Beam (but for a remote path, through ``core.storage``), no TensorFlow.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from core import fingerprint, imaging, storage
from pipeline.rows import ExternalRecordRow
from schemas import chexpert, sources
from schemas import example as example_lib


def read_image(path: str, name: str, real_folders: dict[str, str] | None = None) -> bytes:
    """The bytes of a row's image file (local, or any Beam filesystem): ``read_image_and_stat``
    without the stat."""
    return read_image_and_stat(path, name, real_folders)[0]


class ImageReadError(chexpert.RowError):
    """A row whose image file could not be read, with the file's ``core.fingerprint`` stat
    as the read found it (``file_stat``): a file that was briefly gone, empty or a FIFO
    while the job ran must not look unchanged to the next run."""

    def __init__(self, error: chexpert.RowError, file_stat: str):
        super().__init__(error.reason, error.detail)
        self.file_stat = file_stat


def read_image_and_stat(path: str, name: str, real_folders: dict[str, str] | None = None) -> tuple[bytes, str]:
    """The bytes of a row's image file (local, or any Beam filesystem), and its
    ``core.fingerprint.file_stat`` as it was when read.

    The stat is taken before the read, so a file changed during or after it has another stat
    now: the records index keeps this one (not the driver's, taken before the graph ran), and
    a later run rebuilds the record rather than keeping pixels of another version.

    Args:
        path: the file's full path.
        name: the row's Path, for messages.
        real_folders: see ``imaging.refuse_link_outside`` (a writer keeps one per shard).

    Raises:
        ImageReadError: ``missing_file``, ``unreadable_file``, or a link out of the input
            folder or a non-file (see ``core.imaging``), with the stat the read found.
    """
    if real_folders is not None:
        try:
            got = imaging.read_plain_file(path, name, real_folders)  # one lstat, one open, os.read
        except chexpert.RowError as e:  # a folder above the file links out of the dataset
            raise ImageReadError(e, fingerprint.file_stat(path)) from None
        if got is not None:
            return got[0], fingerprint.stat_text(got[1])
    stat = fingerprint.file_stat(path)
    try:
        imaging.refuse_link_outside(path, name, real_folders)
        imaging.refuse_non_file(path, name)
        try:
            return storage.read_bytes(path), stat
        except OSError as e:
            if not storage.exists(path):
                raise chexpert.RowError("missing_file", f"{name}: no such file under the input folder") from None
            raise chexpert.RowError("unreadable_file", f"{name}: {e}") from None
    except chexpert.RowError as e:
        raise ImageReadError(e, stat) from None


@dataclasses.dataclass(frozen=True)
class ExampleSettings:
    """What the writer needs to turn a row into a record."""

    image_size: int
    resize: str
    encoding: str
    table: np.ndarray  # float32 (14, 4, 4): chexpert.policy_matrix(...)
    seed: int


def labelled_mask(dataset: str) -> np.ndarray:
    """float32 (14,): 1 for the observations ``dataset`` labels (``schemas.sources.labelled``),
    0 for those it does not (BLANK in every one of its rows: never a target, whatever
    ``--blank`` says). All ones for CheXpert. ``schemas.example_tf.labelled_mask`` is the
    reader's twin."""
    labelled = set(sources.labelled(dataset))
    return np.array([s in labelled for s in chexpert.OBSERVATIONS], np.float32)


def build_example(
    row: chexpert.Row, data: bytes, settings: ExampleSettings, labeller: np.ndarray | None = None
) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Decodes, resizes and encodes one radiograph and builds its record.

    An external image (``pipeline.rows.ExternalRecordRow``) also gets ``source/dataset`` and
    ``source/labels``, and mask 0 where its dataset labels nothing (``labelled_mask``); a
    CheXpert row's record is what it always was. The writer does the same for a whole shard
    with ``shard_labels`` and ``example_parts``.

    Args:
        row: the validated row.
        data: the image file's bytes.
        settings: size, resize mode, encoding, policy table and seed.
        labeller: float32 (14,) the labeller's P(positive) for this row (``NO_LABELLER_VALUE`` where
            none), or None.

    Returns:
        ``(serialized Example, targets, mask)``; targets and mask are float32 (14,).

    Raises:
        chexpert.RowError: the image could not be decoded (see ``imaging.decode``).
    """
    draws, targets, mask = shard_labels([row], settings, [labeller])
    parts, _ = example_parts(row, data, settings, draws[0], targets[0], mask[0], labeller)
    return b"".join(parts), targets[0], mask[0]


def shard_labels(rows: list[chexpert.Row], settings: ExampleSettings,
                 labeller: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row's draws, targets and mask at once (one ``apply_policy`` for a shard: the
    same float32 arithmetic element by element as row by row, so the same values).

    Args:
        rows: n validated rows; labeller: n labeller vectors (float32 (14,)) or None each.

    Returns:
        ``(draws, targets, mask)``, float32 (n, 14) each.
    """
    n = len(rows)
    codes = np.array([row.codes for row in rows], np.int64).reshape(n, chexpert.NUM_OBSERVATIONS)
    draws = np.array([chexpert.draws_for(row.path, settings.seed) for row in rows],
                     np.float32).reshape(n, chexpert.NUM_OBSERVATIONS)
    soft = None
    if any(v is not None for v in labeller):
        soft = np.stack([chexpert.no_labeller_values() if v is None else np.asarray(v, np.float32) for v in labeller])
    targets, mask = chexpert.apply_policy(codes, draws, settings.table, soft)
    for i, row in enumerate(rows):
        if isinstance(row, ExternalRecordRow):
            mask[i] = mask[i] * labelled_mask(row.dataset)
    return draws, targets, mask


def example_parts(row: chexpert.Row, data: bytes, settings: ExampleSettings, draws: np.ndarray, targets: np.ndarray,
                  mask: np.ndarray, labeller: np.ndarray | None = None) -> tuple[list, int]:
    """One record's serialized Example as chunks and their total length
    (``schemas.example.encode_parts``), for ``core.tfrecord.write_record_parts``: the
    ``record_rest`` of the row with its ``encode_image``.

    Args:
        row, data, settings, labeller: as ``build_example`` takes them.
        draws, targets, mask: float32 (14,) each, the row's line of ``shard_labels``.

    Raises:
        chexpert.RowError: the image could not be decoded (see ``imaging.decode``).
    """
    encoded = encode_image(row, data, settings)
    return example_lib.with_image(encoded, record_rest(row, settings, draws, targets, mask, labeller))


def encode_image(row: chexpert.Row, data: bytes, settings: ExampleSettings) -> bytes:
    """An image file's bytes -> its record's ``image/encoded``: decoded, resized to
    ``settings.image_size`` square and encoded as ``settings.encoding``.

    Raises:
        chexpert.RowError: the image could not be decoded (see ``imaging.decode``).
    """
    pixels = imaging.preprocess(data, row.path, settings.image_size, settings.resize)
    # record_rest wrote the size before the image was decoded: resize always gives it.
    if pixels.shape != (settings.image_size, settings.image_size):
        raise AssertionError(f"{row.path}: resized to {pixels.shape}, not {settings.image_size} square")
    return imaging.encode(pixels, settings.encoding)


def record_rest(row: chexpert.Row, settings: ExampleSettings, draws: np.ndarray, targets: np.ndarray,
                mask: np.ndarray, labeller: np.ndarray | None = None) -> bytes:
    """Everything of a row's record but its image (``schemas.example.record_rest``), which
    needs no decoded pixels: the writer builds a shard's before it reads any image.

    Args:
        row, settings, labeller: as ``build_example`` takes them.
        draws, targets, mask: float32 (14,) each, the row's line of ``shard_labels``.
    """
    source = {}
    if isinstance(row, ExternalRecordRow):
        source = {"dataset": row.dataset, "source_labels": "|".join(row.findings)}
    return example_lib.record_rest(
        row,
        image_format=settings.encoding,
        height=settings.image_size,
        width=settings.image_size,
        draws=draws,
        targets=targets,
        mask=mask,
        labeller=labeller,
        **source,
    )


CODE_KEYS = {int(chexpert.Code.POSITIVE): "1", int(chexpert.Code.NEGATIVE): "0",
             int(chexpert.Code.UNCERTAIN): "-1", int(chexpert.Code.BLANK): "blank"}


def label_counts(codes, targets, mask) -> tuple[dict, dict]:
    """Per-observation counts of raw codes and of mapped-target buckets for many records.

    Args:
        codes: int (n, 14); targets, mask: float32 (n, 14).

    Returns:
        ``(raw, mapped)``: {slug: {key: count}}; raw keys are ``CODE_KEYS`` values, mapped keys
        ``masked``, ``0``, ``1``, ``2`` (class or hard target) or ``soft``.
    """
    n = chexpert.NUM_OBSERVATIONS
    codes = np.asarray(codes, np.int64).reshape(-1, n)
    targets = np.asarray(targets, np.float32).reshape(-1, n)
    mask = np.asarray(mask, np.float32).reshape(-1, n)
    hard = np.isin(targets, (0.0, 1.0, 2.0))
    buckets = np.where(mask == 0, "masked", np.where(hard, np.where(hard, targets, 0).astype(int).astype(str), "soft"))
    raw, mapped = {}, {}
    for i, slug in enumerate(chexpert.OBSERVATIONS):
        vals, counts = np.unique(codes[:, i], return_counts=True)
        raw[slug] = {CODE_KEYS[int(v)]: int(c) for v, c in zip(vals, counts)}
        vals, counts = np.unique(buckets[:, i], return_counts=True)
        mapped[slug] = {str(v): int(c) for v, c in zip(vals, counts)}
    return raw, mapped
