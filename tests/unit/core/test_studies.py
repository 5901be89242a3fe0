"""core.studies (views, study ids, the competition's study CSV) and the resize geometry
overlays are mapped back with; TF-free."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from core import imaging, studies
from tests import images
from tests.images import dicom_with_view


@pytest.mark.parametrize("name, view", [
    ("scan.jpg", "unknown"),
    ("lateral_scan.jpg", "unknown"),  # a word in a free name is not a view
    ("frontal.png", "unknown"),
    ("view2_lateral.jpg", "lateral"),
    ("view1_frontal.jpg", "frontal"),
    ("data/CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", "frontal"),
])
def test_input_view_by_name(name, view):
    assert studies.input_view(name) == view
    assert studies.input_view(name, images.jpeg_bytes(images.gradient())) == view


def test_input_view_dicom_tag_then_csv_column_then_name():
    ll, pa, silent = dicom_with_view("LL"), dicom_with_view("PA"), dicom_with_view(None)
    assert studies.input_view("scan.dcm", ll) == "lateral"
    assert studies.input_view("scan.dcm", pa) == "frontal"
    assert studies.input_view("scan.dcm", silent) == "unknown"
    # The tag wins over the CSV and the name; the CSV wins over the name.
    assert studies.input_view("view1_frontal.dcm", ll, from_csv="frontal") == "lateral"
    assert studies.input_view("view1_frontal.jpg", None, from_csv="lateral") == "lateral"
    assert studies.input_view("scan.dcm", silent, from_csv="frontal") == "frontal"
    assert studies.input_view("view2_lateral.jpg", None, from_csv="unknown") == "lateral"
    assert [studies.csv_view(c) for c in ("Frontal", " Lateral ", "", None, "lateral", "AP")] == [
        "frontal", "lateral", "unknown", "unknown", "unknown", "unknown"]


@pytest.mark.parametrize("path, study", [
    ("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", "CheXpert-v1.0-small/valid/patient64541/study1"),
    ("/data/in/patient00001/study12/scan.dcm", "/data/in/patient00001/study12"),
    ("patient00001/study1/view1_frontal.jpg", "patient00001/study1"),
    ("C:\\x\\patient00002\\study3\\view1_frontal.jpg", "C:/x/patient00002/study3"),
    ("gs://bucket/patient00002/study3/view1_frontal.jpg", "gs://bucket/patient00002/study3"),
    ("incoming/img01.jpg", None),
    ("patient00001/view1_frontal.jpg", None),
    ("patient00001/study1/sub/view1_frontal.jpg", None),
    ("xpatient00001/study1/view1_frontal.jpg", None),
    ("scan.jpg", None),
    # MIMIC-CXR-JPG: files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg, eight-digit ids.
    ("mimic/files/p10/p10000032/s50414267/02aa804e-bde0afdd.jpg", "mimic/files/p10/p10000032/s50414267"),
    ("/data/files/p19/p19999987/s58971208/a.jpg", "/data/files/p19/p19999987/s58971208"),
    ("files/p10/p10000032/s50414267/sub/a.jpg", None),
    ("files/p10/p1000003/s50414267/a.jpg", None),  # seven digits: not MIMIC's
    ("files/p10/xp10000032/s50414267/a.jpg", None),
    # NIH: one image per follow-up, no study folder.
    ("ChestX-ray14/images_001/images/00000001_000.png", None),
])
def test_study_of(path, study):
    assert studies.study_of(path) == study


def test_a_study_is_the_max_over_its_frontals_and_laterals_count_only_without_one():
    p = lambda a, c: {"atelectasis": a, "cardiomegaly": c}  # noqa: E731
    table = studies.aggregate([
        ("in/patient00005/study1/view1_frontal.jpg", "frontal", p(0.20, 0.70)),
        ("in/patient00005/study1/view2_frontal.jpg", "frontal", p(0.40, 0.10)),
        ("in/patient00005/study1/view3_lateral.jpg", "lateral", p(0.99, 0.99)),  # ignored: the study has frontals
        ("in/patient00006/study1/view1_lateral.jpg", "lateral", p(0.30, 0.60)),
        ("in/patient00006/study1/scan.jpg", "unknown", p(0.50, 0.05)),
        ("in/loose/scan.jpg", "frontal", p(0.9, 0.9)),
    ], ["atelectasis", "cardiomegaly"])
    first, second = table.studies
    assert first.study == "in/patient00005/study1" and first.basis == "frontal"
    assert dict(first.probs) == {"atelectasis": 0.40, "cardiomegaly": 0.70}
    assert first.left_out == ("in/patient00005/study1/view3_lateral.jpg",) and len(first.paths) == 2
    assert second.basis == "lateral+unknown" and dict(second.probs) == {"atelectasis": 0.50, "cardiomegaly": 0.60}
    assert table.outside == ("in/loose/scan.jpg",) and table.without_frontal == 1
    text = studies.to_csv(table, ["atelectasis", "cardiomegaly"])
    assert text.splitlines()[0] == "Study,Atelectasis,Cardiomegaly"
    assert list(csv.reader(io.StringIO(text)))[1:] == [
        ["in/patient00005/study1", "0.400000", "0.700000"], ["in/patient00006/study1", "0.500000", "0.600000"]]
    assert studies.summary(table) == (
        "2 studies (max over frontal images), 1 without a frontal image (max over their other views); 1 image(s) not "
        "in a .../patientNNNNN/studyM/ folder (nor MIMIC's .../pSUBJECT/sSTUDY/) left out of the study CSV")
    assert studies.to_csv(studies.aggregate([], ["edema"]), ["edema"]) == "Study,Edema\n"


def test_a_mimic_study_is_the_max_over_its_frontal_images():
    base = "files/p10/p10000032/s50414267"
    table = studies.aggregate([(f"{base}/a.jpg", "frontal", {"edema": 0.2}), (f"{base}/b.jpg", "frontal", {"edema": 0.6}),
                               (f"{base}/c.jpg", "lateral", {"edema": 0.9}),
                               ("images_001/images/00000001_000.png", "frontal", {"edema": 0.5})], ["edema"])
    (study,) = table.studies
    assert study.study == base and study.probs == {"edema": 0.6} and study.left_out == (f"{base}/c.jpg",)
    assert table.outside == ("images_001/images/00000001_000.png",)


def test_a_studys_paths_are_sorted_and_ids_the_dataset_gives_win():
    s = "in/patient00007/study2"
    table = studies.aggregate([(f"{s}/view3_frontal.jpg", "frontal", {"edema": 0.1}),
                               (f"{s}/view2_lateral.jpg", "lateral", {"edema": 0.9}),
                               (f"{s}/view1_frontal.jpg", "frontal", {"edema": 0.3})], ["edema"])
    (study,) = table.studies
    assert study.paths == (f"{s}/view1_frontal.jpg", f"{s}/view3_frontal.jpg")  # sorted by path, not input order
    assert study.left_out == (f"{s}/view2_lateral.jpg",) and study.probs == {"edema": 0.3}
    # NIH names no study folder; its own PATIENT/FOLLOWUP ids group the images.
    nih = ["images_001/images/00000001_000.png", "images_001/images/00000001_001.png"]
    table = studies.aggregate([(nih[0], "frontal", {"edema": 0.2}), (nih[1], "frontal", {"edema": 0.6}),
                               ("loose.png", "frontal", {"edema": 0.5})], ["edema"],
                              study_ids={nih[0]: "00000001/000", nih[1]: "00000001/000"})
    (study,) = table.studies
    assert study.study == "00000001/000" and study.probs == {"edema": 0.6} and study.paths == tuple(nih)
    assert table.outside == ("loose.png",)


def test_a_dicom_without_preamble_is_read_for_its_view_when_named_dcm():
    raw = dicom_with_view("PA")[132:]  # no 128-byte preamble, no "DICM": only the name says DICOM
    assert studies.input_view("x.dcm", raw) == "frontal"
    assert studies.input_view("x.dcm", raw, from_csv="lateral") == "frontal"  # the tag wins over the CSV

def test_model_data_says_what_the_model_was_trained_on():
    assert studies.model_data({"synthetic": True}) == "synthetic"
    assert studies.model_data({"synthetic": False, "input_dir": "/data"}) == "real"
    assert studies.model_data({}) == studies.model_data(None) == "unknown"


@pytest.mark.parametrize("mode", imaging.RESIZE_MODES)
@pytest.mark.parametrize("shape", [(60, 40), (40, 60), (50, 50)])
def test_resize_frame_is_where_resize_puts_the_image(mode, shape):
    # An image of distinct values per pixel; resize to the frame's own size (no scaling), and
    # the output must be the input read through the frame (zeros where the frame leaves it).
    h, w = shape
    pixels = (np.arange(h * w).reshape(h, w) % 251 + 1).astype(np.uint8)
    top, left, fh, fw = imaging.resize_frame(h, w, mode)
    if fh != fw:  # squash of a non-square: the frame is the whole image, stretched per axis
        assert (mode, top, left, fh, fw) == ("squash", 0, 0, h, w)
        return
    out = imaging.resize(pixels, fh, mode)
    want = np.zeros((fh, fw), np.uint8)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + fh, h), min(left + fw, w)
    want[y0 - top:y1 - top, x0 - left:x1 - left] = pixels[y0:y1, x0:x1]
    np.testing.assert_array_equal(out, want)
