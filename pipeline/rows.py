"""A CSV row's place in the records: its split (by patient), its patient, its digest.

Plain functions, no Beam: ``pipeline.transforms`` applies them to every row.

    parse_csv_row   CsvRow -> (split, chexpert.Row), or RowError
    split_of        patient id -> train / holdout (stable hash); valid.csv -> valid
    guess_split     the split of a row that failed validation, where it can be told
    patient_of      a CheXpert path -> its patient folder
    row_digest      a row's cells -> a digest (a relabelled row is a changed row)

An NIH or MIMIC row (``core.datasets.DatasetRow``) takes the same place:

    official_split  the dataset's own split -> test / valid, or None (train/holdout by patient)
    no_split_detail why an image of a dataset that ships split files but lists it on none
                    is a ``no_split`` dead letter (None when it is on one, or there are none)
    external_split  its records split (the patient hash namespaced by the dataset)
    leak_reason     patient_in_test / patient_in_valid for an image whose patient has images
                    in a later split, else None
    record_row      DatasetRow -> ExternalRecordRow (what the writer takes)
    dataset_digest  its digest (a relabelled or re-split image is a changed row)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath

from core.csv_reader import CsvRow
from schemas import chexpert, mimic, nih


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


def dataset_folder(input_root: str, csv_path: str) -> str:
    """The dataset folder a CSV's Paths must lie in, relative to the input root
    (``CheXpert-v1.0-small``): the folder holding the CSV; "" when the CSV is in the root."""
    folder = posixpath.relpath(posixpath.dirname(csv_path.rstrip("/")), input_root.rstrip("/") or "/")
    return "" if folder in (".", "") or folder.startswith("..") else folder


def check_in_dataset_folder(path: str, folder: str, source: str) -> None:
    """Refuses a (normalized) Path outside the dataset folder that holds its CSV.

    Paths are relative to the folder above the dataset (``CheXpert-v1.0-small/train/...``),
    so a Path naming another first folder (``other/patient1/...``, a sibling
    ``CheXpert-v1.0-small-x/``, a link beside the dataset) would read files that are not the
    dataset's: the link check (``core.imaging.refuse_link_outside``) takes a Path's first
    folder as the dataset folder, so this must hold first.

    Raises:
        chexpert.RowError: ``bad_path``.
    """
    if folder and not path.startswith(folder + "/"):
        raise chexpert.RowError("bad_path", f"Path {path!r} is not in {folder}/, the dataset folder that holds "
                                f"{source}: only the dataset's own files are read")


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


# --- NIH ChestX-ray14 and MIMIC-CXR-JPG rows --------------------------------------------------

# The dataset's own split -> the records split it goes to; None = train/holdout by patient,
# as a CheXpert train.csv row. A split name not here (none exists: core.datasets checks
# them) would be an error.
OFFICIAL_SPLITS = {
    nih.DATASET: {nih.TRAIN_VAL: None, nih.TEST: "test"},
    mimic.DATASET: {"train": None, "validate": "valid", "test": "test"},
}
# Later splits win a patient: an image of a patient who also has images in a later split is
# a dead letter (``patient_in_<split>``), as train.csv rows of valid.csv's patients are.
_SPLIT_RANK = {None: 0, "valid": 1, "test": 2}
# An image of a dataset that ships split files but lists it on none of them (NIH: on neither
# list; MIMIC: no row in the split CSV): a dead letter, never guessed into train, since it
# may be a test patient's image whose line was lost.
NO_SPLIT = "no_split"
AGE_UNKNOWN = -1  # patient/age of a record whose source gives none (MIMIC-CXR-JPG)


@dataclasses.dataclass(frozen=True)
class ExternalRecordRow(chexpert.Row):
    """An NIH or MIMIC image as the writer takes it: a ``chexpert.Row`` (``path`` is the
    image's path relative to the dataset folder, the record key; ``age`` ``AGE_UNKNOWN``
    where the source has none; ``view`` may be ``unknown``), plus the source's name and
    its own labels (``source/dataset``, ``source/labels``).
    """

    dataset: str = "chexpert"
    findings: tuple[str, ...] = ()


def official_split(dataset: str, split: str | None) -> str | None:
    """The records split the dataset's own split sends an image to: ``test``, ``valid``,
    or None (NIH ``train_val``, MIMIC ``train``, or a dataset without split files:
    train/holdout by patient; an image on no list of a dataset with split files is a
    ``no_split`` dead letter first, ``no_split_detail``).

    Raises:
        ValueError: a split name the dataset does not have.
    """
    if split is None:
        return None
    try:
        return OFFICIAL_SPLITS[dataset][split]
    except KeyError:
        raise ValueError(f"{dataset}: unknown official split {split!r}") from None


def split_file_names(dataset) -> list[str]:
    """The names of a ``core.datasets.Dataset``'s split files that are there (NIH's two
    lists, MIMIC's split CSV)."""
    names = (nih.TRAIN_VAL_LIST, nih.TEST_LIST) + tuple(mimic.SPLIT_FILES)
    return [f.name for f in dataset.files if f.name in names]


def no_split_detail(dataset, split: str | None, image: str) -> str | None:
    """The dead letter's detail for an image that a dataset with split files lists on none
    of them (``split`` None where ``dataset.official_split``), else None.

    ``dataset``: a ``core.datasets.Dataset``; ``split``: the image's ``DatasetRow.split``.
    """
    if split is not None or not dataset.official_split:
        return None
    files = split_file_names(dataset)
    where = (f"on neither {' nor '.join(files)}" if dataset.format == nih.DATASET
             else f"no row in {', '.join(files)}")
    return (f"image {image}: {where}, so its official split is not known; kept out of the records rather than "
            "put in training (it may be an evaluation patient's image)")


def external_split(dataset: str, official: str | None, patient_id: str, holdout_fraction: float) -> str:
    """An external image's records split: its official one, else train/holdout by a stable
    hash of ``DATASET/PATIENT`` (an NIH patient 00001234 and a MIMIC subject of the same
    number are different people, so they draw separately; CheXpert's hash input, the bare
    ``patientNNNNN``, is unchanged)."""
    if official is not None:
        return official
    return split_of("train", f"{dataset}/{patient_id}", holdout_fraction)


def split_rank(split: str | None) -> int:
    """How late ``official_split``'s answer is: train/holdout 0, valid 1, test 2."""
    return _SPLIT_RANK[split]


def leak_reason(official: str | None, patient_split: str | None) -> str | None:
    """``patient_in_test``/``patient_in_valid`` when the patient's latest split
    (``patient_split``: the latest official split of any of its images) is later than this
    image's, else None: a patient's images never straddle training and evaluation."""
    if patient_split is not None and split_rank(official) < split_rank(patient_split):
        return f"patient_in_{patient_split}"
    return None


def record_row(image: str, row) -> ExternalRecordRow:
    """A ``core.datasets.DatasetRow``'s image and ``schemas.external.ExternalRow`` as the
    record's row (``age`` None -> ``AGE_UNKNOWN``)."""
    return ExternalRecordRow(
        path=image, patient_id=row.patient_id, study_id=row.study_id, sex=row.sex,
        age=AGE_UNKNOWN if row.age is None else row.age, view=row.view, projection=row.projection,
        codes=tuple(row.codes), dataset=row.dataset, findings=tuple(row.findings))


def dataset_digest(image: str, row, split: str | None) -> str:
    """A 128-bit digest of everything an external image's record is built from but its
    pixels: a relabelled study, a corrected age or a move to the test list is a changed row."""
    text = json.dumps([image, split, dataclasses.asdict(row)], sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def unmapped_findings(dataset: str, findings) -> list[str]:
    """The source's own labels that map to no CheXpert observation (NIH's Infiltration,
    Mass, Nodule, ...); MIMIC's are CheXpert's names, all mapped."""
    if dataset == nih.DATASET:
        return [f for f in findings if nih.LABEL_TO_OBSERVATION.get(f) is None]
    return [f for f in findings if f not in chexpert.NAME_TO_SLUG]
