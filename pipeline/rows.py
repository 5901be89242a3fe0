"""A CSV row's place in the records: its split (by patient), its patient, its digest.

Plain functions, no Beam: ``pipeline.transforms`` applies them to every row.

    parse_csv_row   CsvRow -> (split, chexpert.Row), or RowError
    split_of        patient id -> train / holdout (stable hash); valid.csv -> valid
    guess_split     the split of a row that failed validation, where it can be told
    patient_of      a CheXpert path -> its patient folder
    row_digest      a row's cells -> a digest (a relabelled row is a changed row)
"""

from __future__ import annotations

import hashlib

from core.csv_reader import CsvRow
from schemas import chexpert


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


def row_digest(cells: dict) -> str:
    """A 128-bit digest of a CSV row's cells in header order: a relabelled row is a changed row."""
    return hashlib.blake2b("\x1f".join(cells.values()).encode(), digest_size=16).hexdigest()
