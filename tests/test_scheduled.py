"""Scheduled-run behaviour: batch scoring with RunInference, incremental and idempotent
reruns, locks, and kill -9 at a random point followed by a rerun."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline import make_sample, score
from trainer import inference, predict
from tests import images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _score(job, out, *extra):
    return score.run([f"--job_dir={job}", f"--output_dir={out}", "--runner=DirectRunner", *extra])


def _lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture()
def image_folder(sample_dir, tmp_path):
    """A folder of 12 valid-split JPEGs plus three bad files."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    valid = os.path.join(sample_dir, make_sample.DATASET_DIR, "valid")
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(valid) for f in fs)[:12]
    for i, f in enumerate(files):
        shutil.copy(f, folder / f"img{i:02d}.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_bytes(b"not an image at all" * 10)
    (folder / "cut.jpg").write_bytes(open(files[0], "rb").read()[:2000])
    return folder


def test_scores_equal_predict_and_bad_inputs_are_dead_letters(trained_job, image_folder, tmp_path):
    m = _score(trained_job, tmp_path / "out", f"--input_pattern={image_folder}/*.jpg")
    assert (m["inputs"], m["scored"], m["rejected"]) == (15, 12, 3)
    assert m["rejected_by_reason"] == {"empty_file": 1, "not_an_image": 1, "truncated_image": 1}
    rows = _lines(tmp_path / "out" / "scores.jsonl")
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    job = inference.load_job(trained_job)
    want, _ = predict.predict_files(job, [r["path"] for r in rows], threshold=0.35)
    for r, w in zip(rows, want):
        for t in job.tasks:
            assert r["probabilities"][t] == pytest.approx(w["probs"][t], abs=2e-6)
        assert r["positive"] == [t for t in job.tasks if r["probabilities"][t] >= 0.35]
    saved = _score(trained_job, tmp_path / "sm", f"--input_pattern={image_folder}/*.jpg", "--model_format=saved_model")
    for a, b in zip(rows, _lines(tmp_path / "sm" / "scores.jsonl")):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    assert saved["model"] != m["model"]


def test_incremental_scores_only_new_inputs_and_equals_a_full_run(trained_job, image_folder, sample_dir, tmp_path):
    out = tmp_path / "out"
    first = _score(trained_job, out, f"--input_pattern={image_folder}/*.jpg", "--incremental")
    assert first["scored_this_run"] == 15
    again = _score(trained_job, out, f"--input_pattern={image_folder}/*.jpg", "--incremental")
    assert again["nothing_new"] is True
    valid = os.path.join(sample_dir, make_sample.DATASET_DIR, "valid")
    extra = sorted(os.path.join(r, f) for r, _, fs in os.walk(valid) for f in fs)[12:14]
    for i, f in enumerate(extra):
        shutil.copy(f, image_folder / f"new{i}.jpg")
    shutil.copy(extra[0], image_folder / "img03.jpg")  # changed content
    m = _score(trained_job, out, f"--input_pattern={image_folder}/*.jpg", "--incremental")
    assert (m["scored_this_run"], m["carried_over"], m["inputs"]) == (3, 14, 17)
    full = _score(trained_job, tmp_path / "full", f"--input_pattern={image_folder}/*.jpg")
    for name in ("scores.jsonl", "scores.csv", "rejected.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name


def _kill_at_random_point(cmd, out_dir, seed):
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(out_dir, ".lock")):  # the run has started its work
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    time.sleep(random.Random(seed).uniform(0.0, 2.5))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("seed", [1, 2])
def test_build_records_killed_then_rerun_equals_an_uninterrupted_run(sample_dir, tmp_path, seed):
    args = [f"--input_dir={sample_dir}", "--image_size=64", "--num_shards=3", "--runner=DirectRunner"]
    out = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "pipeline.build_records", f"--output_dir={out}", *args]
    _kill_at_random_point(cmd, out, seed)
    listed = os.path.join(out, "manifest.json")
    if os.path.exists(listed):  # finished before the kill: everything listed must be whole
        m = json.load(open(listed))
        assert all(os.path.exists(os.path.join(out, n)) for sp in m["splits"].values() for n in sp["shards"])
    assert subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                          timeout=300).returncode == 0
    ref = str(tmp_path / "ref")
    subprocess.run([sys.executable, "-m", "pipeline.build_records", f"--output_dir={ref}", *args], cwd=ROOT,
                   env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, timeout=300, check=True)
    names = sorted(n for n in os.listdir(ref) if n.endswith((".tfrecord", ".jsonl")))
    assert names == sorted(n for n in os.listdir(out) if n.endswith((".tfrecord", ".jsonl")))
    for n in names:
        assert open(os.path.join(out, n), "rb").read() == open(os.path.join(ref, n), "rb").read(), n
    assert not [n for n in os.listdir(out) if n.startswith((".staging", ".lock"))]


def test_score_killed_midway_then_rerun_scores_every_input_exactly_once(trained_job, sample_dir, tmp_path):
    csv_path = os.path.join(sample_dir, make_sample.DATASET_DIR, "valid.csv")
    out = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "pipeline.score", f"--job_dir={trained_job}", f"--csv={csv_path}",
           f"--output_dir={out}", "--runner=DirectRunner", "--incremental"]
    _kill_at_random_point(cmd, out, 3)
    done = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _lines(os.path.join(out, "scores.jsonl"))
    paths = [r["path"] for r in rows]
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert len(paths) == len(set(paths)) == m["scored"] and m["inputs"] == m["scored"] + m["rejected"]
    full = _score(trained_job, tmp_path / "full", f"--csv={csv_path}")
    assert open(os.path.join(out, "scores.jsonl"), "rb").read() == (tmp_path / "full" / "scores.jsonl").read_bytes()
    assert full["scored"] == m["scored"]
