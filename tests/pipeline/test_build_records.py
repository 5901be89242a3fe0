"""End-to-end: the Beam job on DirectRunner over generated data, read back with tf.data."""

from __future__ import annotations

import collections
import csv
import fcntl
import hashlib
import json
import logging
import os
import socket

import numpy as np
import pytest
import tensorflow as tf

import tests
from core import commit, imaging, storage
from pipeline import build_records, make_sample, runs, score
from schemas import chexpert
from schemas import example as example_lib
from schemas import example_tf
from tests import badinputs

def _run(input_dir, output_dir, *extra):
    return build_records.run([f"--input_dir={input_dir}", f"--output_dir={output_dir}", "--image_size=64",
                              "--runner=DirectRunner", *extra])

def _read_split(output_dir, manifest, split):
    files = [os.path.join(output_dir, n) for n in manifest["splits"][split]["shards"]]
    ds = tf.data.TFRecordDataset(files).map(example_tf.parse)
    return list(ds.as_numpy_iterator())

@pytest.fixture(scope="module")
def built(sample_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("records"))
    manifest = _run(sample_dir, out, "--holdout_fraction=0.25", "--num_shards=2")
    return sample_dir, out, manifest

def test_records_read_back_through_the_schema_match_the_csv(built):
    sample_dir, out, manifest = built
    csv_rows = {}
    for name in ("train.csv", "valid.csv"):
        with open(os.path.join(sample_dir, make_sample.DATASET_DIR, name)) as f:
            for r in csv.DictReader(f):
                csv_rows[r["Path"]] = r
    seen = {}
    table = chexpert.policy_matrix(manifest["policy"], manifest["blank"])
    for split in ("train", "holdout", "valid"):
        recs = _read_split(out, manifest, split)
        assert len(recs) == manifest["splits"][split]["written"] > 0
        for rec in recs:
            path = rec[example_lib.SOURCE_PATH].decode()
            assert path not in seen
            seen[path] = split
            assert rec["image"].shape == (64, 64, 1) and rec["image"].dtype == np.uint8
            want = [int(chexpert.parse_label(csv_rows[path][n])) for n in chexpert.OBSERVATION_NAMES]
            np.testing.assert_array_equal(rec[example_lib.LABELS_RAW], want)
            t, m = example_tf.policy_targets(rec[example_lib.LABELS_RAW], rec[example_lib.LABELS_DRAW], table)
            np.testing.assert_array_equal(t.numpy(), rec[example_lib.LABELS_TARGET])
            np.testing.assert_array_equal(m.numpy(), rec[example_lib.LABELS_MASK])
    assert set(seen) == set(csv_rows)  # every row written exactly once
    assert all(("/valid/" in p) == (s == "valid") for p, s in seen.items())
    patients = collections.defaultdict(set)
    for p, s in seen.items():
        patients[p.split("/")[2]].add(s)
    assert all(len(s) == 1 for s in patients.values()), "a patient is in two splits"
    assert sum(s == "holdout" for s in seen.values()) > 0

def test_manifest_reconciles_and_counts_codes(built):
    sample_dir, out, manifest = built
    assert manifest["rows"] == manifest["written"] + manifest["rejected"] and manifest["rejected"] == 0
    assert manifest["options"]["synthetic"] is True
    for name, src in manifest["sources"].items():
        with open(os.path.join(sample_dir, make_sample.DATASET_DIR, name), "rb") as f:

            assert src["sha256"] == hashlib.sha256(f.read()).hexdigest()
    train = manifest["splits"]["train"]
    assert train["num_shards"] == len(train["shards"]) == 2
    assert sum(train["raw_counts"]["edema"].values()) == train["written"]
    assert sum(os.path.getsize(os.path.join(out, n)) for n in train["shards"]) == train["bytes"]
    card = manifest["splits"]["train"]["target_counts"]["cardiomegaly"]
    assert card.get("2", 0) == train["raw_counts"]["cardiomegaly"].get("-1", 0)  # multiclass: uncertain = class 2
    assert manifest["policy"]["consolidation"] == "ignore"
    # Every file in the folder is the committed snapshot's, the pointer or the lock.
    assert set(storage.files_under(out)) == set(manifest["files"]) | {"manifest.json", ".lock"}
    assert {n.split("/")[0] for n in manifest["files"]} == {manifest["snapshot"]}

def test_an_output_committed_before_folders_left_the_fingerprint_is_still_nothing_new(built, tmp_path, monkeypatch):
    # Earlier releases fingerprinted --input_dir and --output_dir as spelled; their outputs
    # must stay "nothing new" on unchanged input, not ask for --overwrite.
    sample_dir, _, _ = built
    out = str(tmp_path / "old")
    current = build_records.inputs.input_fingerprint
    monkeypatch.setattr(build_records.inputs, "input_fingerprint",
                        lambda cfg, sources, rows, dataset=None, with_folders=False: current(cfg, sources, rows,
                                                                                             dataset, True))
    old = _run(sample_dir, out, "--holdout_fraction=0.25", "--num_shards=2")
    monkeypatch.setattr(build_records.inputs, "input_fingerprint", current)
    again = _run(sample_dir, out, "--holdout_fraction=0.25", "--num_shards=2")
    assert again["nothing_new"] is True and again["fingerprint"] == old["fingerprint"]
    assert _run(sample_dir, out + "/", "--holdout_fraction=0.25", "--num_shards=2", "--incremental")["written"] == \
        old["written"]


def test_rerun_on_unchanged_input_is_nothing_new_and_other_options_need_overwrite(built, tmp_path):
    sample_dir, out, manifest = built
    before = {n: (os.path.getmtime(os.path.join(out, n)), open(os.path.join(out, n), "rb").read())
              for n in storage.files_under(out) if n != ".lock"}
    again = _run(sample_dir, out, "--holdout_fraction=0.25", "--num_shards=2")
    assert again["nothing_new"] is True
    assert {n: (os.path.getmtime(os.path.join(out, n)), open(os.path.join(out, n), "rb").read())
            for n in storage.files_under(out) if n != ".lock"} == before
    with pytest.raises(build_records.ConfigError, match="already holds records.*--overwrite"):
        _run(sample_dir, out, "--holdout_fraction=0.25", "--num_shards=2", "--policy=edema=zeros")


def test_a_second_run_on_a_locked_output_exits_with_a_clear_message(built, trained_job, tmp_path, capsys):
    sample_dir, _, _ = built
    out = tmp_path / "locked"
    out.mkdir()
    # A live holder: another open file description holding the kernel lock.
    with open(out / ".lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        holder.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
        holder.flush()
        with pytest.raises(commit.LockedError, match=f"locked by another run \\(pid {os.getpid()}"):
            _run(sample_dir, str(out))
        assert not (out / "manifest.json").exists()
        # The command lines: exit 2 (README: a held lock), one line naming the holder.
        capsys.readouterr()
        assert build_records.main([f"--input_dir={sample_dir}", f"--output_dir={out}", "--runner=DirectRunner"]) == 2
        assert f"build_records: error: {out} is locked by another run (pid {os.getpid()}" in capsys.readouterr().err
        assert score.main([f"--job_dir={trained_job}", f"--output_dir={out}", "--runner=DirectRunner",
                           f"--input_pattern={sample_dir}/**/*.jpg"]) == 2
        assert f"score: error: {out} is locked by another run (pid {os.getpid()}" in capsys.readouterr().err
    # What a dead or failed run leaves behind (a stale pid, an empty file after a full disk,
    # garbage) is no lock at all: the kernel released it with the process.
    for leftover in (json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}), "", "\x00garbage{"):
        (out / ".lock").write_text(leftover)
        m = _run(sample_dir, str(out), "--overwrite")
        assert m["written"] > 0
    assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()  # the last holder, for messages


def test_full_rebuild_elsewhere_is_byte_identical(built, tmp_path):
    sample_dir, out, manifest = built
    again = str(tmp_path / "again")
    m2 = _run(sample_dir, again, "--holdout_fraction=0.25", "--num_shards=2")
    assert m2["snapshot"] != manifest["snapshot"]  # every run writes new files
    for sp, sp2 in zip(manifest["splits"].values(), m2["splits"].values()):
        for name, name2 in zip(sp["shards"], sp2["shards"]):
            assert name.split("/")[1] == name2.split("/")[1]  # the same shard names within the snapshot
            with open(os.path.join(out, name), "rb") as a, open(os.path.join(again, name2), "rb") as b:
                assert a.read() == b.read(), name

    def unsnapshotted(splits):
        return {k: {**sp, "shards": [n.split("/")[1] for n in sp["shards"]]} for k, sp in splits.items()}
    assert unsnapshotted(m2["splits"]) == unsnapshotted(manifest["splits"])

def test_every_bad_input_is_a_counted_dead_letter(tmp_path):
    root = str(tmp_path / "in")
    make_sample.generate(root, num_patients=4, num_valid_patients=2, seed=3, workers=1, progress=False)
    expected = badinputs.plant(root)
    out = str(tmp_path / "out")
    manifest = _run(root, out, "--encoding=png", "--max_reject_fraction=1")
    with open(os.path.join(out, manifest["rejected_files"][0])) as f:
        rejects = [json.loads(line) for line in f]
    got = collections.Counter(r["reason"] for r in rejects)
    want = collections.Counter(r for r in expected.values() if r)
    assert got == want
    for r in rejects:
        assert r["source"] == "train.csv" and r["row"] > 1 and r["detail"]
        if not r["path"].startswith(("__", "too")) and r["reason"] not in ("bad_encoding", "bad_row"):
            assert expected.get(r["path"]) == r["reason"] or r["reason"] == "duplicate_path"
    src = manifest["sources"]["train.csv"]
    assert src["rows"] == src["written"] + src["rejected"]
    assert src["rejected_by_reason"] == dict(want)
    written = {rec[example_lib.SOURCE_PATH].decode(): rec for rec in _read_split(out, manifest, "train")}
    for path, reason in expected.items():
        if reason is None:  # RGB JPEG, 16-bit PNG, DICOM: converted and written
            assert written[path]["image"].shape == (64, 64, 1)
    dcm = written["CheXpert-v1.0-small/train/patient90006/study1/view1_frontal.dcm"]["image"][..., 0]
    assert dcm[0, 0] > dcm[-1, -1]  # MONOCHROME1 inverted: the low raw values are bright

def test_bad_header_fails_before_any_work_naming_the_column(tmp_path):
    root = str(tmp_path / "in")
    make_sample.generate(root, num_patients=2, num_valid_patients=1, workers=1, progress=False)
    path = os.path.join(root, make_sample.DATASET_DIR, "valid.csv")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("Pleural Other", "Pleural Thing", 1))
    out = str(tmp_path / "out")
    with pytest.raises(build_records.ConfigError, match="valid.csv: missing column.*'Pleural Other'.*'Pleural Thing'"):
        _run(root, out)
    assert not os.path.exists(out)

def test_bad_flags_name_the_flag(sample_dir, tmp_path):
    with pytest.raises(build_records.ConfigError, match="--holdout_fraction"):
        _run(sample_dir, str(tmp_path), "--holdout_fraction=1.5")
    with pytest.raises(build_records.ConfigError, match="--policy.*unknown policy"):
        _run(sample_dir, str(tmp_path), "--policy=edema=maybe")
    with pytest.raises(build_records.ConfigError, match="--input_dir"):
        _run(str(tmp_path / "nowhere"), str(tmp_path))


def test_local_runs_never_try_to_download_prism(sample_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="apache_beam")
    _run(sample_dir, str(tmp_path), "--image_size=32")
    assert [r for r in caplog.records if r.name.startswith("apache_beam.runners")], "no runner log captured"
    assert not [r for r in caplog.records if "Prism" in r.getMessage()]
    assert "--allow_unsafe_triggers" not in runs.runner_args(["--runner", "DataflowRunner"])


def test_rebuilds_in_other_processes_with_other_hash_seeds_and_workers_are_identical(sample_dir, tmp_path):
    """Shard assignment and record bytes may not depend on Python's per-process hash seed
    or on how many worker processes the runner uses (the README's multi_processing mode)."""
    import subprocess
    import sys

    from tests import outputs

    root = tests.ROOT
    args = [f"--input_dir={sample_dir}", "--image_size=32", "--num_shards=3", "--holdout_fraction=0.2"]
    runs_ = {"a": ("1", ["--runner=DirectRunner"]),
             "b": ("2", ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"])}
    for name, (seed, runner) in runs_.items():
        done = subprocess.run([sys.executable, "-m", "pipeline.build_records", f"--output_dir={tmp_path / name}",
                               *args, *runner], cwd=root, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, PYTHONPATH=root, PYTHONHASHSEED=seed))
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = outputs.contents(tmp_path / "a"), outputs.contents(tmp_path / "b")
    assert len([n for n in a if n.endswith(".tfrecord")]) == 9
    assert a == b


def test_a_run_whose_counts_do_not_reconcile_commits_nothing(sample_dir, tmp_path, monkeypatch):
    """If a shard's stats went missing between the pipeline and the driver, rows in would
    exceed written + rejected: the run must fail and leave the committed output alone."""
    out = str(tmp_path / "out")
    _run(sample_dir, out, "--num_shards=2")
    before = {n: open(os.path.join(out, n), "rb").read() for n in storage.files_under(out) if n != ".lock"}
    real = runs.take_jsonl  # how the driver reads the pipeline's stats

    def lose_one_shard(pattern):
        got = real(pattern)
        return got[1:] if "stats" in pattern else got

    monkeypatch.setattr(runs, "take_jsonl", lose_one_shard)
    with pytest.raises(RuntimeError, match="counts do not reconcile, nothing committed"):
        _run(sample_dir, out, "--num_shards=2", "--overwrite", "--seed=1")
    assert {n: open(os.path.join(out, n), "rb").read() for n in storage.files_under(out) if n != ".lock"} == before


def test_run_builds_into_a_test_pipeline_and_commits_the_same_records(built, tmp_path):
    """``run(test_pipeline=...)``, as Beam examples take one: the graph is built into the
    given pipeline, and the committed records equal a run's on its own pipeline."""
    from apache_beam.testing.test_pipeline import TestPipeline

    sample_dir, out, manifest = built
    other = str(tmp_path / "out")
    m = build_records.run([f"--input_dir={sample_dir}", f"--output_dir={other}", "--image_size=64",
                           "--holdout_fraction=0.25", "--num_shards=2", "--runner=DirectRunner"],
                          test_pipeline=TestPipeline(argv=["--runner=DirectRunner"]))
    assert m["nothing_new"] is False and m["written"] == manifest["written"]
    assert commit.read_records_manifest(other).to_json() == {k: v for k, v in m.items() if k != "nothing_new"}
    def shard_bytes(folder, man):
        return {os.path.basename(n): open(os.path.join(folder, n), "rb").read()
                for sp in man["splits"].values() for n in sp["shards"]}

    assert shard_bytes(other, m) == shard_bytes(out, manifest)


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_records_hold_the_pixels_of_the_resize_mode_asked_for(mode, tmp_path):
    """--resize pad|crop: each record's pixels are ``imaging.resize`` of the decoded source
    (decoded as the job does, at a draft scale no smaller than the records' size) in that
    mode, and not squash's; the generated films are 390x320, so the modes differ."""
    root = str(tmp_path / "in")
    make_sample.generate(root, num_patients=3, num_valid_patients=1, seed=5, workers=1, progress=False)
    out = str(tmp_path / "out")
    manifest = _run(root, out, f"--resize={mode}")
    assert manifest["options"]["resize"] == mode
    checked = 0
    for split in manifest["splits"]:
        for rec in _read_split(out, manifest, split)[:3]:
            path = rec[example_lib.SOURCE_PATH].decode()
            with open(os.path.join(root, path), "rb") as f:
                decoded = imaging.decode(f.read(), path, draft_size=64)
            assert decoded.shape[0] != decoded.shape[1]
            want = imaging.resize(decoded, 64, mode)
            np.testing.assert_array_equal(rec["image"][..., 0], want)
            assert not np.array_equal(want, imaging.resize(decoded, 64, "squash"))
            checked += 1
    assert checked >= 4


def _bad_valid_rows(root: str) -> dict[str, str]:
    """Appends rows to valid.csv that must be rejected; returns path -> reason."""
    prefix = f"{make_sample.DATASET_DIR}/valid"
    expected = {f"{prefix}/patient95000/study1/view1_frontal.jpg": "missing_file",
                f"{prefix}/patient95001/study1/view1_frontal.jpg": "bad_label",
                f"{prefix}/patient95002/study1/view1_frontal.jpg": "bad_age"}
    over = {"missing_file": {}, "bad_label": {"Edema": "likely"}, "bad_age": {"Age": "forty"}}
    with open(os.path.join(root, make_sample.DATASET_DIR, "valid.csv"), "a") as f:
        f.write("".join(badinputs._cells(p, **over[r]) + "\n" for p, r in expected.items()))
    return expected


def test_each_splits_rejected_counts_are_its_dead_letters(tmp_path, capsys):
    """README: the manifest holds per-split counts and rows = written + rejected. Each split's
    ``rejected`` and ``rejected_by_reason`` are its dead letters' (train.csv's bad rows spread
    over train and holdout, valid.csv's in valid), its rows are written + rejected, and the
    console's line for the split says the same."""
    root = str(tmp_path / "in")
    make_sample.generate(root, num_patients=4, num_valid_patients=2, seed=3, workers=1, progress=False)
    badinputs.plant(root)
    valid_expected = _bad_valid_rows(root)
    out = str(tmp_path / "out")
    assert build_records.main([f"--input_dir={root}", f"--output_dir={out}", "--image_size=32",
                               "--holdout_fraction=0.5", "--max_reject_fraction=1", "--runner=DirectRunner"]) == 0
    console = capsys.readouterr().out
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    letters = []
    for name in manifest["rejected_files"]:
        with open(os.path.join(out, name)) as f:
            letters += [json.loads(line) for line in f]
    by_split = collections.defaultdict(collections.Counter)
    for r in letters:
        by_split[r["split"]][r["reason"]] += 1
    assert set(manifest["splits"]) == {"train", "holdout", "valid"}
    assert dict(by_split["valid"]) == collections.Counter(valid_expected.values())
    assert all(sum(by_split[split].values()) > 0 for split in ("train", "holdout")), dict(by_split)
    for split, sp in manifest["splits"].items():
        assert sp["rejected_by_reason"] == dict(by_split[split]), split
        assert sp["rejected"] == sum(by_split[split].values()), split
        assert sp["rows"] == sp["written"] + sp["rejected"], split
        assert f"{split:8s} {sp['written']:7d} written, {sp['rejected']:5d} rejected," in console
    # Rows rejected before their split was known (bad bytes, a short row) count in their CSV only.
    assert sum(sp["rejected"] for sp in manifest["splits"].values()) + sum(by_split[None].values()) \
        == manifest["rejected"] == len(letters)
    for src in manifest["sources"].values():
        assert src["rows"] == src["written"] + src["rejected"]
