"""NIH ChestX-ray14: its CSV, its 14 findings, their mapping to CheXpert's 14 observations,
and its official split.

The download (no real data is here; layout from the dataset's README)::

    Data_Entry_2017.csv         (Data_Entry_2017_v2020.csv in the current release; the
                                 5,606-image Kaggle sample ships sample_labels.csv)
    train_val_list.txt          the official split: one image name a line
    test_list.txt
    images_001/images/00000001_000.png ...   (1024x1024 PNGs, a few RGBA)

The CSV header, as the dataset ships it::

    Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,
    OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],

The two bracketed names hold a comma, unquoted, so a CSV reader sees
``OriginalImage[Width`` and ``Height]`` as two columns (and so the rows, which carry two
numbers there, line up), and some copies end the header, or the rows, with one more comma
(pandas' ``Unnamed: 11``). The sample's ``sample_labels.csv`` spells the four columns
``OriginalImageWidth, OriginalImageHeight, OriginalImagePixelSpacing_x,
OriginalImagePixelSpacing_y``. ``header_columns`` reads every spelling into those four names,
and ``external.cells_of`` pairs a row's cells with them, tolerant of the trailing comma.

``Finding Labels`` is a ``|``-separated list of findings, or ``No Finding``. NIH's labels
were mined from reports with no uncertain class: a finding not listed is absent, so each
CheXpert observation NIH labels is POSITIVE or NEGATIVE, and every other one is BLANK (masked
downstream: NIH says nothing about fractures, so it must not teach "no fracture").
``MAPPING`` is the table, one line per NIH label and per CheXpert observation.

Ages are whole years; old versions (and the sample) write them as DICOM age strings
(``058Y``; a few ``nnnM``/``nnnD`` for infants), read here as whole years; ages over 120 (a
handful of rows of the 2017 file, e.g. 414) are ``bad_age`` as in CheXpert.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from schemas import chexpert, external

DATASET = "nih"
# The file that marks an NIH folder: any of these holds the labels.
LABEL_FILES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv", "sample_labels.csv")
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
# The official split's names for its two parts (patient-disjoint by construction).
TRAIN_VAL, TEST = "train_val", "test"

# --- CSV layout -------------------------------------------------------------------------

COL_IMAGE = "Image Index"
COL_FINDINGS = "Finding Labels"
COL_FOLLOW_UP = "Follow-up #"
COL_PATIENT = "Patient ID"
COL_AGE = "Patient Age"
COL_SEX = "Patient Gender"
COL_VIEW = "View Position"
REQUIRED_COLUMNS = (COL_IMAGE, COL_FINDINGS, COL_FOLLOW_UP, COL_PATIENT, COL_AGE, COL_SEX, COL_VIEW)
# Informational columns, named as sample_labels.csv names them.
COL_WIDTH = "OriginalImageWidth"
COL_HEIGHT = "OriginalImageHeight"
COL_SPACING_X = "OriginalImagePixelSpacing_x"
COL_SPACING_Y = "OriginalImagePixelSpacing_y"
SIZE_COLUMNS = (COL_WIDTH, COL_HEIGHT, COL_SPACING_X, COL_SPACING_Y)
CSV_COLUMNS = REQUIRED_COLUMNS + SIZE_COLUMNS
# Data_Entry_2017.csv's spelling, whitespace removed: a bracketed pair the CSV splits in two,
# or (where a tool quoted it back together) one cell.
_SPILLED = {
    ("OriginalImage[Width", "Height]"): (COL_WIDTH, COL_HEIGHT),
    ("OriginalImagePixelSpacing[x", "y]"): (COL_SPACING_X, COL_SPACING_Y),
}
_JOINED = {"OriginalImage[Width,Height]": (COL_WIDTH, COL_HEIGHT),
           "OriginalImagePixelSpacing[x,y]": (COL_SPACING_X, COL_SPACING_Y)}

# --- Labels -------------------------------------------------------------------------------

NO_FINDING = "No Finding"
# The 14 findings in the order of the dataset's README.
FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
LABELS = FINDINGS + (NO_FINDING,)

# (NIH label, CheXpert observation): every NIH label and every CheXpert observation exactly
# once; None on one side means the other dataset has no counterpart. A CheXpert observation
# with no NIH label is BLANK in NIH rows; an NIH finding with no CheXpert observation is kept
# in the row's findings and sets no code. Mass and Nodule are kinds of CheXpert's Lung Lesion,
# and Infiltration overlaps Lung Opacity, but the absence of a mass says nothing of other
# lesions, so neither can give a certain negative: they stay unmapped.
MAPPING: tuple[tuple[str | None, str | None], ...] = (
    (NO_FINDING, "no_finding"),
    (None, "enlarged_cardiomediastinum"),
    ("Cardiomegaly", "cardiomegaly"),
    (None, "lung_opacity"),
    (None, "lung_lesion"),
    ("Edema", "edema"),
    ("Consolidation", "consolidation"),
    ("Pneumonia", "pneumonia"),
    ("Atelectasis", "atelectasis"),
    ("Pneumothorax", "pneumothorax"),
    ("Effusion", "pleural_effusion"),
    (None, "pleural_other"),
    (None, "fracture"),
    (None, "support_devices"),
    ("Infiltration", None),
    ("Mass", None),
    ("Nodule", None),
    ("Emphysema", None),
    ("Fibrosis", None),
    ("Pleural_Thickening", None),
    ("Hernia", None),
)
LABEL_TO_OBSERVATION: dict[str, str | None] = {label: slug for label, slug in MAPPING if label}
# The CheXpert observations an NIH row labels (POSITIVE or NEGATIVE), in CSV order.
LABELLED_OBSERVATIONS = tuple(s for s in chexpert.OBSERVATIONS if s in set(LABEL_TO_OBSERVATION.values()))
# Lower case, spaces as underscores: "Pleural Thickening" (as the paper writes it) is read too.
_LABEL_KEYS = {label.lower().replace(" ", "_"): label for label in LABELS}

_IMAGE_RE = re.compile(r"[^/]+\.(?:png|jpe?g)", re.IGNORECASE)
_ID_RE = re.compile(r"[0-9]+")
# DICOM age string (PS3.5 AS): digits and a unit; NIH's newer files drop the unit (years).
_AGE_RE = re.compile(r"([0-9]{1,3})(?:\.0*)?([YMWD]?)", re.IGNORECASE)
_DAYS_PER_UNIT = {"": 365, "Y": 365, "M": 365 / 12, "W": 7, "D": 1}
_SEXES = {"M": "Male", "F": "Female", "MALE": "Male", "FEMALE": "Female", "": "Unknown"}


def header_columns(fieldnames: Sequence[str] | None, source: str) -> tuple[str, ...]:
    """The column of each cell of a data row, from the header as the file has it.

    Reads ``OriginalImage[Width,Height]`` split in two by the CSV (the dataset as shipped),
    or in one cell, into ``OriginalImageWidth`` and ``OriginalImageHeight`` (likewise the
    pixel spacing), and a trailing empty cell into ``""``.

    Args:
        fieldnames: the header's cells.
        source: the file name, for the message.

    Returns:
        Column names by data-cell position, for ``external.cells_of``.

    Raises:
        chexpert.CsvHeaderError: a header without NIH's seven label columns, or with a
            column NIH does not have (naming each).
    """
    cells = [re.sub(r"\s+", "", c) if "[" in c or "]" in c else external.trim(c)
             for c in (f.lstrip("\ufeff") for f in (fieldnames or ()))]
    out: list[str] = []
    i = 0
    while i < len(cells):
        pair = tuple(cells[i:i + 2])
        if pair in _SPILLED:
            out += _SPILLED[pair]
            i += 2
        elif cells[i] in _JOINED:
            out += _JOINED[cells[i]]
            i += 1
        else:
            out.append(cells[i])
            i += 1
    external.check_columns(out if fieldnames else None, source, REQUIRED_COLUMNS, SIZE_COLUMNS)
    return tuple(out)


def parse_findings(text: str | None) -> tuple[str, ...]:
    """``Finding Labels`` as NIH label names, in the order of ``LABELS``, each once.

    Raises:
        chexpert.RowError: ``bad_label`` for an empty cell or item, a name that is not one of
            NIH's 15, or ``No Finding`` listed with a finding.
    """
    cell = external.trim(text)
    if not cell:
        raise chexpert.RowError("bad_label", f"column {COL_FINDINGS!r} is empty; NIH writes {NO_FINDING!r} "
                                             "for an image without findings")
    names = set()
    for item in cell.split("|"):
        name = _LABEL_KEYS.get(external.trim(item).lower().replace(" ", "_"))
        if name is None:
            raise chexpert.RowError("bad_label", f"column {COL_FINDINGS!r} has {item!r} in {text!r}; expected "
                                                 f"'|'-separated names of {', '.join(LABELS)}")
        names.add(name)
    if NO_FINDING in names and len(names) > 1:
        raise chexpert.RowError("bad_label", f"column {COL_FINDINGS!r} has {text!r}: {NO_FINDING!r} with findings")
    return tuple(n for n in LABELS if n in names)


def codes_for(findings: Sequence[str]) -> tuple[int, ...]:
    """The 14 CheXpert codes NIH labels imply: see ``MAPPING``.

    Args:
        findings: NIH label names (``parse_findings``).

    Returns:
        ``chexpert.Code`` values in ``chexpert.OBSERVATIONS`` order: POSITIVE for a mapped
        label present, NEGATIVE for a mapped label absent, BLANK where NIH has no label.
    """
    positive = {LABEL_TO_OBSERVATION[f] for f in findings}
    return tuple(
        int(chexpert.Code.POSITIVE if s in positive else chexpert.Code.NEGATIVE if s in LABELLED_OBSERVATIONS
            else chexpert.Code.BLANK)
        for s in chexpert.OBSERVATIONS)


def parse_age(text: str | None) -> int:
    """``Patient Age``: ``58`` or a DICOM age string (``058Y``, ``011M``, ``020D``), in whole years.

    Raises:
        chexpert.RowError: ``bad_age`` for anything else, or over 120 years.
    """
    m = _AGE_RE.fullmatch(external.trim(text))
    if not m:
        raise chexpert.RowError("bad_age", f"column {COL_AGE!r} has {text!r}; expected years (58) or a "
                                           "DICOM age (058Y, 011M, 003W, 020D)")
    years = int(int(m[1]) * _DAYS_PER_UNIT[m[2].upper()] // 365)
    if years > 120:
        raise chexpert.RowError("bad_age", f"column {COL_AGE!r} has {text!r}; expected whole years 0-120")
    return years


def _id(cells: Mapping[str, str | None], column: str) -> int:
    text = external.trim(cells.get(column))
    if not _ID_RE.fullmatch(text):
        raise chexpert.RowError(external.BAD_ID, f"column {column!r} has {cells.get(column)!r}; expected a "
                                                 "whole number in ASCII digits")
    return int(text)


def parse_row(cells: Mapping[str, str | None]) -> external.ExternalRow:
    """Validates one row of ``Data_Entry_2017.csv`` (or ``sample_labels.csv``).

    Args:
        cells: column -> cell text, keyed as ``header_columns`` names them
            (``external.cells_of``).

    Returns:
        An ``external.ExternalRow`` with ``dataset="nih"``.

    Raises:
        chexpert.RowError: with the first problem found: ``bad_path`` (an ``Image Index``
            that is not an image file name), ``bad_label``, ``bad_id`` (``Patient ID`` or
            ``Follow-up #``), ``bad_age``, ``bad_sex`` (not M or F), ``bad_view`` (not
            PA, AP, LL or RL).
    """
    path = chexpert.normalize_path(cells.get(COL_IMAGE) or "")
    if not _IMAGE_RE.fullmatch(path):
        raise chexpert.RowError("bad_path", f"column {COL_IMAGE!r} has {cells.get(COL_IMAGE)!r}; expected an "
                                            "image file name such as 00000001_000.png")
    findings = parse_findings(cells.get(COL_FINDINGS))
    follow_up = _id(cells, COL_FOLLOW_UP)
    patient = f"{_id(cells, COL_PATIENT):08d}"
    age = parse_age(cells.get(COL_AGE))
    sex = _SEXES.get(external.trim(cells.get(COL_SEX)).upper())
    if sex is None:
        raise chexpert.RowError("bad_sex", f"column {COL_SEX!r} has {cells.get(COL_SEX)!r}; expected M or F")
    projection = external.trim(cells.get(COL_VIEW)).upper()
    view = external.position_view(projection)
    if view == external.UNKNOWN:
        raise chexpert.RowError("bad_view", f"column {COL_VIEW!r} has {cells.get(COL_VIEW)!r}; expected PA or AP "
                                            "(or LL, RL)")
    return external.ExternalRow(
        dataset=DATASET, path=path, patient_id=patient, study_id=f"{patient}/{follow_up:03d}", sex=sex, age=age,
        view=view, projection=projection, codes=codes_for(findings), findings=findings)


# --- Official split -----------------------------------------------------------------------


def parse_image_list(text: str, source: str) -> frozenset[str]:
    """The image names of ``train_val_list.txt`` or ``test_list.txt``: one a line.

    Blank lines and surrounding whitespace (CRLF copies) are ignored.

    Raises:
        ValueError: naming the file and line of an entry that is not an image file name.
    """
    names = set()
    for number, line in enumerate(text.splitlines(), 1):
        name = external.trim(line)
        if not name:
            continue
        if not _IMAGE_RE.fullmatch(name) or chexpert._CONTROL_RE.search(name):
            raise ValueError(f"{source} line {number}: {line!r} is not an image file name such as 00000001_000.png")
        names.add(name)
    return frozenset(names)


def official_splits(train_val: frozenset[str], test: frozenset[str]) -> dict[str, str]:
    """Image name -> ``train_val`` or ``test``, from the two lists.

    Raises:
        ValueError: an image on both lists (naming the first few): the lists are not NIH's.
    """
    both = sorted(train_val & test)
    if both:
        raise ValueError(f"{len(both)} image(s) on both {TRAIN_VAL_LIST} and {TEST_LIST}: {', '.join(both[:5])}")
    return {**{n: TRAIN_VAL for n in train_val}, **{n: TEST for n in test}}
