"""trainer.predict on NIH and MIMIC folders: RGBA PNGs read as gray, MIMIC's study folders."""

from __future__ import annotations

import csv
import os

from PIL import Image

from serving import job as job_lib
from tests import external_folders as ef
from trainer import predict


def test_nih_pngs_rgba_included_score_per_image_and_as_their_gray_copies(trained_job, tmp_path):
    folder = ef.write_nih(str(tmp_path / "nih"))
    images = os.path.join(folder, "images_001", "images")
    rgba = os.path.join(images, ef.NIH_RGBA)
    assert Image.open(rgba).mode == "RGBA"
    gray = tmp_path / "gray"
    gray.mkdir()
    Image.open(rgba).convert("L").save(gray / ef.NIH_RGBA)
    job = job_lib.load_job(trained_job)
    doc = predict.run(job, [folder, str(gray)], str(tmp_path / "out"))
    assert not doc["failures"] and len(doc["results"]) == 10 + 1
    by_path = {r["path"]: r for r in doc["results"]}
    assert by_path[rgba]["probs"] == by_path[str(gray / ef.NIH_RGBA)]["probs"]
    # NIH has one image per follow-up and no study folder: every image is outside the study CSV.
    assert doc["studies"]["count"] == 0 and len(doc["studies"]["outside"]) == 11


def test_mimic_study_folders_are_studies_and_views_come_from_its_metadata(trained_job, tmp_path):
    folder = ef.write_mimic(str(tmp_path))
    job = job_lib.load_job(trained_job)
    out = str(tmp_path / "out")
    doc = predict.run(job, [folder], out)
    assert len(doc["results"]) == 11 and doc["studies"]["count"] == 7 and not doc["studies"]["outside"]
    with open(os.path.join(out, predict.STUDIES_CSV)) as f:
        rows = list(csv.DictReader(f))
    assert [r["Study"] for r in rows] == [os.path.join(folder, os.path.dirname(ef.mimic_image(s, t, "x")))
                                          for s, t, *_ in ef.MIMIC_STUDIES]
    # A JPEG states no view; the folder's metadata CSV does (ViewPosition): each study is the
    # max over its frontal images, the lateral ones flagged for a frontal-only model.
    views = {os.path.basename(r["path"])[:-4]: r["view"] for r in doc["results"]}
    assert views["d1c"] == views["d3b"] == views["d4a"] == "lateral" and views["d1a"] == views["d1b"] == "frontal"
    first = doc["studies"]["rows"][0]
    assert first["basis"] == "frontal" and len(first["paths"]) == 2 and len(first["left_out"]) == 1
    probs = [r["probs"]["atelectasis"] for r in doc["results"] if r["path"] in first["paths"]]
    assert float(rows[0]["Atelectasis"]) == round(max(probs), 6)
    assert [r["warnings"] != [] for r in doc["results"]] == [v == "lateral" for v in views.values()]
    # Given its files/ folder alone (no metadata there), the views are unknown: the max over all.
    bare = predict.run(job, [os.path.join(folder, "files")], str(tmp_path / "bare"))
    assert bare["studies"]["rows"][0]["basis"] == "unknown" and len(bare["studies"]["rows"][0]["paths"]) == 3


def test_views_come_from_the_view_column_even_where_a_study_s_labels_row_is_bad(tmp_path):
    folder = ef.write_mimic(str(tmp_path))
    labels = os.path.join(folder, "mimic-cxr-2.0.0-chexpert.csv")
    with open(labels) as f:
        lines = f.read().splitlines()
    lines[1] = lines[1].replace("1.0", "maybe", 1)  # study 50000001's row: a bad_label
    with open(labels, "w") as f:
        f.write("\n".join(lines) + "\n")
    views = predict.dataset_views([folder])
    assert len(views) == 11  # every image, its study's labels or not
    for dicom, view in (("d1a", "frontal"), ("d1b", "frontal"), ("d1c", "lateral")):
        assert views[os.path.join(folder, ef.mimic_image(10000001, 50000001, dicom))] == view
