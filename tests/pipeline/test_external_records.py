"""build_records on NIH ChestX-ray14 and MIMIC-CXR-JPG folders (``--format nih|mimic``):
end to end on DirectRunner over tiny folders made in code (``external_folders``), read back
with the schema's own parser and the trainer's input pipeline."""

from __future__ import annotations

import collections
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from core.errors import ConfigError
from pipeline import build_config, build_records, manifest_builder
from pipeline import options as job_options
from schemas import chexpert, example_tf, nih
from schemas import example as example_lib
from schemas import manifest as manifest_lib
from tests.pipeline import external_folders as ef
from trainer import config as trainer_config
from trainer import input as input_lib

NIH_UNLABELLED = ("enlarged_cardiomediastinum", "lung_opacity", "lung_lesion", "pleural_other", "fracture",
                  "support_devices")


def _run(input_dir, output_dir, *extra):
    return build_records.run([f"--input_dir={input_dir}", f"--output_dir={output_dir}", "--image_size=32",
                              "--num_shards=1", "--max_reject_fraction=0.5", "--runner=DirectRunner", *extra])


def _records(output_dir, manifest) -> dict[str, tuple[str, dict]]:
    """{source path: (split, parsed record)} of every committed record."""
    out = {}
    for split, sp in manifest["splits"].items():
        files = [os.path.join(output_dir, n) for n in sp["shards"]]
        for rec in tf.data.TFRecordDataset(files).map(example_tf.parse).as_numpy_iterator():
            path = rec[example_lib.SOURCE_PATH].decode()
            assert path not in out
            out[path] = (split, rec)
    return out


def _rejects(output_dir, manifest) -> list[dict]:
    rows = []
    for rel in manifest["rejected_files"]:
        with open(os.path.join(output_dir, rel)) as f:
            rows += [json.loads(line) for line in f]
    return rows


@pytest.fixture(scope="module")
def nih_built(tmp_path_factory):
    root = tmp_path_factory.mktemp("nih")
    folder = ef.make_nih(str(root / "ChestX-ray14"))
    out = str(root / "records")
    # Detected from the parent folder (one dataset below it); a holdout to see the patient hash.
    manifest = _run(str(root), out, "--holdout_fraction=0.5")
    return folder, out, manifest


@pytest.fixture(scope="module")
def mimic_built(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic")
    folder = ef.make_mimic(str(root / "mimic-cxr-jpg"))
    out = str(root / "records")
    return folder, out, _run(folder, out, "--format=mimic", "--blank=ignore")


def test_nih_records_read_back_with_their_source_labels_splits_and_masks(nih_built):
    _, out, manifest = nih_built
    recs = _records(out, manifest)
    want = {name: (on, expected) for name, *_, on, expected in ef.NIH_ROWS[:-1]}  # the last is a duplicate
    written = {f"images_001/images/{n}" for n, (_, e) in want.items() if e in ("train", "test")}
    assert set(recs) == written
    table = chexpert.policy_matrix(manifest["policy"], manifest["blank"])
    rows_by_name = {r[0]: r for r in ef.NIH_ROWS[:-1]}
    splits_of_patient = collections.defaultdict(set)
    for path, (split, rec) in recs.items():
        name = os.path.basename(path)
        _, findings, follow, patient, age, sex, view, _, expected = rows_by_name[name]
        assert split in (("train", "holdout") if expected == "train" else (expected,)), name
        splits_of_patient[patient].add(split)
        assert rec[example_lib.SOURCE_DATASET] == b"nih"
        assert rec[example_lib.SOURCE_LABELS].decode().split("|") == list(nih.parse_findings(findings))
        np.testing.assert_array_equal(rec[example_lib.LABELS_RAW], nih.codes_for(nih.parse_findings(findings)))
        assert rec[example_lib.PATIENT_ID] == f"{patient:08d}".encode()
        assert rec[example_lib.STUDY_ID] == f"{patient:08d}/{follow:03d}".encode()
        assert rec[example_lib.PATIENT_AGE] == nih.parse_age(age)
        assert rec[example_lib.PATIENT_SEX] == {"M": b"Male", "F": b"Female"}[sex]
        assert rec[example_lib.IMAGE_VIEW] == (b"lateral" if view == "LL" else b"frontal")
        assert rec["image"].shape == (32, 32, 1)  # the RGBA PNG too
        # Stored mask = the policy's (blank=negative here) x what NIH labels: 0 where NIH says nothing.
        t, m = example_tf.policy_targets(rec[example_lib.LABELS_RAW], rec[example_lib.LABELS_DRAW], table)
        labelled = example_tf.labelled_mask(rec[example_lib.SOURCE_DATASET]).numpy()
        np.testing.assert_array_equal(rec[example_lib.LABELS_TARGET], t.numpy())
        np.testing.assert_array_equal(rec[example_lib.LABELS_MASK], m.numpy() * labelled)
        for slug in NIH_UNLABELLED:
            i = chexpert.OBSERVATION_INDEX[slug]
            assert rec[example_lib.LABELS_RAW][i] == chexpert.Code.BLANK and rec[example_lib.LABELS_MASK][i] == 0
    assert all(len(s) == 1 for s in splits_of_patient.values()), "a patient is in two splits"
    # The patient hash is namespaced by the dataset: "nih/00000001" draws 0.45 (holdout at 0.5),
    # the bare "00000001" would draw 0.86 (train).
    assert splits_of_patient[1] == {"holdout"} and splits_of_patient[2] == {"train"}
    assert 3 not in splits_of_patient  # its one image is on neither list: no_split
    assert chexpert.stable_fraction("holdout:00000001") > 0.5
    assert set(manifest["splits"]) == {"train", "holdout", "test"}


def test_nih_counts_reconcile_with_every_dead_letter_and_its_line(nih_built):
    folder, out, manifest = nih_built
    src = manifest["sources"]["Data_Entry_2017.csv"]
    assert src["rows"] == len(ef.NIH_ROWS) == src["written"] + src["rejected"]
    assert src["rejected_by_reason"] == {"bad_age": 1, "missing_file": 1, "duplicate_path": 1, "patient_in_test": 1,
                                         "bad_id": 1, "no_split": 1}
    assert manifest["rows"] == manifest["written"] + manifest["rejected"]
    assert manifest["rejected_files"] == [f"{manifest['snapshot']}/rejected-Data_Entry_2017.jsonl"]
    rejects = _rejects(out, manifest)
    got = {r["row"]: r["reason"] for r in rejects}
    assert got == {line: e for line, (_, e) in ef.nih_expected().items() if e not in ("train", "test")}
    unlisted = next(r for r in rejects if r["reason"] == "no_split")
    assert unlisted["split"] is None and "neither train_val_list.txt nor test_list.txt" in unlisted["detail"]
    assert manifest["patient_overlap"]["rows_rejected"] == 1
    assert manifest["patient_overlap"]["patients_in_two_splits"] == 1
    assert manifest["options"]["format"] == "nih" and manifest["options"]["input_dir"] == folder


def test_nih_manifest_says_what_it_labels_and_counts_mapped_and_unmapped_labels(nih_built):
    folder, _, manifest = nih_built
    m = manifest_lib.Manifest.from_json(manifest)
    assert m.format == "nih"
    info = m.datasets["nih"]
    assert info.folder == folder and info.official_split
    assert set(info.files) == {"Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt"}
    assert info.labelled == list(nih.LABELLED_OBSERVATIONS) and tuple(info.unlabelled) == NIH_UNLABELLED
    # Written images: lines 2-5 and 8-10 of NIH_ROWS.
    assert info.counts["cardiomegaly"] == {"positive": 1, "negative": 6}
    assert info.counts["pleural_effusion"] == {"positive": 2, "negative": 5}
    assert info.counts["no_finding"] == {"positive": 2, "negative": 5}
    assert set(info.counts) == set(nih.LABELLED_OBSERVATIONS)
    assert info.unmapped_findings == {"Hernia": 1, "Infiltration": 1, "Mass": 1}
    summary = build_records._dataset_summary(m)
    assert summary.startswith("format nih") and "fracture" in summary and "Infiltration=1" in summary
    assert "cardiomegaly 1/6/0/0" in summary and "blank labels" not in summary  # NIH's labels are certain


def test_the_trainer_input_masks_what_nih_does_not_label_whatever_blank_says(nih_built):
    _, out, _ = nih_built
    # --blank=negative would make a blank fracture a negative target: the record's dataset masks it.
    cfg = trainer_config.make_config(pathology="fracture,cardiomegaly,support_devices", records_dir=out,
                                     job_dir="/tmp/unused", image_size=32, blank="negative", views="all",
                                     eval_split="test")
    m = trainer_config.read_manifest(out)
    files = input_lib.shard_files(out, "test", m)
    batches = list(input_lib.make_dataset(files, cfg, training=False, batch_size=4).as_numpy_iterator())
    masks = np.concatenate([b["masks"] for b in batches])
    assert masks.shape == (3, 3)
    order = [chexpert.OBSERVATIONS[i] for i in input_lib.task_indices(cfg.tasks)]
    for j, slug in enumerate(order):
        assert (masks[:, j] == (0.0 if slug in NIH_UNLABELLED else 1.0)).all(), slug


def test_an_unchanged_nih_folder_is_nothing_new_and_a_fixed_row_is_incremental(nih_built, tmp_path):
    folder, out, manifest = nih_built
    again = _run(os.path.dirname(folder), out, "--holdout_fraction=0.5")
    assert again["nothing_new"] and again["snapshot"] == manifest["snapshot"]
    # A copy, fixed: the bad age corrected and its image added; the rest is kept as it was.
    copy = str(tmp_path / "nih")
    shutil.copytree(folder, copy)
    out2 = str(tmp_path / "records")
    first = _run(copy, out2, "--format=nih")
    csv_path = os.path.join(copy, "Data_Entry_2017.csv")
    with open(csv_path) as f:
        text = f.read().replace(",414,", ",44,")
    with open(csv_path, "w") as f:
        f.write(text)
    shutil.copy(os.path.join(copy, "images_001/images/00000005_000.png"),
                os.path.join(copy, "images_001/images/00000006_000.png"))
    second = _run(copy, out2, "--format=nih", "--incremental")
    assert not second["nothing_new"]
    assert second["incremental"]["kept"] == first["written"] == 7
    # Read again: the fixed row, the missing image, the held-out patient's image, the bad id,
    # the unlisted image (the duplicate of a kept image is settled without reading it).
    assert second["incremental"]["processed"] == 5
    assert second["written"] == 8 and second["sources"]["Data_Entry_2017.csv"]["rejected_by_reason"] == {
        "missing_file": 1, "duplicate_path": 1, "patient_in_test": 1, "bad_id": 1, "no_split": 1}
    recs = _records(out2, second)
    assert set(recs) == set(_records(out2, first)) | {"images_001/images/00000006_000.png"}
    assert second["datasets"]["nih"]["counts"]["no_finding"]["positive"] == 3


def test_mimic_records_keep_study_labels_official_splits_and_unknown_views(mimic_built):
    _, out, manifest = mimic_built
    recs = _records(out, manifest)
    expected = {ef.mimic_image(d, s, st): e for d, s, st, _, _, e in ef.MIMIC_ROWS}
    assert {p: split for p, (split, _) in recs.items()} == {p: e for p, e in expected.items()
                                                            if e not in ("no_labels", "no_split")}
    table = chexpert.policy_matrix(manifest["policy"], manifest["blank"])
    for path, (split, rec) in recs.items():
        study = path.split("/")[3][1:]
        cells = ef.MIMIC_LABELS[study]
        want = [int(chexpert.parse_label(cells.get(n, ""))) for n in chexpert.OBSERVATION_NAMES]
        np.testing.assert_array_equal(rec[example_lib.LABELS_RAW], want)
        assert rec[example_lib.SOURCE_DATASET] == b"mimic"
        assert rec[example_lib.SOURCE_LABELS].decode() == "|".join(n for n in chexpert.OBSERVATION_NAMES
                                                                   if cells.get(n) == "1.0")
        assert rec[example_lib.PATIENT_AGE] == -1 and rec[example_lib.PATIENT_SEX] == b"Unknown"
        # MIMIC labels all 14: the mask is the policy's (blank=ignore masks the blanks).
        _, m = example_tf.policy_targets(rec[example_lib.LABELS_RAW], rec[example_lib.LABELS_DRAW], table)
        np.testing.assert_array_equal(rec[example_lib.LABELS_MASK], m.numpy())
    assert recs[ef.mimic_image("d3a", "10000003", "50000003")][1][example_lib.IMAGE_VIEW] == b"unknown"
    assert recs[ef.mimic_image("d1b", "10000001", "50000001")][1][example_lib.IMAGE_PROJECTION] == b"LATERAL"
    src = manifest["sources"]["mimic-cxr-2.0.0-metadata.csv.gz"]
    assert (src["rows"], src["written"], src["rejected_by_reason"]) == (8, 6, {"no_labels": 1, "no_split": 1})
    d3c = ef.mimic_image("d3c", "10000003", "50000004")
    assert [(r["row"], r["reason"], r["path"]) for r in _rejects(out, manifest)] == [(7, "no_labels", "d4a"),
                                                                                      (9, "no_split", d3c)]
    # The test patient's image with no split row is no_split, not a train image of a patient
    # "also in test": the driver's overlap check does not count it.
    assert manifest["patient_overlap"]["patients_in_two_splits"] == manifest["patient_overlap"]["rows_rejected"] == 0
    info = manifest["datasets"]["mimic"]
    assert info["unlabelled"] == [] and info["unmapped_findings"] == {}
    assert info["counts"]["cardiomegaly"] == {"positive": 2, "blank": 4}
    assert info["counts"]["edema"] == {"uncertain": 2, "blank": 4}
    summary = build_records._dataset_summary(manifest_lib.Manifest.from_json(manifest))
    assert "positive/negative/uncertain/blank: no_finding 1/0/0/5" in summary and "cardiomegaly 2/0/0/4" in summary
    assert "blank labels of labelled observations (not mentioned) are masked (not trained on) under --blank=ignore" \
        in summary
    assert set(info["files"]) == {"mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-chexpert.csv",
                                  "mimic-cxr-2.0.0-split.csv"}
    assert manifest["splits"]["valid"]["written"] == 1 and manifest["splits"]["test"]["written"] == 2


def _configure(*argv):
    opts, _ = job_options.build_records_parser("").parse_known_args(list(argv))
    return build_config.configure(opts)


def test_format_is_detected_and_a_format_the_folder_does_not_hold_is_one_line_naming_it(tmp_path, sample_dir):
    nih_dir = ef.make_nih(str(tmp_path / "nih"))
    out = f"--output_dir={tmp_path / 'out'}"
    cfg, dataset = _configure(f"--input_dir={tmp_path}", out)
    assert (cfg.format, cfg.input_dir, dataset.format) == ("nih", nih_dir, "nih")
    assert "format" not in _configure(f"--input_dir={sample_dir}", out)[0].manifest_options()  # CheXpert: as before
    for fmt, where in (("mimic", nih_dir), ("chexpert", nih_dir), ("nih", sample_dir)):
        with pytest.raises(ConfigError) as e:
            _configure(f"--input_dir={where}", f"--format={fmt}", out)
        assert f"--format={fmt}" in str(e.value) and where in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="--format=dicom: expected one of chexpert, nih, mimic"):
        _configure(f"--input_dir={nih_dir}", "--format=dicom", out)
    with pytest.raises(ConfigError, match="--labeller"):
        _configure(f"--input_dir={nih_dir}", "--labeller=/nowhere", out)
    with pytest.raises(ConfigError, match="--format=nih needs --input_dir"):
        _configure("--format=nih", out)


def test_a_folder_without_split_files_says_it_is_all_train_holdout(tmp_path):
    nih_dir = ef.make_nih(str(tmp_path / "nih"))
    for name in ("train_val_list.txt", "test_list.txt"):
        os.remove(os.path.join(nih_dir, name))
    cfg, dataset = _configure(f"--input_dir={nih_dir}", f"--output_dir={tmp_path / 'out'}", "--holdout_fraction=0.2")
    info = manifest_builder.describe_dataset(cfg, dataset, [], {}, {})
    note = ("no official split files (train_val_list.txt and test_list.txt not in the folder): every image split "
            "train/holdout by patient with --holdout_fraction=0.2; no test or valid split")
    assert not info["nih"].official_split and note in info["nih"].notes
    summary = build_records._dataset_summary(manifest_lib.Manifest(observations=list(chexpert.OBSERVATIONS),
                                                                   datasets=info))
    assert f"  note: {note}" in summary.splitlines()


def test_cli_errors_before_any_work_missing_images_and_leaks_with_fail(tmp_path, capsys):
    nih_dir = ef.make_nih(str(tmp_path / "nih"))
    out = str(tmp_path / "out")
    assert build_records.main([f"--input_dir={nih_dir}", "--format=mimic", f"--output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("build_records: error: --format=mimic:") and len(err.splitlines()) == 1
    with pytest.raises(ConfigError, match="patient_overlap=reject"):
        _run(nih_dir, out, "--patient_overlap=fail")
    shutil.rmtree(os.path.join(nih_dir, "images_001"))
    assert build_records.main([f"--input_dir={nih_dir}", f"--output_dir={out}", "--max_reject_fraction=0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "found nowhere below" in err and "images_001/images/" in err and len(err.splitlines()) == 1
    assert not os.path.exists(os.path.join(out, "manifest.json"))
