"""Tiny NIH ChestX-ray14 and MIMIC-CXR-JPG folders written row by row, for tests that must
know every label (``pipeline.make_external`` draws its labels at random; these are fixed).

TF- and Beam-free. Images are small PNGs (NIH, one of them RGBA as a few real ones are) and
JPEGs (MIMIC) of a gradient whose brightness differs per image, so that a model's outputs
differ between them.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from schemas import chexpert

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")

# (image, findings, follow-up, patient, age, sex, view, list): the test list holds patients
# 1-6, train_val patients 7-8. In the test split: atelectasis and effusion both have
# positives and negatives; cardiomegaly has no positive (only train_val has one).
NIH_ROWS = [
    ("00000001_000.png", "Atelectasis", 0, 1, "058Y", "M", "PA", "test"),
    ("00000001_001.png", "No Finding", 1, 1, "058Y", "M", "AP", "test"),
    ("00000002_000.png", "Effusion|Atelectasis", 0, 2, "61", "F", "PA", "test"),
    ("00000003_000.png", "No Finding", 0, 3, "40", "F", "PA", "test"),
    ("00000004_000.png", "Effusion", 0, 4, "033Y", "M", "AP", "test"),
    ("00000005_000.png", "Mass", 0, 5, "70", "F", "PA", "test"),
    ("00000005_001.png", "Atelectasis|Infiltration", 1, 5, "70", "F", "PA", "test"),
    ("00000006_000.png", "No Finding", 0, 6, "414", "M", "PA", "test"),  # bad age: a dead letter
    ("00000006_001.png", "Effusion", 1, 6, "45", "M", "PA", "test"),  # no image file: missing_file
    ("00000007_000.png", "Cardiomegaly", 0, 7, "50", "M", "PA", "train_val"),
    ("00000008_000.png", "No Finding", 0, 8, "52", "F", "PA", "train_val"),
]
NIH_MISSING = "00000006_001.png"
NIH_BAD = "00000006_000.png"
NIH_RGBA = "00000002_000.png"


def gradient(size: int, level: int) -> np.ndarray:
    """uint8 (size, size): a diagonal gradient brightened by ``level``."""
    y, x = np.mgrid[0:size, 0:size]
    return np.clip((x + y) * (127 / max(1, size - 1)) + level, 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray, rgba: bool = False) -> bytes:
    image = Image.fromarray(pixels, "L")
    buf = io.BytesIO()
    (image.convert("RGBA") if rgba else image).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _write(path: str, data: bytes | str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def write_nih(root: str, size: int = 40, lists: bool = True) -> str:
    """``root/ChestX-ray14`` with ``NIH_ROWS`` (images in ``images_001/images``); returns it."""
    folder = os.path.join(root, "ChestX-ray14")
    lines = [NIH_HEADER]
    for i, (name, findings, follow, patient, age, sex, view, _) in enumerate(NIH_ROWS):
        lines.append(f"{name},{findings},{follow},{patient},{age},{sex},{view},1024,1024,0.143,0.143")
        if name != NIH_MISSING:
            _write(os.path.join(folder, "images_001", "images", name),
                   png_bytes(gradient(size, 9 * i), rgba=name == NIH_RGBA))
    _write(os.path.join(folder, "Data_Entry_2017.csv"), "\n".join(lines) + "\n")
    if lists:
        for split, file in (("train_val", "train_val_list.txt"), ("test", "test_list.txt")):
            _write(os.path.join(folder, file), "".join(f"{r[0]}\n" for r in NIH_ROWS if r[7] == split))
    return folder


# MIMIC: (subject, study, [(dicom_id, ViewPosition)], {observation slug: label cell}, split).
# Study 50000001 has two frontals and a lateral; 50000004 only a lateral (no frontal: left out
# with --views frontal); 50000003's atelectasis is blank (not mentioned: negative, as CheXpert);
# 50000005's pleural effusion is uncertain (left out of that task).
MIMIC_STUDIES = [
    (10000001, 50000001, [("d1a", "PA"), ("d1b", "AP"), ("d1c", "LATERAL")],
     {"atelectasis": "1.0", "edema": "0.0", "no_finding": ""}, "test"),
    (10000001, 50000002, [("d2a", "PA")], {"atelectasis": "0.0", "edema": "1.0"}, "test"),
    (10000002, 50000003, [("d3a", "AP"), ("d3b", "LL")], {"edema": "-1.0", "pleural_effusion": "1.0"}, "test"),
    (10000003, 50000004, [("d4a", "LATERAL")], {"atelectasis": "1.0"}, "test"),
    (10000003, 50000005, [("d5a", "PA"), ("d5b", "PA")], {"atelectasis": "1.0", "pleural_effusion": "-1.0"},
     "test"),
    (10000004, 50000006, [("d6a", "PA")], {"atelectasis": "0.0", "edema": "0.0", "no_finding": "1.0"}, "test"),
    (10000005, 50000007, [("d7a", "PA")], {"atelectasis": "1.0"}, "train"),
]


def mimic_image(subject: int, study: int, dicom: str) -> str:
    return f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"


def write_mimic(root: str, size: int = 40) -> str:
    """``root/mimic-cxr-jpg`` with ``MIMIC_STUDIES`` (metadata, labels, split); returns it."""
    folder = os.path.join(root, "mimic-cxr-jpg")
    meta = ["dicom_id,subject_id,study_id,ViewPosition"]
    labels = ["subject_id,study_id," + ",".join(chexpert.OBSERVATION_NAMES)]
    split = ["dicom_id,study_id,subject_id,split"]
    k = 0
    for subject, study, images, cells, part in MIMIC_STUDIES:
        labels.append(f"{subject},{study}," + ",".join(cells.get(s, "") for s in chexpert.OBSERVATIONS))
        for dicom, position in images:
            meta.append(f"{dicom},{subject},{study},{position}")
            split.append(f"{dicom},{study},{subject},{part}")
            _write(os.path.join(folder, mimic_image(subject, study, dicom)), jpeg_bytes(gradient(size, 11 * k)))
            k += 1
    for name, rows in (("mimic-cxr-2.0.0-metadata.csv", meta), ("mimic-cxr-2.0.0-chexpert.csv", labels),
                       ("mimic-cxr-2.0.0-split.csv", split)):
        _write(os.path.join(folder, name), "\n".join(rows) + "\n")
    return folder
