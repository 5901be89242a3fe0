"""pipeline/make_external.py: the synthetic NIH and MIMIC sets read back with the schemas' own
readers (schemas.nih, schemas.mimic), their quirks present, their truth consistent with the
labels, and the bytes fixed by the seed; neither TensorFlow nor Beam."""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import io
import os
import re

import numpy as np
import pytest
from PIL import Image

from core import imaging
from pipeline import make_external, make_sample
from schemas import chexpert, external, mimic, nih

SIZE = 32
NIH_PATIENTS = 30
MIMIC_SUBJECTS = 20
_MAPPED = [s for s in nih.LABELLED_OBSERVATIONS if s != "no_finding"]


def _tree_digest(root: str) -> dict[str, str]:
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _truth(root: str) -> dict[str, dict[str, str]]:
    with open(os.path.join(root, make_external.TRUTH_FILE), newline="") as f:
        return {row["Path"]: row for row in csv.DictReader(f)}


def _read_csv(path: str) -> list[list[str]]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def nih_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("nih"))
    assert make_external.generate_nih(root, num_patients=NIH_PATIENTS, seed=3, image_size=SIZE,
                                      workers=1) == os.path.join(root, make_external.NIH_DIR)
    return root


@pytest.fixture(scope="module")
def nih_rows(nih_root):
    """(cells, ExternalRow) per data row of Data_Entry_2017.csv, read as the schema reads it."""
    path = os.path.join(nih_root, make_external.NIH_DIR, "Data_Entry_2017.csv")
    header, *rows = _read_csv(path)
    columns = nih.header_columns(header, "Data_Entry_2017.csv")
    out = []
    for i, values in enumerate(rows, 2):
        cells = external.cells_of(columns, values, f"line {i}")
        out.append((cells, nih.parse_row(cells)))
    return out


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("mimic"))
    assert make_external.generate_mimic(root, num_subjects=MIMIC_SUBJECTS, seed=3, image_size=SIZE,
                                        workers=1) == os.path.join(root, make_external.MIMIC_DIR)
    return root


@pytest.fixture(scope="module")
def mimic_tables(mimic_root):
    ds = os.path.join(mimic_root, make_external.MIMIC_DIR)
    names = (mimic.METADATA_FILES[1], mimic.LABEL_FILES[1], mimic.SPLIT_FILES[1])
    return [[dict(zip(t[0], r)) for r in t[1:]] for t in (_read_csv(os.path.join(ds, n)) for n in names)] + [
        [t[0] for t in (_read_csv(os.path.join(ds, n)) for n in names)]]


# --- NIH ----------------------------------------------------------------------------------


def test_nih_header_is_the_datasets_own_line_with_its_trailing_comma(nih_root):
    with open(os.path.join(nih_root, make_external.NIH_DIR, "Data_Entry_2017.csv"), "rb") as f:
        header, first = f.read().split(b"\n")[:2]
    assert header == (b"Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                      b"OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
    assert first.startswith(b"00000001_000.png,") and not first.endswith(b",")  # rows without it, as NIH's


def test_nih_rows_parse_and_their_labels_are_the_hidden_truth(nih_root, nih_rows):
    truth = {os.path.basename(p): row for p, row in _truth(nih_root).items()}
    assert len(nih_rows) == len(truth) > NIH_PATIENTS
    for cells, row in nih_rows:
        t = truth[row.path]
        for slug in _MAPPED:
            want = chexpert.Code.POSITIVE if t[f"truth_{slug}"] == "1" else chexpert.Code.NEGATIVE
            assert row.codes[chexpert.OBSERVATION_INDEX[slug]] == want, (row.path, slug)
        for slug in set(chexpert.OBSERVATIONS) - set(nih.LABELLED_OBSERVATIONS):
            assert row.codes[chexpert.OBSERVATION_INDEX[slug]] == chexpert.Code.BLANK
        assert (row.findings == (nih.NO_FINDING,)) == (
            row.codes[chexpert.OBSERVATION_INDEX["no_finding"]] == chexpert.Code.POSITIVE)
        patient, follow_up = row.path[:-4].split("_")
        assert row.patient_id == patient and cells[nih.COL_FOLLOW_UP] == str(int(follow_up))
        assert cells[nih.COL_FINDINGS].split("|") == sorted(cells[nih.COL_FINDINGS].split("|"))


def test_nih_has_its_quirks(nih_rows):
    ages = [cells[nih.COL_AGE] for cells, _ in nih_rows]
    assert any(re.fullmatch(r"0\d\dY", a) for a in ages) and any(re.fullmatch(r"\d+", a) for a in ages)
    findings = [row.findings for _, row in nih_rows]
    assert any(len(f) > 1 for f in findings)
    assert {f for fs in findings for f in fs} & set(make_external.NIH_ONLY_RATES)
    assert {row.projection for _, row in nih_rows} == {"PA", "AP"}
    assert {row.sex for _, row in nih_rows} == {"Male", "Female"}


def test_nih_images_are_where_the_layout_says_and_decode(nih_root, nih_rows):
    ds = os.path.join(nih_root, make_external.NIH_DIR)
    found = {os.path.basename(p): p for p in glob.glob(os.path.join(ds, "images_*", "images", "*.png"))}
    assert sorted(found) == sorted(row.path for _, row in nih_rows)
    assert len({os.path.relpath(p, ds).split(os.sep)[0] for p in found.values()}) > 1
    assert set(_truth(nih_root)) == {os.path.relpath(p, ds).replace(os.sep, "/") for p in found.values()}
    modes = {}
    for name, path in found.items():
        with open(path, "rb") as f:
            data = f.read()
        modes[name] = Image.open(io.BytesIO(data)).mode
        pixels = imaging.decode(data, name)
        assert pixels.shape == (SIZE, SIZE) and pixels.dtype == np.uint8
        if modes[name] == "RGBA":
            rgba = np.asarray(Image.open(io.BytesIO(data)))
            assert (rgba[..., 3] == 255).all() and (rgba[..., 0] == rgba[..., 2]).all()
            assert (pixels == rgba[..., 0]).all()
    assert set(modes.values()) == {"L", "RGBA"}
    assert list(modes.values()).count("RGBA") < len(modes) / 5


def test_nih_official_split_is_patient_level_and_covers_every_image(nih_root, nih_rows):
    ds = os.path.join(nih_root, make_external.NIH_DIR)
    lists = {}
    for name in (nih.TRAIN_VAL_LIST, nih.TEST_LIST):
        with open(os.path.join(ds, name)) as f:
            lists[name] = nih.parse_image_list(f.read(), name)
    splits = nih.official_splits(lists[nih.TRAIN_VAL_LIST], lists[nih.TEST_LIST])
    assert set(splits) == {row.path for _, row in nih_rows}
    patients = {s: {row.patient_id for _, row in nih_rows if splits[row.path] == s} for s in (nih.TRAIN_VAL, nih.TEST)}
    assert patients[nih.TEST] and patients[nih.TRAIN_VAL] and not patients[nih.TEST] & patients[nih.TRAIN_VAL]
    truth = {os.path.basename(p): row["split"] for p, row in _truth(nih_root).items()}
    assert truth == splits


def test_nih_sample_labels_spelling_and_no_split(tmp_path):
    ds = make_external.generate_nih(str(tmp_path), num_patients=4, seed=1, image_size=SIZE,
                                    label_file="sample_labels.csv", official_split=False, workers=1)
    assert os.path.exists(os.path.join(ds, "sample_labels.csv")) and not glob.glob(os.path.join(ds, "*.txt"))
    header, *rows = _read_csv(os.path.join(ds, "sample_labels.csv"))
    columns = nih.header_columns(header, "sample_labels.csv")
    assert header == list(nih.CSV_COLUMNS)
    for values in rows:
        cells = external.cells_of(columns, values)
        nih.parse_row(cells)
        assert re.fullmatch(r"\d{3}Y", cells[nih.COL_AGE])


# --- MIMIC --------------------------------------------------------------------------------


def test_mimic_files_parse_and_join(mimic_root, mimic_tables):
    metadata, labels, splits, headers = mimic_tables
    mimic.check_metadata_header(headers[0], "metadata")
    mimic.check_labels_header(headers[1], "chexpert")
    mimic.check_split_header(headers[2], "split")
    assert tuple(headers[0]) == make_external.MIMIC_METADATA_COLUMNS
    index, duplicates = mimic.index_study_labels(mimic.parse_labels_row(r) for r in labels)
    assert not duplicates and set(index) == {m["study_id"] for m in metadata}  # one row per study
    split_of = dict(mimic.parse_split_row(r) for r in splits)
    ds = os.path.join(mimic_root, make_external.MIMIC_DIR)
    truth = _truth(mimic_root)
    assert len(metadata) == len(split_of) == len(truth)
    for cells in metadata:
        row = mimic.join_row(cells, index)
        assert re.fullmatch(r"1\d{7}", row.patient_id) and re.fullmatch(r"5\d{7}", cells["study_id"])
        assert re.fullmatch(r"([0-9a-f]{8}-){4}[0-9a-f]{8}", cells["dicom_id"])
        with open(os.path.join(ds, row.path), "rb") as f:
            assert imaging.decode(f.read(), row.path).shape == (SIZE, SIZE)
        t = truth[row.path]
        assert t["split"] == split_of[cells["dicom_id"]]
        for slug, code in zip(chexpert.OBSERVATIONS, row.codes):
            if slug != "no_finding" and code in (chexpert.Code.POSITIVE, chexpert.Code.NEGATIVE):
                assert t[f"truth_{slug}"] == ("1" if code == chexpert.Code.POSITIVE else "0")
    codes = {c for s in index.values() for c in s.codes}
    assert codes == {chexpert.Code.POSITIVE, chexpert.Code.NEGATIVE, chexpert.Code.UNCERTAIN, chexpert.Code.BLANK}
    assert len(glob.glob(os.path.join(ds, "files", "p1?", "p1*", "s5*", "*.jpg"))) == len(metadata)


def test_mimic_studies_views_and_split_by_subject(mimic_tables):
    metadata, _, splits, _ = mimic_tables
    views: dict[str, list[str]] = {}
    for m in metadata:
        views.setdefault(m["study_id"], []).append(m["ViewPosition"])
    assert any({"PA", "AP"} <= set(v) and {"LATERAL", "LL"} & set(v) for v in views.values())
    assert max(len(v) for v in views.values()) >= 3 and min(len(v) for v in views.values()) == 1
    assert {p for v in views.values() for p in v} <= {"PA", "AP", "LATERAL", "LL", "", "AP AXIAL"}
    by_subject: dict[str, set[str]] = {}
    for r in splits:
        by_subject.setdefault(r["subject_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_subject.values()) and len(by_subject) == MIMIC_SUBJECTS
    assert {next(iter(s)) for s in by_subject.values()} == set(mimic.SPLITS)


def test_mimic_plain_csv_is_the_gzip_unpacked(mimic_root, tmp_path):
    plain = make_external.generate_mimic(str(tmp_path), num_subjects=MIMIC_SUBJECTS, seed=3, image_size=SIZE,
                                         gzip=False, workers=1)
    gz = os.path.join(mimic_root, make_external.MIMIC_DIR)
    for name in (mimic.METADATA_FILES[0], mimic.LABEL_FILES[0], mimic.SPLIT_FILES[0]):
        with open(os.path.join(plain, name), "rb") as f, gzip.open(os.path.join(gz, name + ".gz")) as g:
            assert f.read() == g.read()
        assert not os.path.exists(os.path.join(plain, name + ".gz"))


# --- Determinism and arguments ------------------------------------------------------------


@pytest.mark.parametrize("generate,count", [(make_external.generate_nih, "num_patients"),
                                            (make_external.generate_mimic, "num_subjects")])
def test_same_seed_same_bytes_whatever_the_workers_and_another_seed_differs(generate, count, tmp_path):
    n = 52  # the pool starts above 50 jobs
    one = generate(str(tmp_path / "one"), **{count: n}, seed=5, image_size=SIZE, workers=1)
    two = generate(str(tmp_path / "two"), **{count: n}, seed=5, image_size=SIZE, workers=2)
    other = generate(str(tmp_path / "other"), **{count: 6}, seed=6, image_size=SIZE, workers=1)
    assert _tree_digest(os.path.dirname(one)) == _tree_digest(os.path.dirname(two))
    digest = _tree_digest(os.path.dirname(one))
    assert not set(digest.items()) & set(_tree_digest(os.path.dirname(other)).items())


def test_a_patient_is_the_same_whatever_the_number_of_patients(nih_root, tmp_path):
    few = make_external.generate_nih(str(tmp_path), num_patients=3, seed=3, image_size=SIZE, workers=1)
    rows = [_read_csv(os.path.join(d, "Data_Entry_2017.csv"))
            for d in (few, os.path.join(nih_root, make_external.NIH_DIR))]
    assert rows[0] == rows[1][:len(rows[0])]
    subjects = make_external.plan_mimic_subject(3, 0)
    assert [s.study_id for s in subjects] == [make_external.mimic_study_id(3, k) for k in range(len(subjects))]
    ids = {make_external.mimic_subject_id(s) for s in range(1, 5001)}
    assert len(ids) == 5000 and {i[:2] for i in ids} == {f"1{d}" for d in range(10)}


def test_bad_arguments_name_themselves(tmp_path):
    with pytest.raises(ValueError, match="image_size=16"):
        make_external.generate_nih(str(tmp_path), num_patients=1, image_size=16)
    with pytest.raises(ValueError, match="label_file='labels.csv'"):
        make_external.generate_nih(str(tmp_path), num_patients=1, label_file="labels.csv")
    with pytest.raises(ValueError, match="num_subjects=-1"):
        make_external.generate_mimic(str(tmp_path), num_subjects=-1)


# --- CLI ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,folder", [("nih", make_external.NIH_DIR), ("mimic", make_external.MIMIC_DIR)])
def test_cli_writes_and_says_where(fmt, folder, tmp_path, capsys):
    assert make_external.main(["--format", fmt, "--output_dir", str(tmp_path), "--num_patients=2",
                               f"--image_size={SIZE}", "--workers=1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and os.path.join(str(tmp_path), folder) in out[0]
    assert os.path.exists(os.path.join(str(tmp_path), make_external.TRUTH_FILE))


@pytest.mark.parametrize("argv,message", [
    (["--format", "chexpert"], "--format: invalid choice: 'chexpert'"),
    (["--format", "nih", "--image_size=8"], "--image_size=8"),
    (["--format", "mimic", "--label_file=sample_labels.csv"], "--label_file is NIH's"),
])
def test_cli_bad_flags_are_exit_2_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        make_external.main(argv + ["--output_dir", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m pipeline.make_external: error: ") and message in err[0]


def test_cli_unwritable_output_dir_is_one_line(tmp_path, capsys):
    in_the_way = tmp_path / "file"
    in_the_way.write_text("x")
    assert make_external.main(["--format", "nih", "--output_dir", str(in_the_way), "--num_patients=1",
                               f"--image_size={SIZE}", "--workers=1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m pipeline.make_external: error: --output_dir={in_the_way}")


def test_an_image_is_make_samples_drawing_of_its_severities(nih_root):
    """The learnable signal is make_sample's: the PNG is render() of the image's severities."""
    image = make_external.plan_nih_patient(2, 3)[0]
    study = make_sample.Study(2, 0, "", "", 0, np.zeros(14, np.int64), image.severity, image.truth, [])
    want = make_sample.render(study, "frontal", (SIZE, SIZE), np.random.default_rng([3, 2, 0, 7]))
    path, = glob.glob(os.path.join(nih_root, make_external.NIH_DIR, "images_*", "images", image.name))
    with open(path, "rb") as f:
        assert (imaging.decode(f.read(), path) == want).all()


# --- Read by the project's own reader -----------------------------------------------------


@pytest.mark.parametrize("fixture,fmt", [("nih_root", "nih"), ("mimic_root", "mimic")])
def test_core_datasets_reads_every_row_with_no_reject(fixture, fmt, request):
    """The parent folder is found (one dataset below it), every row is a DatasetRow whose image
    exists, and each has its official split, as the hidden truth says."""
    from core import datasets

    root = request.getfixturevalue(fixture)
    ds = datasets.find_dataset(root)
    assert ds is not None and ds.format == fmt and ds.official_split
    rows = list(ds.rows())
    rejects = [r for r in rows if not isinstance(r, datasets.DatasetRow)]
    assert not rejects, rejects[:3]
    truth = _truth(root)
    assert {r.image: r.split for r in rows} == {p: t["split"] for p, t in truth.items()}
    assert all(os.path.exists(os.path.join(ds.folder, r.image)) for r in rows)
