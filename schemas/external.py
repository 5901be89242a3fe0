"""What the external datasets' rows become: one shape for NIH ChestX-ray14 and MIMIC-CXR-JPG.

``schemas.nih`` and ``schemas.mimic`` each read their dataset's own files into an
``ExternalRow``: the 14 CheXpert observation codes (``chexpert.Code``, in
``chexpert.OBSERVATIONS`` order) plus what the source said in its own words, so that the
records can keep the original labels and nothing is lost in the mapping. An observation a
dataset does not label is ``Code.BLANK`` there, and readers of external records must mask it
(``--blank=ignore``), never count it negative.

Bad rows raise ``chexpert.RowError`` with a reason, as CheXpert rows do; the reasons mean the
same across the three formats (``bad_path``, ``bad_label``, ``bad_age``, ``bad_sex``,
``bad_view``, ``bad_row``), plus ``bad_id`` (a patient, follow-up, subject or study id that
is not a number), ``no_labels`` (a MIMIC image whose study has no labels row) and
``bad_split`` (a MIMIC split cell that is not train, validate or test).
"""

from __future__ import annotations

import dataclasses
from typing import Collection, Sequence

from schemas import chexpert

FRONTAL, LATERAL, UNKNOWN = "frontal", "lateral", "unknown"
# DICOM ViewPosition terms (PS3.3 C.8.11.5.1.1) and MIMIC's spelled-out LATERAL. Decubitus
# (LLD/RLD), obliques (LAO, RAO, ...), "AP AXIAL" and blanks say nothing we can use.
POSITION_VIEWS = {"PA": FRONTAL, "AP": FRONTAL, "LL": LATERAL, "RL": LATERAL, "LATERAL": LATERAL}

BAD_ID = "bad_id"
NO_LABELS = "no_labels"
BAD_SPLIT = "bad_split"
BAD_ROW = "bad_row"  # as core.csv_reader's: a row with another number of cells than the header


@dataclasses.dataclass(frozen=True)
class ExternalRow:
    """One image of an external dataset, validated and mapped to CheXpert's observations.

    Attributes:
        dataset: ``nih`` or ``mimic``.
        path: the image's key, relative to the dataset folder: NIH's ``Image Index`` (a file
            name; the images sit in ``images_NNN/images/``, found by name), MIMIC's
            ``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg``.
        patient_id: NIH's ``Patient ID`` zero-padded to 8 digits (as in the image names);
            MIMIC's ``subject_id``. Patient-level splits hash it.
        study_id: the images taken together: NIH ``PATIENT/FOLLOWUP`` (``00000001/000``: NIH
            has one image per follow-up visit); MIMIC ``SUBJECT/STUDY``.
        sex: one of ``chexpert.SEXES`` (MIMIC-CXR-JPG's files carry none: ``Unknown``).
        age: whole years 0-120, or None where the dataset's files carry none (MIMIC).
        view: ``frontal``, ``lateral`` or ``unknown``.
        projection: the source's view position as written (``PA``, ``AP``, ``LATERAL``, ...).
        codes: 14 ``chexpert.Code`` values in ``chexpert.OBSERVATIONS`` order; ``BLANK`` for
            an observation the dataset does not label.
        findings: the source's own positive labels, in its spelling and its order: NIH's
            findings (``("Cardiomegaly", "Effusion")``, or ``("No Finding",)``), MIMIC's
            observation names labelled 1.0 (its other codes are ``codes`` unchanged).
    """

    dataset: str
    path: str
    patient_id: str
    study_id: str
    sex: str
    age: int | None
    view: str
    projection: str
    codes: tuple[int, ...]
    findings: tuple[str, ...]


def trim(text: str | None) -> str:
    """A cell trimmed of ASCII whitespace only (as ``schemas.chexpert`` trims)."""
    return (text or "").strip(chexpert._ASCII_SPACE)


def position_view(position: str) -> str:
    """``frontal``, ``lateral`` or ``unknown`` for a ViewPosition cell (case and spaces ignored)."""
    return POSITION_VIEWS.get(trim(position).upper(), UNKNOWN)


def check_columns(fieldnames: Sequence[str] | None, source: str, required: Sequence[str],
                  known: Collection[str] = (), *, allow_unknown: bool = False) -> None:
    """Fails fast on a CSV header that is not the format's.

    Args:
        fieldnames: the header's cells.
        source: the file name, for the message.
        required: columns that must be there.
        known: further columns that may be there.
        allow_unknown: accept columns in neither list (MIMIC's metadata grows between
            versions); empty trailing cells are accepted either way (a trailing comma).

    Raises:
        chexpert.CsvHeaderError: naming every missing, unknown and duplicate column.
    """
    chexpert.check_columns(fieldnames, source, required, known, allow_unknown=allow_unknown,
                           allow_trailing_empty=True, clean=lambda f: trim(f).lstrip("\ufeff"))


def cells_of(columns: Sequence[str], values: Sequence[str], source: str = "row") -> dict[str, str]:
    """One data row's cells by column, tolerant of a trailing empty cell on either side.

    Some copies of NIH's ``Data_Entry_2017.csv`` end the header with a comma and the rows
    without one, or the other way round; an empty cell past the last column, or a missing
    one, is that and nothing else.

    Args:
        columns: the column of each cell by position (``nih.header_columns``, or the header).
        values: the row's cells.
        source: names the row in the message.

    Raises:
        chexpert.RowError: ``bad_row`` for a row with a non-empty cell past the last column,
            or missing a named column.
    """
    named = len(columns)
    while named and not columns[named - 1]:
        named -= 1
    extra = [v for v in values[named:] if trim(v)]
    if extra or len(values) < named:
        raise chexpert.RowError(BAD_ROW, f"{source} has {len(values)} fields; the header names {named}")
    return {c: v for c, v in zip(columns[:named], values) if c}
