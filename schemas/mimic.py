"""MIMIC-CXR-JPG 2.x: its three CSVs, the image path rule, and the join of an image with its
study's labels.

The download (no real data is here; layout from PhysioNet's page, which ships the CSVs
gzipped)::

    mimic-cxr-2.0.0-metadata.csv(.gz)   one row per image: dicom_id, subject_id, study_id,
                                        ViewPosition, Rows, Columns, StudyDate, ...
    mimic-cxr-2.0.0-chexpert.csv(.gz)   one row per STUDY: subject_id, study_id and the 14
                                        CheXpert observations, 1.0 / 0.0 / -1.0 / blank
    mimic-cxr-2.0.0-split.csv(.gz)      dicom_id, study_id, subject_id, split
                                        (train / validate / test)
    files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg

The labels come from the CheXpert labeler run on each study's report, so they are CheXpert's
codes unchanged (``chexpert.parse_label``) and every one of the 14 observations is labelled;
every image of a study shares its study's labels. ``mimic-cxr-2.0.0-negbio.csv`` has the same
columns and reads the same way. The files carry no sex or age (those are in MIMIC-IV).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Mapping

from schemas import chexpert, external

DATASET = "mimic"
_PREFIX = "mimic-cxr-2.0.0-"
# Each file as PhysioNet ships it (gzipped) and unpacked.
METADATA_FILES = (f"{_PREFIX}metadata.csv", f"{_PREFIX}metadata.csv.gz")
LABEL_FILES = (f"{_PREFIX}chexpert.csv", f"{_PREFIX}chexpert.csv.gz")
SPLIT_FILES = (f"{_PREFIX}split.csv", f"{_PREFIX}split.csv.gz")

COL_DICOM = "dicom_id"
COL_SUBJECT = "subject_id"
COL_STUDY = "study_id"
COL_VIEW = "ViewPosition"
COL_SPLIT = "split"
# The metadata file has a dozen more columns (Rows, Columns, StudyDate, ...), varying by
# version: only these are read, the rest are allowed.
METADATA_COLUMNS = (COL_DICOM, COL_SUBJECT, COL_STUDY, COL_VIEW)
LABEL_COLUMNS = (COL_SUBJECT, COL_STUDY) + chexpert.OBSERVATION_NAMES
SPLIT_COLUMNS = (COL_DICOM, COL_STUDY, COL_SUBJECT, COL_SPLIT)
SPLITS = ("train", "validate", "test")
# Every CheXpert observation is labelled (from the same labeler).
LABELLED_OBSERVATIONS = chexpert.OBSERVATIONS

_ID_RE = re.compile(r"[0-9]{2,}")  # the path rule needs two digits
_DICOM_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]*")


@dataclasses.dataclass(frozen=True)
class StudyLabels:
    """One row of the labels CSV: a study's 14 codes, shared by all its images.

    Attributes:
        subject_id: digits, e.g. ``10000032``.
        study_id: digits, e.g. ``50414267``.
        codes: 14 ``chexpert.Code`` values in ``chexpert.OBSERVATIONS`` order.
        findings: the CheXpert names labelled 1.0, in CSV order.
    """

    subject_id: str
    study_id: str
    codes: tuple[int, ...]
    findings: tuple[str, ...]


def check_metadata_header(fieldnames, source: str) -> None:
    """Raises ``chexpert.CsvHeaderError`` for a metadata CSV without its four key columns."""
    external.check_columns(fieldnames, source, METADATA_COLUMNS, allow_unknown=True)


def check_labels_header(fieldnames, source: str) -> None:
    """Raises ``chexpert.CsvHeaderError`` for a labels CSV that is not subject, study and the 14."""
    external.check_columns(fieldnames, source, LABEL_COLUMNS)


def check_split_header(fieldnames, source: str) -> None:
    """Raises ``chexpert.CsvHeaderError`` for a split CSV that is not dicom, study, subject, split."""
    external.check_columns(fieldnames, source, SPLIT_COLUMNS)


def _id(cells: Mapping[str, str | None], column: str) -> str:
    text = external.trim(cells.get(column))
    if not _ID_RE.fullmatch(text):
        raise chexpert.RowError(external.BAD_ID, f"column {column!r} has {cells.get(column)!r}; expected a "
                                                 "number of two or more ASCII digits")
    return text


def _dicom_id(cells: Mapping[str, str | None]) -> str:
    text = external.trim(cells.get(COL_DICOM))
    if not _DICOM_RE.fullmatch(text):
        raise chexpert.RowError("bad_path", f"column {COL_DICOM!r} has {cells.get(COL_DICOM)!r}; expected an id "
                                            "such as 02aa804e-bde0afdd-112c0b34-7bc16630-4e384014")
    return text


def image_path(subject_id: str, study_id: str, dicom_id: str) -> str:
    """``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg``, XX the subject id's first two digits."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


def parse_labels_row(cells: Mapping[str, str | None]) -> StudyLabels:
    """Validates one row of ``mimic-cxr-2.0.0-chexpert.csv``.

    Raises:
        chexpert.RowError: ``bad_id`` or ``bad_label`` (``chexpert.parse_label``'s).
    """
    subject, study = _id(cells, COL_SUBJECT), _id(cells, COL_STUDY)
    codes = tuple(int(chexpert.parse_label(cells.get(name), name)) for name in chexpert.OBSERVATION_NAMES)
    findings = tuple(n for n, c in zip(chexpert.OBSERVATION_NAMES, codes) if c == chexpert.Code.POSITIVE)
    return StudyLabels(subject, study, codes, findings)


def index_study_labels(labels: Iterable[StudyLabels]) -> tuple[dict[str, StudyLabels], list[StudyLabels]]:
    """The labels by study id, and every row after the first for a study (to dead-letter).

    MIMIC's study ids are unique across subjects, so the study id alone is the key;
    ``join_row`` checks the subject too.
    """
    index: dict[str, StudyLabels] = {}
    duplicates = []
    for row in labels:
        if row.study_id in index:
            duplicates.append(row)
        else:
            index[row.study_id] = row
    return index, duplicates


def parse_split_row(cells: Mapping[str, str | None]) -> tuple[str, str]:
    """``(dicom_id, split)`` from one row of ``mimic-cxr-2.0.0-split.csv``.

    Raises:
        chexpert.RowError: ``bad_path`` (dicom id), ``bad_id`` or ``bad_split``.
    """
    dicom = _dicom_id(cells)
    _id(cells, COL_SUBJECT)
    _id(cells, COL_STUDY)
    split = external.trim(cells.get(COL_SPLIT))
    if split not in SPLITS:
        raise chexpert.RowError(external.BAD_SPLIT, f"column {COL_SPLIT!r} has {cells.get(COL_SPLIT)!r}; expected "
                                                    f"{', '.join(SPLITS)}")
    return dicom, split


def join_row(cells: Mapping[str, str | None], labels: Mapping[str, StudyLabels]) -> external.ExternalRow:
    """One metadata row joined with its study's labels.

    Args:
        cells: column -> cell text of a ``mimic-cxr-2.0.0-metadata.csv`` row.
        labels: study id -> its labels (``index_study_labels``).

    Returns:
        An ``external.ExternalRow`` with ``dataset="mimic"``, sex ``Unknown`` and age None;
        view from ``ViewPosition`` (PA/AP frontal, LATERAL/LL lateral, anything else,
        blank included, ``unknown``: kept, for the reader to filter by view).

    Raises:
        chexpert.RowError: ``bad_path`` (dicom id), ``bad_id``, ``no_labels`` (the study has
            no labels row: the labeler found no findings or impression section in its
            report), or ``bad_id`` where the labels row names another subject.
    """
    dicom = _dicom_id(cells)
    subject, study = _id(cells, COL_SUBJECT), _id(cells, COL_STUDY)
    found = labels.get(study)
    if found is None:
        raise chexpert.RowError(external.NO_LABELS, f"study {study} (subject {subject}, image {dicom}) has no row "
                                                    f"in {LABEL_FILES[0]}")
    if found.subject_id != subject:
        raise chexpert.RowError(external.BAD_ID, f"image {dicom} has subject {subject}, but study {study}'s labels "
                                                 f"row has subject {found.subject_id}")
    projection = external.trim(cells.get(COL_VIEW)).upper()
    return external.ExternalRow(
        dataset=DATASET, path=image_path(subject, study, dicom), patient_id=subject, study_id=f"{subject}/{study}",
        sex="Unknown", age=None, view=external.position_view(projection), projection=projection,
        codes=found.codes, findings=found.findings)
