"""Tiny NIH ChestX-ray14 and MIMIC-CXR-JPG folders made in code for the records job's tests,
each with the bad rows a reconciliation must account for. Plain files, no Beam, no TF.

Every row is described in ``NIH_ROWS`` / ``MIMIC_ROWS`` with what the records job must do
with it (its split, or the dead letter's reason), so the tests assert against this table
and not against the job's own output.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from tests import images

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")

# (image, findings, follow-up, patient, age, sex, view, list, expected): list is the official
# split list the image is on ("train_val", "test", or None: on neither, a no_split dead
# letter); expected is "train" (train or holdout by patient hash), "test", or a dead letter's reason.
NIH_ROWS = [
    ("00000001_000.png", "Cardiomegaly|Effusion", 0, 1, "058Y", "M", "PA", "train_val", "train"),
    ("00000001_001.png", "No Finding", 1, 1, "059Y", "M", "AP", "train_val", "train"),
    ("00000002_000.png", "Infiltration|Mass", 0, 2, "41", "F", "PA", "train_val", "train"),
    ("00000002_001.png", "Atelectasis", 1, 2, "41", "F", "LL", "train_val", "train"),
    ("00000003_000.png", "Pneumothorax|Nodule", 0, 3, "030Y", "F", "PA", None, "no_split"),
    ("00000004_000.png", "Edema", 0, 4, "070Y", "M", "AP", "train_val", "patient_in_test"),
    ("00000004_001.png", "Consolidation|Pneumonia", 1, 4, "070Y", "M", "AP", "test", "test"),
    ("00000005_000.png", "No Finding", 0, 5, "022Y", "F", "PA", "test", "test"),
    ("00000005_001.png", "Effusion|Hernia", 1, 5, "023Y", "F", "PA", "test", "test"),
    ("00000006_000.png", "No Finding", 0, 6, "414", "M", "PA", "train_val", "bad_age"),
    ("00000007_000.png", "Emphysema", 0, 7, "60", "M", "PA", "train_val", "missing_file"),
    ("00000008_000.png", "No Finding", 0, "8x", "33", "F", "PA", "train_val", "bad_id"),
    ("00000001_000.png", "Cardiomegaly", 0, 1, "058Y", "M", "PA", "train_val", "duplicate_path"),
]
NIH_RGBA = "00000002_000.png"  # NIH ships a few RGBA PNGs


def make_nih(folder: str, size: int = 40) -> str:
    """An NIH folder: ``Data_Entry_2017.csv`` (its shipped header, ``058Y`` ages), both split
    lists, PNGs in ``images_001/images/`` (``00000007_000.png`` missing, one RGBA)."""
    os.makedirs(os.path.join(folder, "images_001", "images"), exist_ok=True)
    lines = [NIH_HEADER]
    lists: dict[str, list[str]] = {"train_val": [], "test": []}
    for i, (name, findings, follow, patient, age, sex, view, on, _) in enumerate(NIH_ROWS):
        lines.append(f"{name},{findings},{follow},{patient},{age},{sex},{view},2500,2048,0.143,0.143,")
        if on and name not in lists[on]:
            lists[on].append(name)
        path = os.path.join(folder, "images_001", "images", name)
        if name == "00000007_000.png" or os.path.exists(path):
            continue
        pixels = (images.gradient(size, size) + 17 * i).astype(np.uint8)
        if name == NIH_RGBA:
            pixels = np.dstack([pixels, pixels, pixels, np.full_like(pixels, 255)])
        with open(path, "wb") as f:
            f.write(images.png_bytes(pixels))
    with open(os.path.join(folder, "Data_Entry_2017.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    for on, names in lists.items():
        with open(os.path.join(folder, f"{on}_list.txt"), "w") as f:
            f.write("\n".join(names) + "\n")
    return folder


def nih_expected() -> dict[int, tuple[str, str]]:
    """{CSV line: (image name, expected split or reason)} (the header is line 1)."""
    return {i + 2: (r[0], r[-1]) for i, r in enumerate(NIH_ROWS)}


# (dicom, subject, study, view, split, expected); labels per study in MIMIC_LABELS.
MIMIC_ROWS = [
    ("d1a", "10000001", "50000001", "PA", "train", "train"),
    ("d1b", "10000001", "50000001", "LATERAL", "train", "train"),
    ("d2a", "10000002", "50000002", "AP", "validate", "valid"),
    ("d3a", "10000003", "50000003", "AP AXIAL", "test", "test"),
    ("d3b", "10000003", "50000004", "PA", "test", "test"),
    ("d4a", "10000004", "50000005", "PA", "train", "no_labels"),
    ("d5a", "10000005", "50000006", "PA", "train", "train"),
    # A test patient's image whose split row is missing: its own dead letter, not a train
    # image (nor a patient_in_test one).
    ("d3c", "10000003", "50000004", "LATERAL", None, "no_split"),
]
# study -> {CheXpert column: cell}; 50000005 has no labels row (its image is a no_labels dead letter).
MIMIC_LABELS = {
    "50000001": {"Cardiomegaly": "1.0", "Edema": "-1.0", "Support Devices": "1.0", "Pleural Effusion": "0.0"},
    "50000002": {"No Finding": "1.0"},
    "50000003": {"Pneumonia": "-1.0", "Lung Opacity": "1.0"},
    "50000004": {"Fracture": "1.0"},
    "50000006": {"Atelectasis": "1.0", "Pneumothorax": "0.0"},
}
OBSERVATION_NAMES = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                     "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                     "Pleural Other", "Fracture", "Support Devices")


def mimic_image(dicom: str, subject: str, study: str) -> str:
    return f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"


def make_mimic(folder: str, size: int = 40) -> str:
    """A MIMIC-CXR-JPG folder: gzipped metadata (as PhysioNet ships it), labels per study
    (one study without a row), split CSV, JPEGs under ``files/``."""
    os.makedirs(folder, exist_ok=True)
    meta = ["dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns"]
    split = ["dicom_id,study_id,subject_id,split"]
    for i, (dicom, subject, study, view, sp, _) in enumerate(MIMIC_ROWS):
        meta.append(f"{dicom},{subject},{study},CHEST (PA AND LAT),{view},{size},{size}")
        if sp:
            split.append(f"{dicom},{study},{subject},{sp}")
        path = os.path.join(folder, mimic_image(dicom, subject, study))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(images.jpeg_bytes((images.gradient(size, size) + 23 * i).astype(np.uint8)))
    labels = ["subject_id,study_id," + ",".join(OBSERVATION_NAMES)]
    subject_of = {study: subject for _, subject, study, *_ in MIMIC_ROWS}
    for study, cells in MIMIC_LABELS.items():
        labels.append(f"{subject_of[study]},{study}," + ",".join(cells.get(n, "") for n in OBSERVATION_NAMES))
    with gzip.open(os.path.join(folder, "mimic-cxr-2.0.0-metadata.csv.gz"), "wb") as f:
        f.write(("\n".join(meta) + "\n").encode())
    with open(os.path.join(folder, "mimic-cxr-2.0.0-chexpert.csv"), "w") as f:
        f.write("\n".join(labels) + "\n")
    with open(os.path.join(folder, "mimic-cxr-2.0.0-split.csv"), "w") as f:
        f.write("\n".join(split) + "\n")
    return folder
