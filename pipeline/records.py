"""The records job's per-row work as plain functions (no Beam import).

Each step is unit-tested on its own; ``pipeline.build_records`` only wires them into Beam.

    read_csv_rows   CSV file -> (line number, column dict) or a reject
    parse_csv_row   column dict -> (split, Row), or RowError
    split_of        patient id -> train / holdout (stable hash)
    num_shards_for  rows in a split -> shard count
    shard_of        record key -> shard index (stable hash)
    build_example   Row + image bytes -> serialized tf.train.Example
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
from typing import IO, Iterator

import numpy as np

from pipeline import imaging
from schemas import chexpert
from schemas import example as example_lib

SPLITS = ("train", "holdout", "valid")
# Bytes per stored 320^2 image, before the Example's ~0.5 KB of labels and metadata; used
# only to pick a shard count before any image is read. PNG's ratio was measured on the
# synthetic set (BUILD_NOTES.md); real radiographs compress similarly within ~20%.
ENCODED_RATIO = {"raw": 1.0, "png": 0.65, "jpeg": 0.35}
# Fewer rows than this per shard and a hash split could leave a shard empty.
MIN_ROWS_PER_SHARD = 64


@dataclasses.dataclass(frozen=True)
class Reject:
    """A row that did not become a record: the dead-letter output's element."""

    source: str  # the CSV file name, e.g. "train.csv"
    row: int  # 1-based line number in that file (the header is line 1)
    path: str  # the CSV's Path cell, as written
    split: str | None  # the split it would have gone to, when that was known
    reason: str  # RowError.reason
    detail: str  # RowError.detail

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CsvRow:
    """One data line of a CSV, before validation."""

    source: str
    line: int
    cells: dict


def iter_lines(f: IO[bytes]) -> Iterator[tuple[int, str | None, bytes]]:
    """Yields ``(line number, text or None if not UTF-8, raw bytes)`` for non-blank lines.

    One line at a time and undecodable lines reported, not fatal: a single stray byte in a
    224k-row CSV must cost one row, not the job. The header is line 1.
    """
    for number, raw in enumerate(f, start=1):
        raw = raw.rstrip(b"\r\n")
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # UTF-8 byte-order mark from spreadsheet exports
        if not raw.strip():
            continue
        try:
            yield number, raw.decode("utf-8"), raw
        except UnicodeDecodeError:
            yield number, None, raw


def read_header(lines: Iterator[tuple[int, str | None, bytes]], source: str) -> list[str]:
    """Reads and checks the header from ``iter_lines``; raises ``chexpert.CsvHeaderError``."""
    for number, text, _ in lines:
        if text is None:
            raise chexpert.CsvHeaderError(f"{source}: header line {number} is not UTF-8")
        header = [c.strip() for c in next(csv.reader([text]))]
        chexpert.check_header(header, source)
        return header
    chexpert.check_header(None, source)
    return []


def read_csv_rows(f: IO[bytes], source: str) -> Iterator[CsvRow | Reject]:
    """Every data line of a CheXpert CSV as a ``CsvRow``, or a ``Reject`` for lines that
    are not UTF-8 or have the wrong number of fields.

    Raises:
        chexpert.CsvHeaderError: before any row, for a header that is not CheXpert's.
    """
    lines = iter_lines(f)  # one iterator, so line numbers continue after the header
    header = read_header(lines, source)
    for number, text, raw in lines:
        if text is None:
            yield Reject(source, number, raw[:200].decode("utf-8", "replace"), None, "bad_encoding",
                         f"{source} line {number} is not valid UTF-8")
            continue
        cells = next(csv.reader([text]))
        if len(cells) != len(header):
            yield Reject(source, number, cells[0] if cells else "", None, "bad_row",
                         f"{source} line {number} has {len(cells)} fields; the header has {len(header)}")
            continue
        yield CsvRow(source, number, dict(zip(header, cells)))


def count_data_rows(f: IO[bytes]) -> int:
    """The number of rows ``read_csv_rows`` will yield (rows + rejects) for the same file."""
    return max(sum(1 for _ in iter_lines(f)) - 1, 0)


def split_of(source_split: str, patient_id: str, holdout_fraction: float) -> str:
    """The split of a record: ``valid`` for valid.csv; for train.csv, ``holdout`` for a
    stable, patient-level ``holdout_fraction`` of patients and ``train`` for the rest.

    A patient's images all share one split, on every run and runner, because the only
    input is the patient id.
    """
    if source_split == "valid":
        return "valid"
    if holdout_fraction > 0 and chexpert.stable_fraction("holdout:" + patient_id) < holdout_fraction:
        return "holdout"
    return "train"


def parse_csv_row(row: CsvRow, source_split: str, holdout_fraction: float) -> tuple[str, chexpert.Row]:
    """Validates a CSV row and assigns its split.

    Raises:
        chexpert.RowError: see ``chexpert.parse_row``.
    """
    parsed = chexpert.parse_row(row.cells)
    return split_of(source_split, parsed.patient_id, holdout_fraction), parsed


def patient_of(path: str) -> str | None:
    """The patient folder a (normalized) CheXpert path names, e.g. ``patient00001``."""
    parts = [p for p in path.split("/") if p.startswith("patient")]
    return parts[0] if parts else None


def guess_split(row: CsvRow, source_split: str, holdout_fraction: float) -> str | None:
    """The split of a row that failed validation, where its path still names a patient."""
    try:
        path = chexpert.normalize_path(row.cells.get(chexpert.COL_PATH) or "")
    except chexpert.RowError:
        return None
    patient = patient_of(path)
    return split_of(source_split, patient, holdout_fraction) if patient else None


def num_shards_for(rows: int, *, image_size: int, encoding: str, shard_size_mb: float, min_shards: int,
                   fixed: int = 0) -> int:
    """How many shards a split of ``rows`` records gets.

    ``fixed`` (``--num_shards``) wins. Otherwise enough shards to keep each near
    ``shard_size_mb``, at least ``min_shards`` so that several workers write in parallel,
    but never so many that a shard expects fewer than MIN_ROWS_PER_SHARD rows (a hash split
    could then leave one empty).
    """
    if rows <= 0:
        return 0
    if fixed:
        return fixed
    est = rows * (image_size * image_size * ENCODED_RATIO[encoding] + 600)
    n = max(math.ceil(est / (shard_size_mb * 2**20)), min_shards)
    return max(1, min(n, rows // MIN_ROWS_PER_SHARD))


def shard_of(key: str, num_shards: int) -> int:
    """A record's shard: a stable hash of its key (its Path), independent of input order."""
    return int.from_bytes(hashlib.sha256(("shard:" + key).encode()).digest()[:8], "big") % num_shards


def shard_name(split: str, index: int, num_shards: int, tag: str = "") -> str:
    """``train-00003-of-00008.tfrecord``; an incremental run's shards carry its tag:
    ``train-u20261125T182300-00000-of-00001.tfrecord``."""
    return f"{split}-{tag + '-' if tag else ''}{index:05d}-of-{num_shards:05d}.tfrecord"


def row_digest(cells: dict) -> str:
    """A 128-bit digest of a CSV row's cells in header order: a relabelled row is a changed row."""
    return hashlib.blake2b("\x1f".join(cells.values()).encode(), digest_size=16).hexdigest()


INDEX_COLUMNS = ("path", "stat", "row", "split", "shard", "codes", "view", "teacher")


def write_index(index: dict[str, dict]) -> bytes:
    """The committed records' index as TSV (5x faster to read back than JSON lines at 225k
    rows): one line per record, sorted by path; ``codes`` comma-separated; ``teacher`` the
    record's ``labels/teacher`` (14 comma-separated float32 values, exact) or empty."""
    lines = ["\t".join(INDEX_COLUMNS)]
    for path in sorted(index):
        e = index[path]
        teacher = e.get("teacher")
        lines.append("\t".join([path, e["stat"], e["row"], e["split"], e["shard"],
                                ",".join(map(str, e["codes"])), e["view"],
                                ",".join(repr(float(v)) for v in teacher) if teacher is not None else ""]))
    return ("\n".join(lines) + "\n").encode()


def read_index(data: bytes) -> dict[str, dict]:
    """Inverse of ``write_index``: path -> entry (codes a list of ints; teacher a list of
    floats or None)."""
    lines = data.decode().splitlines()
    if not lines or tuple(lines[0].split("\t")) != INDEX_COLUMNS:
        raise ValueError("not a records index (unexpected header)")
    out = {}
    for line in lines[1:]:
        path, stat, row, split, shard, codes, view, teacher = line.split("\t")
        out[path] = {"stat": stat, "row": row, "split": split, "shard": shard,
                     "codes": [int(c) for c in codes.split(",")], "view": view,
                     "teacher": [float(v) for v in teacher.split(",")] if teacher else None}
    return out


@dataclasses.dataclass(frozen=True)
class ExampleSettings:
    """What the writer needs to turn a row into a record."""

    image_size: int
    resize: str
    encoding: str
    table: np.ndarray  # float32 (14, 4, 4): chexpert.policy_matrix(...)
    seed: int


def build_example(
    row: chexpert.Row, data: bytes, settings: ExampleSettings, teacher: np.ndarray | None = None
) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Decodes, resizes and encodes one radiograph and builds its record.

    Args:
        row: the validated row.
        data: the image file's bytes.
        settings: size, resize mode, encoding, policy table and seed.
        teacher: float32 (14,) the teacher's P(positive) for this row (``NO_TEACHER`` where
            none), or None.

    Returns:
        ``(serialized Example, targets, mask)``; targets and mask are float32 (14,).

    Raises:
        chexpert.RowError: the image could not be decoded (see ``imaging.decode``).
    """
    pixels = imaging.preprocess(data, row.path, settings.image_size, settings.resize)
    draws = chexpert.draws_for(row.path, settings.seed)
    targets, mask = chexpert.apply_policy(np.asarray(row.codes), draws, settings.table, teacher)
    serialized = example_lib.to_example(
        row,
        encoded=imaging.encode(pixels, settings.encoding),
        image_format=settings.encoding,
        height=pixels.shape[0],
        width=pixels.shape[1],
        draws=draws,
        targets=targets,
        mask=mask,
        teacher=teacher,
    )
    return serialized, targets, mask


CODE_KEYS = {int(chexpert.Code.POSITIVE): "1", int(chexpert.Code.NEGATIVE): "0",
             int(chexpert.Code.UNCERTAIN): "-1", int(chexpert.Code.BLANK): "blank"}


def empty_counts() -> dict:
    return {slug: {} for slug in chexpert.OBSERVATIONS}


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


def merge_counts(into: dict, other: dict) -> None:
    for slug, counts in other.items():
        for k, v in counts.items():
            into.setdefault(slug, {})[k] = into.setdefault(slug, {}).get(k, 0) + v
