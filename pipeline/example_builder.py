"""One record from one CSV row: the row's image read, decoded, resized and encoded, its
labels mapped by the uncertainty policy, all as a serialized ``tf.train.Example`` (by the
TF-free encoder ``schemas.example``); and the label counts a shard's stats hold. Plain
functions: no Beam (but for a remote path, through ``core.storage``), no TensorFlow.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from core import imaging, storage
from pipeline.rows import ExternalRecordRow
from schemas import chexpert, sources
from schemas import example as example_lib


def read_image(path: str, name: str, real_folders: dict[str, str] | None = None) -> bytes:
    """The bytes of a row's image file (local, or any Beam filesystem).

    Args:
        path: the file's full path.
        name: the row's Path, for messages.
        real_folders: see ``imaging.refuse_link_outside`` (a writer keeps one per shard).

    Raises:
        chexpert.RowError: ``missing_file``, ``unreadable_file``, or a link out of the input
            folder or a non-file (see ``core.imaging``).
    """
    imaging.refuse_link_outside(path, name, real_folders)
    imaging.refuse_non_file(path, name)
    try:
        return storage.read_bytes(path)
    except OSError as e:
        if not storage.exists(path):
            raise chexpert.RowError("missing_file", f"{name}: no such file under the input folder") from None
        raise chexpert.RowError("unreadable_file", f"{name}: {e}") from None


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

    An external image (``pipeline.rows.ExternalRecordRow``) also gets ``source/dataset`` and ``source/labels``, and mask 0 where its dataset labels
    nothing (``labelled_mask``); a CheXpert row's record is what it always was.

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
    pixels = imaging.preprocess(data, row.path, settings.image_size, settings.resize)
    draws = chexpert.draws_for(row.path, settings.seed)
    targets, mask = chexpert.apply_policy(np.asarray(row.codes), draws, settings.table, labeller)
    source = {}
    if isinstance(row, ExternalRecordRow):
        mask = mask * labelled_mask(row.dataset)
        source = {"dataset": row.dataset, "source_labels": "|".join(row.findings)}
    serialized = example_lib.to_example(
        row,
        encoded=imaging.encode(pixels, settings.encoding),
        image_format=settings.encoding,
        height=pixels.shape[0],
        width=pixels.shape[1],
        draws=draws,
        targets=targets,
        mask=mask,
        labeller=labeller,
        **source,
    )
    return serialized, targets, mask


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
