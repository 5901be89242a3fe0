"""trainer.evaluate on NIH and MIMIC folders: external validation, honestly scored.

A job predicting two tasks NIH labels (atelectasis, pleural_effusion), one it labels but
whose test split has no positive (cardiomegaly) and one it does not label at all
(support_devices), evaluated on the tiny hand-written folders of ``tests.external_folders``.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os

import numpy as np
import pytest
from sklearn import metrics as skm

from core.errors import ConfigError
from schemas import chexpert
from tests import external_folders as ef
from trainer import evaluate

TASKS = ("atelectasis", "cardiomegaly", "pleural_effusion", "support_devices")


@pytest.fixture(scope="module")
def job4(trained_job, tmp_path_factory) -> str:
    """An untrained job (tiny backbone, the session job's config and records) predicting TASKS."""
    import keras

    from trainer import model as model_lib
    from trainer.config import TrainConfig

    with open(os.path.join(trained_job, "config.json")) as f:
        cfg = TrainConfig.from_json(f.read())
    dst = str(tmp_path_factory.mktemp("job4"))
    cfg = dataclasses.replace(cfg, tasks=TASKS, job_dir=dst)
    keras.utils.set_random_seed(4)
    model_lib.probability_model(model_lib.build_model(cfg), cfg).save(os.path.join(dst, "model.keras"))
    with open(os.path.join(dst, "config.json"), "w") as f:
        f.write(cfg.to_json())
    return dst


def _text(folder, name, parse=str):
    with open(os.path.join(folder, name)) as f:
        return parse(f.read())


def _predictions(report_dir) -> dict[str, dict]:
    with open(os.path.join(report_dir, "predictions.csv")) as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def test_nih_test_split_scored_unlabelled_task_left_out_with_reason_and_dead_letters_listed(job4, tmp_path):
    folder = ef.write_nih(str(tmp_path))
    # A second row of a test image (line 13), labelled otherwise: a duplicate_path dead letter,
    # the first row scored (the AUROCs below are of NIH_ROWS' labels).
    with open(os.path.join(folder, "Data_Entry_2017.csv"), "a") as f:
        f.write("00000003_000.png,Atelectasis,0,3,40,F,PA,1024,1024,0.143,0.143\n")
    rd = str(tmp_path / "r")
    out = evaluate.run([job4], input_dir=str(tmp_path), n_boot=100, report_dir=rd)  # the parent: detected
    src = out["source"]
    assert src["kind"] == "dataset" and src["format"] == "nih" and src["folder"] == folder
    assert src["split"] == "test" and "official test split" in src["rule"]
    assert src["counts"] == {"rows": 12, "readable": 10, "other_split": 2, "on_no_list": 0, "view": 0,
                             "selected": 8}
    # NIH does not label support devices: absent from the scored tasks, its reason in metrics.json.
    assert set(out["tasks"]) == {"atelectasis", "cardiomegaly", "pleural_effusion"}
    ext = _text(rd, "metrics.json", json.loads)["external"]
    assert ext["external"] and ext["trained_on"] == ["chexpert"]
    assert ext["datasets"] == ["nih"] and ext["labelled_tasks"] == ["cardiomegaly", "atelectasis", "pleural_effusion"]
    assert "does not label it" in ext["unscored"]["support_devices"]
    assert not ext["tasks"]["support_devices"]["labelled"]
    # Cardiomegaly is labelled, but no test image has it: unscored, and said why.
    assert out["tasks"]["cardiomegaly"]["positives"] == 0 and "no positive studies" in ext["unscored"]["cardiomegaly"]
    assert ext["scored_tasks"] == ["atelectasis", "pleural_effusion"]  # chexpert.OBSERVATIONS order
    # Dead letters: the bad row (label file) and the missing image, with their reasons.
    dead = ext["dead_letters"]
    assert dead["by_reason"] == {"bad_age": 1, "missing_file": 1, "duplicate_path": 1}
    assert sorted((d["row"], d["reason"]) for d in dead["rows"]) == [(9, "bad_age"), (10, "missing_file"),
                                                                      (13, "duplicate_path")]
    # AUROC as sklearn's over the 7 readable test images (one NIH image = one study).
    preds = _predictions(rd)
    expected = {f"images_001/images/{r[0]}": r[1] for r in ef.NIH_ROWS if r[7] == "test"
                and r[0] not in (ef.NIH_BAD, ef.NIH_MISSING)}
    assert set(preds) == set(expected)
    for task, label in (("atelectasis", "Atelectasis"), ("pleural_effusion", "Effusion")):
        y = np.array([label in expected[p].split("|") for p in sorted(preds)])
        p = np.array([float(preds[k][f"p_{task}"]) for k in sorted(preds)])
        assert out["tasks"][task]["auroc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-9)
        assert ext["tasks"][task]["auroc"] == out["tasks"][task]["auroc"]
        assert out["tasks"][task]["positives"] == y.sum() and out["tasks"][task]["negatives"] == len(y) - y.sum()
    # Blank is "not labelled", never negative: every NIH row is blank for support devices.
    assert {r["label_support_devices"] for r in preds.values()} == {str(int(chexpert.Code.BLANK))}
    md = _text(rd, "report.md")
    assert "## External validation" in md and "Evaluated on NIH ChestX-ray14; the model was trained on CheXpert." in md
    assert "support_devices" in md and "does not label it" in md and "never counted as negative" in md
    assert "Thresholds were not chosen on NIH ChestX-ray14" in md
    assert "Data_Entry_2017.csv:10" in md and "missing_file" in md and "bad_age" in md
    assert "8 of the label file's 12 rows selected: the official test split" in md
    assert "Data_Entry_2017.csv:13" in md and "already appears at Data_Entry_2017.csv line 5" in md
    assert "<h2>External validation</h2>" in _text(rd, "report.html")
    # The paper's AUROCs are CheXpert's: beside another site's numbers the column says so.
    assert "| paper AUROC on CheXpert |" in md and "| paper AUROC |" not in md


def test_csv_naming_the_nih_label_file_reads_its_folder_and_split_all_scores_every_row(job4, tmp_path):
    folder = ef.write_nih(str(tmp_path))
    out = evaluate.run([job4], csv_path=os.path.join(folder, "Data_Entry_2017.csv"), split="all", tune_split="",
                       n_boot=0, report_dir=str(tmp_path / "r"))
    assert out["source"]["kind"] == "dataset" and out["source"]["split"] is None
    assert out["images"] == 9 and out["source"]["counts"]["selected"] == 10  # one image missing
    assert out["tasks"]["cardiomegaly"]["positives"] == 1  # the train_val image counts now
    with pytest.raises(ConfigError, match="official splits are train_val, test"):
        evaluate.run([job4], input_dir=folder, split="valid", tune_split="", n_boot=0, report_dir=str(tmp_path / "x"))
    os.remove(os.path.join(folder, "test_list.txt"))
    os.remove(os.path.join(folder, "train_val_list.txt"))
    with pytest.raises(ConfigError, match="no official split file"):
        evaluate.run([job4], input_dir=folder, split="test", tune_split="", n_boot=0, report_dir=str(tmp_path / "y"))
    out = evaluate.run([job4], input_dir=folder, tune_split="", n_boot=0, report_dir=str(tmp_path / "z"))
    assert out["source"]["split"] is None and "ships no official split file" in out["source"]["rule"]


def test_mimic_studies_are_the_max_over_their_frontal_images(job4, tmp_path):
    folder = ef.write_mimic(str(tmp_path))
    rd = str(tmp_path / "r")
    out = evaluate.run([job4], input_dir=folder, dataset_format="mimic", n_boot=50, tune_split="", report_dir=rd)
    src = out["source"]
    # Test split: 10 images; 3 lateral ones left out (study 50000004 has nothing else).
    assert src["split"] == "test" and src["counts"]["selected"] == 7 and src["counts"]["view"] == 3
    preds = _predictions(rd)
    assert not any(p.endswith(("d1c.jpg", "d3b.jpg", "d4a.jpg")) for p in preds)
    studies = collections.defaultdict(list)
    for r in preds.values():
        studies[r["study"]].append(r)
    assert len(studies) == out["studies"] == 5
    labels = {f"{s[0]}/{s[1]}": s[3] for s in ef.MIMIC_STUDIES}
    for task in ("atelectasis", "pleural_effusion"):
        # 1.0 positive, 0.0 and blank negative (the CheXpert labeler's "not mentioned"), -1.0 left out.
        keep = [s for s in sorted(studies) if labels[s].get(task, "") != "-1.0"]
        y = np.array([labels[s].get(task) == "1.0" for s in keep])
        p = np.array([max(float(r[f"p_{task}"]) for r in studies[s]) for s in keep])
        assert out["tasks"][task]["auroc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-9)
    t, e = out["tasks"]["atelectasis"], out["tasks"]["pleural_effusion"]
    assert (t["positives"], t["negatives"], e["positives"], e["negatives"]) == (2, 3, 1, 3)
    # MIMIC labels every observation: support devices is scored (all blank: no positive study).
    assert set(out["external"]["labelled_tasks"]) == set(TASKS)
    assert "no positive studies" in out["external"]["unscored"]["support_devices"]


def test_aggregate_leaves_out_what_a_dataset_does_not_label_and_keeps_datasets_apart():
    blank, pos, neg = int(chexpert.Code.BLANK), int(chexpert.Code.POSITIVE), int(chexpert.Code.NEGATIVE)

    def pred(dataset, study, fracture, edema, p):
        return {"dataset": dataset, "study": study, "raw": {"fracture": fracture, "edema": edema},
                "probs": {"fracture": p, "edema": p}}

    preds = {"a.jpg": pred("chexpert", "s1", blank, pos, 0.9), "b.png": pred("nih", "s1", blank, neg, 0.2),
             "c.png": pred("nih", "s2", blank, pos, 0.7)}
    scored = evaluate.aggregate(preds, ["fracture", "edema"], "study")
    # CheXpert's blank fracture is negative; NIH's (not labelled) is left out; "s1" of two
    # datasets are two studies.
    assert scored["fracture"][0].tolist() == [0] and scored["edema"][0].tolist() == [1, 0, 1]
    absent, partly = evaluate.not_labelled(preds, ["fracture", "edema"], "study")
    assert absent == {} and partly == [("fracture: 2 studies of NIH ChestX-ray14 left out (that dataset does not "
                                        "label it).")]
    nih_only = {k: v for k, v in preds.items() if v["dataset"] == "nih"}
    assert "fracture" not in evaluate.aggregate(nih_only, ["fracture", "edema"], "study")
    absent, _ = evaluate.not_labelled(nih_only, ["fracture", "edema"], "study")
    assert list(absent) == ["fracture"]


def _as_nih(records: bytes) -> bytes:
    """A CheXpert record rewritten as build_records writes an NIH one: ``source/dataset`` nih,
    and the observations NIH does not label blank."""
    import tensorflow as tf

    from schemas import example as ex
    from schemas import sources

    e = tf.train.Example.FromString(records)
    f = e.features.feature
    raw = list(f[ex.LABELS_RAW].int64_list.value)
    for slug in chexpert.OBSERVATIONS:
        if slug not in sources.labelled("nih"):
            raw[chexpert.OBSERVATION_INDEX[slug]] = int(chexpert.Code.BLANK)
    del f[ex.LABELS_RAW].int64_list.value[:]
    f[ex.LABELS_RAW].int64_list.value.extend(raw)
    f[ex.SOURCE_DATASET].bytes_list.value.append(b"nih")
    f[ex.SOURCE_LABELS].bytes_list.value.append(b"No Finding")
    return e.SerializeToString()


def test_records_dir_of_another_dataset_is_scored_by_what_each_record_says_it_is(job4, records_dir, tmp_path):
    """--records_dir: the valid split's first shard rewritten as NIH records, the second left
    CheXpert: support devices is scored on the CheXpert studies only, and the report says
    how many NIH studies it left out."""
    import shutil

    from core import tfrecord
    from trainer.config import read_manifest

    other = str(tmp_path / "records")
    shutil.copytree(records_dir, other)
    manifest = read_manifest(other)
    first = os.path.join(other, manifest.splits["valid"].shards[0])
    with open(first, "rb") as f:
        rewritten = [_as_nih(r) for r in tfrecord.read_records(f)]
    with open(first, "wb") as f:
        for r in rewritten:
            tfrecord.write_record(f, r)
    from trainer import input as input_lib

    with pytest.raises(ValueError, match="no split 'train_val'; its splits are " + ", ".join(sorted(manifest.splits))):
        input_lib.shard_files(other, "train_val", manifest)
    rd = str(tmp_path / "r")
    # MIMIC's name for the records' valid split is accepted, as --input_dir accepts valid for validate.
    out = evaluate.run([job4], records_dir=other, split="validate", n_boot=50, report_dir=rd)
    assert out["source"]["kind"] == "records" and not out["source"]["own"] and out["source"]["split"] == "valid"
    assert out["tune_split"] == "holdout"  # thresholds still tuned on the job's own records
    assert out["external"]["datasets"] == ["chexpert", "nih"]
    preds = _predictions(rd)
    nih = _nih_paths(first)
    studies = collections.defaultdict(list)
    for r in preds.values():
        studies[r["study"]].append(r)
    for task in TASKS:
        y, p = [], []
        for rows in studies.values():
            code = int(rows[0][f"label_{task}"])
            if code == int(chexpert.Code.UNCERTAIN) or (code == int(chexpert.Code.BLANK) and task == "support_devices"
                                                         and rows[0]["path"] in nih):
                continue
            y.append(code == int(chexpert.Code.POSITIVE))
            p.append(max(float(r[f"p_{task}"]) for r in rows))
        t = out["tasks"][task]
        assert (t["positives"], t["negatives"]) == (sum(y), len(y) - sum(y))
        if 0 < sum(y) < len(y):
            assert t["auroc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-9)
    nih_studies = len({r["study"] for r in preds.values() if r["path"] in nih})
    assert f"support_devices: {nih_studies} studies of NIH ChestX-ray14 left out" in " ".join(out["notes"])
    assert not any("chose its best epoch" in n for n in out["notes"])  # not the records it was selected on


def _nih_paths(shard: str) -> set[str]:
    import tensorflow as tf

    from core import tfrecord
    from schemas import example as ex

    with open(shard, "rb") as f:
        return {tf.train.Example.FromString(r).features.feature[ex.SOURCE_PATH].bytes_list.value[0].decode()
                for r in tfrecord.read_records(f)}


@pytest.mark.parametrize("fmt", ["nih", "mimic"])
def test_a_generated_external_set_is_evaluated_and_said_to_be_synthetic(trained_job, fmt, tmp_path):
    """pipeline.make_external's layouts (NIH's split lists and RGBA PNGs, MIMIC's .csv.gz
    files): every row is a scored image or a dead letter, and the report warns the data is
    synthetic."""
    from pipeline import make_external

    if fmt == "nih":
        folder = make_external.generate_nih(str(tmp_path), num_patients=12, seed=0, image_size=64, workers=1)
    else:
        folder = make_external.generate_mimic(str(tmp_path), num_subjects=6, seed=0, image_size=64, workers=1)
    out = evaluate.run([trained_job], input_dir=str(tmp_path), split="all", tune_split="", n_boot=20, views="all",
                       report_dir=str(tmp_path / "r"))
    src = out["source"]
    assert src["folder"] == folder and src["format"] == fmt and src["synthetic"]
    assert any(w.startswith("Evaluated on SYNTHETIC data") and "make_external" in w for w in out["warnings"])
    c = src["counts"]
    assert c["rows"] == c["readable"] + len([d for d in out["unreadable"] if d["reason"] not in (
        "missing_file", "unreadable_file", "not_an_image")])
    assert out["images"] == c["selected"] - (len(out["unreadable"]) - (c["rows"] - c["readable"]))
    assert src["split"] is None and c["selected"] == c["readable"]
    assert out["external"]["labelled_tasks"] == ["cardiomegaly", "atelectasis"]
    # Records built from the same folder say so too (a model trained on them then warns).
    from pipeline import build_records

    m = build_records.run([f"--input_dir={folder}", f"--output_dir={tmp_path / 'records'}", "--image_size=32",
                           "--runner=DirectRunner", "--max_reject_fraction=1"])
    assert m["options"]["synthetic"] is True


def test_the_synthetic_warning_names_the_generator_of_each_synthetic_format():
    def said(source):
        return [w for w in evaluate.warnings_for(source, []) if w.startswith("Evaluated on SYNTHETIC")]

    def records(*entries):
        return {"kind": "records", "records": [{"format": f, "synthetic": s} for f, s in entries]}

    assert "made by pipeline.make_sample," in said({"kind": "csv", "synthetic": True})[0]  # a CheXpert folder
    assert "made by pipeline.make_external," in said({"kind": "dataset", "format": "nih", "synthetic": True})[0]
    assert "made by pipeline.make_sample," in said(records(("chexpert", True)))[0]
    assert "made by pipeline.make_external," in said(records(("mimic", True)))[0]
    # An ensemble on synthetic CheXpert records and real NIH ones: the synthetic data is make_sample's.
    assert "made by pipeline.make_sample," in said(records(("chexpert", True), ("nih", False)))[0]
    assert "pipeline.make_sample and pipeline.make_external" in said(records(("chexpert", True), ("nih", True)))[0]
    assert said({"kind": "csv", "synthetic": False}) == said(records(("nih", False))) == []


def test_a_chexpert_input_dir_is_its_valid_csv(sample_dir):
    from pipeline import make_sample

    dataset = os.path.join(sample_dir, make_sample.DATASET_DIR)
    for folder in (sample_dir, dataset):
        assert evaluate.chexpert_csv(folder, None) == (os.path.join(dataset, "valid.csv"), sample_dir)
    assert evaluate.chexpert_csv(sample_dir, "train")[0] == os.path.join(dataset, "train.csv")
    with pytest.raises(ConfigError, match="no test.csv"):
        evaluate.chexpert_csv(sample_dir, "test")


def test_a_model_trained_on_the_evaluated_dataset_is_not_called_an_external_validation():
    from trainer import report

    y, p = np.array([1, 0, 1, 0]), np.array([0.9, 0.2, 0.6, 0.4])
    results = report.compute({"atelectasis": (y, p)}, {}, 0.35, 20, 0)
    source = {"kind": "records", "split": "test", "own": True, "records": []}
    absent = {"fracture": "NIH ChestX-ray14 does not label it"}
    meta = {"level": "study", "source": source}
    for trained, heading, warned in ((["nih"], "Labels of the evaluated dataset", False),
                                     (["chexpert"], "External validation", True),
                                     (None, "External validation", True)):
        meta["external"] = evaluate.external_summary(["atelectasis", "fracture"], results, absent, source, ["nih"], [],
                                                     "holdout", trained)
        blocks = report.external_blocks(results, meta)
        text = report.render_markdown(blocks)
        assert text.startswith(f"## {heading}") and ("Thresholds were not chosen" in text) == warned
        assert meta["external"]["unscored"] == {"fracture": "NIH ChestX-ray14 does not label it"}
    assert "what the model was trained on is unknown" in text


def test_records_build_records_made_of_an_nih_folder_score_as_the_folder_itself(job4, tmp_path):
    """The two roads to an external validation agree: build_records' NIH records
    (--records_dir, split test) and the folder's images read directly (--input_dir)."""
    from pipeline import build_records

    folder = ef.write_nih(str(tmp_path / "in"))
    records = str(tmp_path / "records")
    build_records.run([f"--input_dir={folder}", f"--output_dir={records}", "--image_size=32", "--num_shards=1",
                       "--max_reject_fraction=0.5", "--runner=DirectRunner"])
    via_records = evaluate.run([job4], records_dir=records, split="test", tune_split="", n_boot=50,
                               report_dir=str(tmp_path / "a"))
    direct = evaluate.run([job4], input_dir=folder, tune_split="", n_boot=50, report_dir=str(tmp_path / "b"))
    assert via_records["external"]["datasets"] == ["nih"] and via_records["images"] == direct["images"] == 7
    assert set(via_records["tasks"]) == set(direct["tasks"]) == {"atelectasis", "cardiomegaly", "pleural_effusion"}
    for task in ("atelectasis", "pleural_effusion"):
        assert via_records["tasks"][task]["auroc"] == pytest.approx(direct["tasks"][task]["auroc"], abs=1e-6)
    assert _predictions(str(tmp_path / "a")).keys() == _predictions(str(tmp_path / "b")).keys()
