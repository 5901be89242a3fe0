"""schemas/manifest.py: the typed records manifest reads every manifest.json the job has
written and writes it back with the same keys and values; neither TensorFlow nor Beam."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import tests
from schemas import manifest as manifest_lib

ROOT = tests.ROOT
SNAP = "snapshot-20261126T111828-ffc05385"
COUNTS = {"atelectasis": {"-1": 4, "1": 4, "blank": 18}, "edema": {"0": 3, "1": 12}}

# The shape build_records committed before the manifest was typed (no manifest_version): a
# U-SelfTrained build (its labeller under ``teacher``) that was updated incrementally, so one
# shard was compacted (no index / num_shards).
OLD = {
    "blank": "negative",
    "created": "2026-11-26T11:18:29+00:00",
    "encoding": "raw",
    "files": {f"{SNAP}/train-00000-of-00001.tfrecord": 9809430, f"{SNAP}/index.tsv": 50123,
              f"{SNAP}/rejected-train.jsonl": 0},
    "fingerprint": "ab" * 32,
    "image_size": 320,
    "incremental": {"kept": 90, "processed": 5, "tag": "u20261126T111828"},
    "index_file": f"{SNAP}/index.tsv",
    "observations": ["no_finding", "atelectasis"],
    "options": {"blank": "negative", "encoding": "raw", "holdout_fraction": 0.2, "image_size": 320,
                "incremental": True, "input_dir": "/data", "output_dir": "/records", "synthetic": True,
                "teacher": "/jobs/labeller", "teacher_batch_size": 32, "teacher_sha256": "cd" * 32},
    "patient_overlap": {"mode": "reject", "rows_rejected": 0, "valid_patients": 12},
    "policy": {"atelectasis": "ones", "consolidation": "self_trained"},
    "record_order": "frontal-first-path",
    "rejected": 1,
    "rejected_files": [f"{SNAP}/rejected-train.jsonl"],
    "rows": 96,
    "schema_version": 2,
    "shard_stats": {
        f"{SNAP}/train-00000-of-00001.tfrecord": {
            "bytes": 9809430, "index": 0, "num_shards": 1, "raw_counts": COUNTS, "relabelled": {"consolidation": 3},
            "shard": f"{SNAP}/train-00000-of-00001.tfrecord", "split": "train", "target_counts": COUNTS,
            "views": {"frontal": 60, "lateral": 30}, "written": 90},
        f"{SNAP}/train-00001-of-00002.u1.tfrecord": {
            "bytes": 512, "raw_counts": COUNTS, "relabelled": {}, "shard": f"{SNAP}/train-00001-of-00002.u1.tfrecord",
            "split": "train", "target_counts": COUNTS, "views": {"frontal": 5}, "written": 5},
    },
    "snapshot": SNAP,
    "sources": {"train.csv": {"path": "/data/CheXpert-v1.0-small/train.csv", "rejected": 1,
                              "rejected_by_reason": {"missing_file": 1}, "rows": 96, "sha256": "ef" * 32,
                              "written": 95}},
    "splits": {"train": {"bytes": 9809942, "num_shards": 2, "raw_counts": COUNTS, "rejected": 1,
                         "rejected_by_reason": {"missing_file": 1}, "rows": 96,
                         "shards": [f"{SNAP}/train-00000-of-00001.tfrecord",
                                    f"{SNAP}/train-00001-of-00002.u1.tfrecord"],
                         "target_counts": COUNTS, "views": {"frontal": 65, "lateral": 30}, "written": 95}},
    "teacher": {"job_dir": "/jobs/labeller", "model_sha256": "cd" * 32, "observations": ["consolidation"],
                "relabelled": {"train": {"consolidation": 3}}, "tasks": ["consolidation", "edema"],
                "trained_policy": {"consolidation": "ignore"}},
    "written": 95,
}


def test_an_old_manifest_reads_typed_and_writes_back_equal():
    m = manifest_lib.Manifest.from_json(copy.deepcopy(OLD))
    assert m.manifest_version == 1  # none recorded: the first typed version
    assert m.splits["train"].shards[1].endswith(".u1.tfrecord") and m.splits["train"].views["frontal"] == 65
    assert m.sources["train.csv"].rejected_by_reason == {"missing_file": 1}
    compacted = m.shard_stats[f"{SNAP}/train-00001-of-00002.u1.tfrecord"]
    assert compacted.index is None and compacted.num_shards is None and compacted.written == 5
    assert m.labeller.observations == ["consolidation"] and m.labeller.relabelled["train"]["consolidation"] == 3
    assert m.synthetic and m.incremental["processed"] == 5
    back = m.to_json()
    assert back == {**OLD, "manifest_version": manifest_lib.MANIFEST_VERSION}
    assert json.loads(json.dumps(back, sort_keys=True)) == back  # plain JSON all the way down


def test_unknown_keys_are_kept_and_missing_ones_take_defaults():
    future = copy.deepcopy(OLD)
    future["manifest_version"] = 7
    future["lineage"] = {"parent": "abc"}
    future["splits"]["train"]["checksum"] = "x"
    future["shard_stats"][f"{SNAP}/train-00000-of-00001.tfrecord"]["entropy"] = 0.5
    m = manifest_lib.Manifest.from_json(future)
    assert m.extra == {"lineage": {"parent": "abc"}} and m.splits["train"].extra == {"checksum": "x"}
    assert m.to_json() == future
    sparse = manifest_lib.Manifest.from_json({"image_size": 64, "splits": {"valid": {"written": 3, "shards": ["a"]}}})
    assert sparse.splits["valid"].views is None  # from before views were counted
    assert "views" not in sparse.splits["valid"].to_json()
    assert sparse.labeller is None and sparse.to_json()["teacher"] is None and sparse.blank == "negative"


def test_the_labeller_is_read_under_its_new_key_too():
    d = copy.deepcopy(OLD)
    d["labeller"] = d.pop("teacher")
    m = manifest_lib.Manifest.from_json(d)
    assert m.labeller.job_dir == "/jobs/labeller"
    assert m.to_json()["teacher"] == OLD["teacher"] and "labeller" not in m.to_json()


def test_an_external_build_says_its_dataset_and_an_old_manifest_reads_as_chexpert():
    old = manifest_lib.Manifest.from_json(copy.deepcopy(OLD))
    assert old.datasets is None and old.format == "chexpert" and "datasets" not in old.to_json()
    d = copy.deepcopy(OLD)
    d["datasets"] = {"nih": {
        "format": "nih", "folder": "/data/ChestX-ray14", "official_split": True,
        "files": {"Data_Entry_2017.csv": {"sha256": "ab" * 32, "rows": 96}, "test_list.txt": {"sha256": "cd" * 32,
                                                                                               "rows": 20}},
        "labelled": ["no_finding", "cardiomegaly"], "unlabelled": ["fracture"],
        "counts": {"cardiomegaly": {"positive": 3, "negative": 92}}, "unmapped_findings": {"Mass": 4},
        "notes": [], "future_key": 1}}
    m = manifest_lib.Manifest.from_json(d)
    info = m.datasets["nih"]
    assert m.format == "nih" and info.unmapped_findings == {"Mass": 4} and info.extra == {"future_key": 1}
    assert info.files["test_list.txt"]["rows"] == 20 and info.counts["cardiomegaly"]["positive"] == 3
    assert m.to_json() == {**d, "manifest_version": 1}
    assert json.loads(json.dumps(m.to_json())) == m.to_json()


def test_split_totals_add_up_their_shards():
    sp = manifest_lib.SplitInfo(views={}, raw_counts=manifest_lib.empty_counts(["atelectasis", "edema"]))
    for st in OLD["shard_stats"].values():
        sp.add_shard(manifest_lib.ShardStats.from_json(st))
    sp.add_reject("missing_file")
    assert (sp.written, sp.num_shards, sp.rejected, sp.views) == (95, 2, 1, {"frontal": 65, "lateral": 30})
    assert sp.raw_counts["atelectasis"] == {"-1": 8, "1": 8, "blank": 36}


def test_schemas_manifest_imports_neither_tensorflow_nor_beam():
    code = ("import sys; from schemas import manifest; "
            "assert not {'tensorflow', 'apache_beam'} & set(sys.modules), sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
