"""core.datasets: NIH and MIMIC folders read into rows and dead letters; TF- and Beam-free."""

from __future__ import annotations

import gzip
import os

import pytest

from core import csv_reader, datasets
from core.errors import ConfigError
from schemas import chexpert

pytestmark = pytest.mark.unit

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n")
NIH_ROWS = [
    "00000001_000.png,Cardiomegaly|Effusion,0,1,058Y,M,PA,1024,1024,0.143,0.143",
    "00000001_001.png,No Finding,1,1,59,M,AP,1024,1024,0.143,0.143",
    "00000002_000.png,Mass,0,2,414,F,PA,1024,1024,0.143,0.143",  # bad age
    "00000003_000.png,Atelectasis,0,3,40,F,PA,1024,1024,0.143,0.143",  # no image file
]


def _write(path, data: bytes | str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def make_nih(root, lists=True) -> str:
    folder = os.path.join(root, "ChestX-ray14")
    _write(os.path.join(folder, "Data_Entry_2017.csv"), NIH_HEADER + "\n".join(NIH_ROWS) + "\n")
    _write(os.path.join(folder, "images_001", "images", "00000001_000.png"), b"png")
    _write(os.path.join(folder, "images_002", "images", "00000001_001.png"), b"png")
    _write(os.path.join(folder, "images_002", "images", "00000002_000.png"), b"png")
    if lists:
        _write(os.path.join(folder, "train_val_list.txt"), "00000001_000.png\r\n00000001_001.png\n\n")
        _write(os.path.join(folder, "test_list.txt"), "00000002_000.png\n00000003_000.png\n")
    return folder


def test_nih_rows_images_splits_and_dead_letters(tmp_path):
    folder = make_nih(tmp_path)
    ds = datasets.find_dataset(str(tmp_path))  # the parent folder: its one dataset is found
    assert isinstance(ds, datasets.NihDataset) and ds.folder == folder and ds.official_split
    assert [f.name for f in ds.files] == ["Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt"]
    assert ds.label_file.rows == 4 and all(len(f.sha256) == 64 for f in ds.files)
    out = list(ds.rows())
    assert len(out) == ds.label_file.rows  # every row is a row or a dead letter
    good = [r for r in out if isinstance(r, datasets.DatasetRow)]
    bad = [r for r in out if isinstance(r, csv_reader.Reject)]
    assert [(r.line, r.image, r.split) for r in good] == [
        (2, "images_001/images/00000001_000.png", "train_val"),
        (3, "images_002/images/00000001_001.png", "train_val"),
        (5, "images/00000003_000.png", "test"),  # no file: the image reader reports it missing
    ]
    first = good[0].row
    assert first.age == 58 and first.findings == ("Cardiomegaly", "Effusion")
    assert first.codes[chexpert.OBSERVATION_INDEX["pleural_effusion"]] == chexpert.Code.POSITIVE
    assert first.codes[chexpert.OBSERVATION_INDEX["support_devices"]] == chexpert.Code.BLANK
    assert [(b.row, b.reason, b.path) for b in bad] == [(4, "bad_age", "00000002_000.png")]
    assert bad[0].source == "Data_Entry_2017.csv"


def test_nih_without_lists_has_no_official_split_and_half_a_split_is_an_error(tmp_path):
    folder = make_nih(tmp_path, lists=False)
    ds = datasets.find_dataset(folder, "nih")
    assert not ds.official_split and {r.split for r in ds.rows() if isinstance(r, datasets.DatasetRow)} == {None}
    _write(os.path.join(folder, "test_list.txt"), "00000002_000.png\n")
    with pytest.raises(ConfigError, match="test_list.txt but not train_val_list.txt"):
        datasets.find_dataset(folder)


def test_nih_image_on_both_lists_and_bad_header_name_the_file(tmp_path):
    folder = make_nih(tmp_path)
    _write(os.path.join(folder, "test_list.txt"), "00000001_000.png\n")
    with pytest.raises(ConfigError, match="on both .*00000001_000.png"):
        datasets.find_dataset(folder)
    _write(os.path.join(folder, "test_list.txt"), "")
    _write(os.path.join(folder, "Data_Entry_2017.csv"), "Image Index,Labels\n")
    with pytest.raises(ConfigError, match="Data_Entry_2017.csv"):
        datasets.find_dataset(folder)


def test_nih_bad_bytes_and_cell_counts_are_dead_letters(tmp_path):
    folder = make_nih(tmp_path, lists=False)
    rows = NIH_ROWS[:1] + ["00000009_000.png,No Finding,0,9,40,F,PA,1,2,3,4,EXTRA",
                           "00000010_000.png,No\x00Finding,0,10,40,F,PA,1,2,3,4", "short,row"]
    _write(os.path.join(folder, "Data_Entry_2017.csv"), NIH_HEADER + "\n".join(rows) + "\n")
    out = list(datasets.find_dataset(folder).rows())
    assert [type(r).__name__ for r in out] == ["DatasetRow", "Reject", "Reject", "Reject"]
    assert [r.reason for r in out[1:]] == ["bad_row", csv_reader.NUL_BYTE, "bad_row"]
    assert out[1].path == "00000009_000.png" and "line 3" in out[1].detail


META = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns\n"
        "aa-01,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544\n"
        "aa-02,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544\n"
        "aa-03,10000032,50414268,CHEST (PORTABLE AP),AP AXIAL,3056,2544\n"
        "aa-04,10000033,50414269,CHEST (PA AND LAT),PA,3056,2544\n"  # no labels row
        "aa-05,10000034,50414270,CHEST (PA AND LAT),PA,3056,2544\n"  # bad labels row
        "aa-06,10000035,50414271,CHEST (PA AND LAT),PA,3056,2544\n")  # labels row twice
LABEL_HEADER = "subject_id,study_id," + ",".join(chexpert.OBSERVATION_NAMES) + "\n"


def _labels(subject, study, **cells):
    vals = [cells.get(n.replace(" ", "_").lower(), "") for n in chexpert.OBSERVATION_NAMES]
    return f"{subject},{study}," + ",".join(vals) + "\n"


def make_mimic(root, gz=True, split=True) -> str:
    folder = os.path.join(root, "mimic-cxr-jpg-2.0.0")
    suffix = ".gz" if gz else ""
    pack = gzip.compress if gz else (lambda b: b)
    labels = (LABEL_HEADER + _labels(10000032, 50414267, cardiomegaly="1.0", edema="-1.0")
              + _labels(10000032, 50414268, no_finding="1.0") + _labels(10000034, 50414270, edema="2.0")
              + _labels(10000035, 50414271) + _labels(10000035, 50414271, edema="1.0"))
    _write(os.path.join(folder, "mimic-cxr-2.0.0-metadata.csv" + suffix), pack(META.encode()))
    _write(os.path.join(folder, "mimic-cxr-2.0.0-chexpert.csv" + suffix), pack(labels.encode()))
    if split:
        _write(os.path.join(folder, "mimic-cxr-2.0.0-split.csv" + suffix), pack(
            b"dicom_id,study_id,subject_id,split\naa-01,50414267,10000032,train\naa-02,50414267,10000032,train\n"
            b"aa-03,50414268,10000032,test\naa-04,50414269,10000033,validate\n"))
    return folder


def test_mimic_join_splits_and_dead_letters(tmp_path):
    folder = make_mimic(tmp_path)
    ds = datasets.find_dataset(folder)
    assert isinstance(ds, datasets.MimicDataset) and ds.official_split
    assert [f.name for f in ds.files] == ["mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-chexpert.csv.gz",
                                          "mimic-cxr-2.0.0-split.csv.gz"]
    assert ds.label_file.rows == 6
    out = list(ds.rows())
    assert len(out) == 6
    good = {r.row.path.split("/")[-1]: r for r in out if isinstance(r, datasets.DatasetRow)}
    assert set(good) == {"aa-01.jpg", "aa-02.jpg", "aa-03.jpg"}
    assert good["aa-01.jpg"].image == "files/p10/p10000032/s50414267/aa-01.jpg"
    assert [good[k].split for k in ("aa-01.jpg", "aa-02.jpg", "aa-03.jpg")] == ["train", "train", "test"]
    assert [good[k].row.view for k in ("aa-01.jpg", "aa-02.jpg", "aa-03.jpg")] == ["frontal", "lateral", "unknown"]
    a = good["aa-01.jpg"].row
    assert a.study_id == "10000032/50414267" and a.age is None and a.findings == ("Cardiomegaly",)
    assert a.codes[chexpert.OBSERVATION_INDEX["edema"]] == chexpert.Code.UNCERTAIN
    bad = {r.path: r for r in out if isinstance(r, csv_reader.Reject)}
    assert bad["aa-04"].reason == "no_labels"
    assert bad["aa-05"].reason == "bad_label" and "mimic-cxr-2.0.0-chexpert.csv.gz line 4" in bad["aa-05"].detail
    assert bad["aa-06"].reason == "duplicate_labels"
    assert all(b.source == "mimic-cxr-2.0.0-metadata.csv.gz" for b in bad.values())


def test_mimic_plain_csv_without_split_and_missing_labels_file(tmp_path):
    folder = make_mimic(tmp_path, gz=False, split=False)
    ds = datasets.find_dataset(str(tmp_path), "mimic")  # --format with the parent folder
    assert not ds.official_split and ds.folder == folder
    assert {r.split for r in ds.rows() if isinstance(r, datasets.DatasetRow)} == {None}
    os.remove(os.path.join(folder, "mimic-cxr-2.0.0-chexpert.csv"))
    with pytest.raises(ConfigError, match="labels file .*mimic-cxr-2.0.0-chexpert.csv"):
        datasets.find_dataset(folder)


def test_corrupt_gzip_is_one_error_naming_the_file(tmp_path):
    folder = make_mimic(tmp_path)
    _write(os.path.join(folder, "mimic-cxr-2.0.0-chexpert.csv.gz"), b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ConfigError, match="mimic-cxr-2.0.0-chexpert.csv.gz: cannot read"):
        datasets.find_dataset(folder)


def test_detection_errors_and_chexpert(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        datasets.find_dataset(str(tmp_path / "nope"))
    chex = tmp_path / "c" / "CheXpert-v1.0-small"
    _write(str(chex / "train.csv"), ",".join(chexpert.CSV_COLUMNS) + "\n")
    assert datasets.find_dataset(str(tmp_path / "c")) is None
    assert datasets.find_dataset(str(chex), "chexpert") is None
    with pytest.raises(ConfigError, match="--format=nih: .* holds none of Data_Entry_2017.csv"):
        datasets.find_dataset(str(chex), "nih")
    with pytest.raises(ConfigError, match="--format=dicom"):
        datasets.find_dataset(str(chex), "dicom")
    both = tmp_path / "both"
    make_nih(str(both))
    make_mimic(str(both))
    with pytest.raises(ConfigError, match="holds 2 datasets"):
        datasets.find_dataset(str(both))
    assert isinstance(datasets.find_dataset(str(both), "mimic"), datasets.MimicDataset)


def test_bad_bytes_in_a_mimic_labels_row_name_that_row_and_views_need_no_labels(tmp_path):
    folder = make_mimic(tmp_path, gz=False)
    path = os.path.join(folder, "mimic-cxr-2.0.0-chexpert.csv")
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    lines[1] = lines[1].replace(b"1.0", b"1\x00.0", 1)  # study 50414267's row, line 2
    _write(path, b"\n".join(lines))
    ds = datasets.find_dataset(folder)
    bad = {r.path: r for r in ds.rows() if isinstance(r, csv_reader.Reject)}
    assert bad["aa-01"].reason == csv_reader.NUL_BYTE and bad["aa-02"].reason == csv_reader.NUL_BYTE
    assert "mimic-cxr-2.0.0-chexpert.csv line 2" in bad["aa-01"].detail
    # A scorer's views come from the metadata alone, whatever the labels say.
    views = ds.image_views()
    assert views["files/p10/p10000032/s50414267/aa-01.jpg"] == "frontal"
    assert views["files/p10/p10000032/s50414267/aa-02.jpg"] == "lateral"
    assert views["files/p10/p10000032/s50414268/aa-03.jpg"] == "unknown"
    assert views["files/p10/p10000033/s50414269/aa-04.jpg"] == "frontal"  # no labels row: still a view
    assert len(views) == 6


def test_nih_views_of_bad_rows_and_list_names_without_rows(tmp_path):
    folder = make_nih(tmp_path)
    with open(os.path.join(folder, "test_list.txt"), "a") as f:
        f.write("99999999_000.png\n")
    ds = datasets.find_dataset(folder)
    assert any("1 image(s) on train_val_list.txt or test_list.txt have no row" in n and "99999999_000.png" in n
               for n in ds.notes)
    views = ds.image_views()
    assert views["images_002/images/00000002_000.png"] == "frontal"  # a bad-age row still has its view
    assert views["images_002/images/00000001_001.png"] == "frontal" and len(views) == 4
