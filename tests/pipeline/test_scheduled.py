"""Scheduled-run behaviour: batch scoring with RunInference, incremental and idempotent
reruns, locks, and kill -9 at a random point followed by a rerun."""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

import tests
from core import storage
from pipeline import make_sample, score
from serving import job as job_lib
from trainer import predict
from tests import images, outputs, retuned_job, studies_folder

ROOT = tests.ROOT


def _score(job, out, *extra):
    return score.run([f"--job_dir={job}", f"--output_dir={out}", "--runner=DirectRunner", *extra])


def _lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _output(out, key):
    """A committed score output's file (``scores_jsonl``, ``scores_csv``, ``rejected``)."""
    m = json.load(open(os.path.join(out, "manifest.json")))
    return os.path.join(out, m["outputs"][key])


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
    m = _score(trained_job, tmp_path / "out", f"--input_pattern={image_folder}/*.jpg", "--max_reject_fraction=0.25")
    assert (m["inputs"], m["scored"], m["rejected"]) == (15, 12, 3)
    assert m["rejected_by_reason"] == {"empty_file": 1, "not_an_image": 1, "truncated_image": 1}
    # The model was trained on the synthetic sample: the manifest and every CSV row say so.
    assert m["model_data"] == "synthetic" and m["model_provenance"]["synthetic"] is True
    with open(_output(tmp_path / "out", "scores_csv"), newline="") as f:
        assert {r["model_data"] for r in csv.DictReader(f)} == {"synthetic"}
    rows = _lines(_output(tmp_path / "out", "scores_jsonl"))
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    job = job_lib.load_job(trained_job)
    want, _ = predict.predict_files(job, [r["path"] for r in rows], threshold=0.35)
    for r, w in zip(rows, want):
        for t in job.tasks:
            assert r["probabilities"][t] == pytest.approx(w["probs"][t], abs=2e-6)
        assert r["positive"] == [t for t in job.tasks if r["probabilities"][t] >= 0.35]
    saved = _score(trained_job, tmp_path / "sm", f"--input_pattern={image_folder}/*.jpg", "--model_format=saved_model",
                   "--max_reject_fraction=0.25")
    for a, b in zip(rows, _lines(_output(tmp_path / "sm", "scores_jsonl"))):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    assert saved["model"] != m["model"]


def test_a_job_with_its_own_threshold_is_scored_at_it(trained_job, image_folder, tmp_path):
    """The positive calls (scores.jsonl, scores.csv) and the manifest use the job's own
    threshold, not the default every fixture job has; --threshold still wins over it."""
    files = sorted(str(p) for p in image_folder.glob("img*.jpg"))
    results, _ = predict.predict_files(job_lib.load_job(trained_job), files, threshold=retuned_job.DEFAULT)
    t = retuned_job.separating(p for r in results for p in r["probs"].values())
    job = retuned_job.copy(trained_job, str(tmp_path / "job"), t)
    m = _score(job, tmp_path / "out", f"--input_pattern={image_folder}/img*.jpg")
    assert m["threshold"] == t and m["scored"] == len(files)
    rows = _lines(_output(tmp_path / "out", "scores_jsonl"))
    with open(_output(tmp_path / "out", "scores_csv"), newline="") as f:
        csv_calls = {r["path"]: set(filter(None, r["positive"].split(";"))) for r in csv.DictReader(f)}
    calls = {r["path"]: {k for k, p in r["probabilities"].items() if p >= t} for r in rows}
    assert {r["path"]: set(r["positive"]) for r in rows} == calls == csv_calls
    at_default = {r["path"]: {k for k, p in r["probabilities"].items() if p >= retuned_job.DEFAULT} for r in rows}
    assert calls != at_default  # the threshold chosen makes a difference
    flag = _score(job, tmp_path / "flag", f"--input_pattern={image_folder}/img*.jpg",
                  f"--threshold={retuned_job.DEFAULT}")
    assert flag["threshold"] == retuned_job.DEFAULT
    assert {r["path"]: set(r["positive"]) for r in _lines(_output(tmp_path / "flag", "scores_jsonl"))} == at_default


def test_incremental_scores_only_new_inputs_and_equals_a_full_run(trained_job, image_folder, sample_dir, tmp_path):
    out = tmp_path / "out"
    first = _score(trained_job, out, f"--input_pattern={image_folder}/*.jpg", "--incremental",
                   "--max_reject_fraction=0.25")
    assert first["scored_this_run"] == 15
    again = _score(trained_job, out, f"--input_pattern={image_folder}/*.jpg", "--incremental",
                   "--max_reject_fraction=0.25")
    assert again["nothing_new"] is True
    valid = os.path.join(sample_dir, make_sample.DATASET_DIR, "valid")
    extra = sorted(os.path.join(r, f) for r, _, fs in os.walk(valid) for f in fs)[12:14]
    for i, f in enumerate(extra):
        shutil.copy(f, image_folder / f"new{i}.jpg")
    shutil.copy(extra[0], image_folder / "img03.jpg")  # changed content
    m = _score(trained_job, out, f"--input_pattern={image_folder}/*.jpg", "--incremental",
               "--max_reject_fraction=0.25")
    assert (m["scored_this_run"], m["carried_over"], m["inputs"]) == (3, 14, 17)
    _score(trained_job, tmp_path / "full", f"--input_pattern={image_folder}/*.jpg", "--max_reject_fraction=0.25")
    for key in ("scores_jsonl", "scores_csv", "rejected"):
        assert open(_output(out, key), "rb").read() == open(_output(tmp_path / "full", key), "rb").read(), key


def _kill_at_random_point(cmd, out_dir, seed):
    """Starts ``cmd`` and kill -9s its process group while it works: at a seeded moment
    within 0.3 s of its snapshot folder appearing (created after the lock, before the
    pipeline runs). Asserts the kill interrupted it (returncode -9), so the test cannot pass
    by killing a process that had already finished."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not glob.glob(os.path.join(out_dir, "snapshot-*")):  # the run has started its work
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0.0, 0.3))
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before the kill: nothing was interrupted"


def test_score_commits_a_study_csv_equal_to_predicts(trained_job, sample_dir, tmp_path):
    folder = studies_folder.build(sample_dir, str(tmp_path / "in"))
    m = _score(trained_job, tmp_path / "out", f"--input_pattern={folder}")
    # In the snapshot, named by the manifest with its size: committed like every other output.
    assert m["outputs"]["studies_csv"] == f"{m['snapshot']}/studies.csv"
    assert m["files"][m["outputs"]["studies_csv"]] == os.path.getsize(_output(tmp_path / "out", "studies_csv"))
    assert m["studies"] == {"studies": 6, "without_frontal": 1, "outside": 1}
    assert {r["path"]: r["view"] for r in _lines(_output(tmp_path / "out", "scores_jsonl"))}[
        os.path.join(folder, studies_folder.ITS_LATERAL)] == "lateral"
    doc = predict.run(job_lib.load_job(trained_job), [folder], str(tmp_path / "predict"), threshold=0.35)
    assert doc["studies"]["csv"] == "predictions_studies.csv"

    def read(path):
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        return rows[0], {r[0]: [float(v) for v in r[1:]] for r in rows[1:]}

    header, scored = read(_output(tmp_path / "out", "studies_csv"))
    want_header, predicted = read(tmp_path / "predict" / "predictions_studies.csv")
    assert header == want_header == ["Study", "Cardiomegaly", "Atelectasis"]  # the job's tasks, in CSV order
    assert sorted(scored) == sorted(predicted) and len(scored) == 6
    for study, values in scored.items():
        # Both round to 6 decimals: equal, or one unit apart in the last place.
        assert values == pytest.approx(predicted[study], abs=1e-6 + 1e-12), study


def test_score_takes_views_from_a_csvs_column_and_rescores_a_row_whose_view_changed(trained_job, sample_dir,
                                                                                      tmp_path):
    csv_path = tmp_path / "valid.csv"
    shutil.copy(os.path.join(sample_dir, make_sample.DATASET_DIR, "valid.csv"), csv_path)
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header, table = reader.fieldnames, list(reader)
    flags = [f"--csv={csv_path}", f"--image_root={sample_dir}", "--incremental"]
    m = _score(trained_job, tmp_path / "out", *flags)
    assert {r["path"]: r["view"] for r in _lines(_output(tmp_path / "out", "scores_jsonl"))} == {
        t["Path"]: t["Frontal/Lateral"].lower() for t in table}
    with open(_output(tmp_path / "out", "studies_csv"), newline="") as f:
        # Studies as the competition names them: the CSV's path up to the study folder.
        assert [r["Study"] for r in csv.DictReader(f)] == sorted({t["Path"].rsplit("/", 1)[0] for t in table})
    assert m["studies"]["outside"] == 0
    # A lateral relabelled Frontal in the CSV (its file name still says lateral): the CSV wins
    # over the name, the run is not "nothing new", and only that row is scored again.
    lateral = next(t for t in table if t["Frontal/Lateral"] == "Lateral")
    lateral["Frontal/Lateral"] = "Frontal"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(table)
    again = _score(trained_job, tmp_path / "out", *flags)
    assert not again["nothing_new"] and (again["scored_this_run"], again["carried_over"]) == (1, len(table) - 1)
    assert {r["path"]: r["view"] for r in _lines(_output(tmp_path / "out", "scores_jsonl"))}[lateral["Path"]] == "frontal"


@pytest.mark.parametrize("seed", [1, 2])
def test_build_records_killed_then_rerun_equals_an_uninterrupted_run(sample_dir, tmp_path, seed):
    args = [f"--input_dir={sample_dir}", "--image_size=64", "--num_shards=3", "--runner=DirectRunner"]
    out = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "pipeline.build_records", f"--output_dir={out}", *args]
    _kill_at_random_point(cmd, out, seed)
    assert not os.path.exists(os.path.join(out, "manifest.json"))  # killed before its commit: nothing committed
    assert subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                          timeout=300).returncode == 0
    ref = str(tmp_path / "ref")
    subprocess.run([sys.executable, "-m", "pipeline.build_records", f"--output_dir={ref}", *args], cwd=ROOT,
                   env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, timeout=300, check=True)
    assert outputs.contents(out) == outputs.contents(ref)
    assert not outputs.unreferenced(out)  # nothing but the committed snapshot, its pointer and the lock


def test_score_killed_midway_then_rerun_scores_every_input_exactly_once(trained_job, sample_dir, tmp_path):
    csv_path = os.path.join(sample_dir, make_sample.DATASET_DIR, "valid.csv")
    out = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "pipeline.score", f"--job_dir={trained_job}", f"--csv={csv_path}",
           f"--output_dir={out}", "--runner=DirectRunner", "--incremental"]
    _kill_at_random_point(cmd, out, 3)
    done = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _lines(_output(out, "scores_jsonl"))
    paths = [r["path"] for r in rows]
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert len(paths) == len(set(paths)) == m["scored"] and m["inputs"] == m["scored"] + m["rejected"]
    full = _score(trained_job, tmp_path / "full", f"--csv={csv_path}")
    assert open(_output(out, "scores_jsonl"), "rb").read() == open(_output(tmp_path / "full", "scores_jsonl"), "rb").read()
    assert full["scored"] == m["scored"]


def _records_by_split(out):
    return outputs.manifest(out), outputs.records_by_split(out)


def test_incremental_build_processes_only_changes_and_equals_a_full_rebuild(tmp_path, caplog):
    from pipeline import build_records

    root = str(tmp_path / "in")
    make_sample.generate(root, num_patients=30, num_valid_patients=4, seed=11, workers=1, progress=False)
    ds = os.path.join(root, make_sample.DATASET_DIR)
    csv_path = os.path.join(ds, "train.csv")
    lines = open(csv_path).read().splitlines()
    base = [line for line in lines if "patient0002" not in line and "patient0003" not in line]  # patients 20-30 later
    open(csv_path, "w").write("\n".join(base) + "\n")
    args = [f"--input_dir={root}", "--image_size=32", "--min_shards=2", "--holdout_fraction=0.2",
            "--runner=DirectRunner"]
    out = str(tmp_path / "out")
    first = build_records.run([f"--output_dir={out}", *args])
    committed = str(tmp_path / "committed")
    shutil.copytree(out, committed)
    # New rows (patients 20-30), one relabelled row, one removed row, one replaced image.
    changed = lines[:]
    relabel = changed.index(base[3])
    cells = changed[relabel].split(",")
    cells[-1] = "0.0" if cells[-1] != "0.0" else "1.0"  # Support Devices relabelled
    changed[relabel] = ",".join(cells)
    removed = base[5]
    changed.remove(removed)
    replaced = base[8].split(",")[0]
    img = images.jpeg_bytes(images.gradient(390, 320))
    open(os.path.join(root, replaced), "wb").write(img)
    changed.append(base[10])  # a later duplicate of a kept row: rejected, as a full build would
    open(csv_path, "w").write("\n".join(changed) + "\n")
    with caplog.at_level(logging.INFO, logger="build_records"):
        inc = build_records.run([f"--output_dir={out}", "--incremental", *args])
    assert "in this process, no Beam runner" in caplog.text  # a small delta (--in_process_rows)
    assert inc["sources"]["train.csv"]["rejected_by_reason"] == {"duplicate_path": 1}
    n_new = len(lines) - len(base)
    assert inc["incremental"]["processed"] == n_new + 2  # new rows, the relabelled row, the replaced image
    n_valid = len(open(os.path.join(ds, "valid.csv")).read().splitlines()) - 1
    assert inc["incremental"]["kept"] == len(base) - 1 - 3 + n_valid  # not the header, relabelled, removed, replaced
    ref = str(tmp_path / "ref")
    full = build_records.run([f"--output_dir={ref}", *args])
    m_inc, recs_inc = _records_by_split(out)
    m_ref, recs_ref = _records_by_split(ref)
    assert recs_inc == recs_ref  # the same records, byte for byte, in every split
    for split in m_ref["splits"]:
        for key in ("rows", "written", "rejected", "bytes", "views", "raw_counts", "target_counts"):
            assert m_inc["splits"][split][key] == m_ref["splits"][split][key], (split, key)
    assert {k: {f: v for f, v in s.items()} for k, s in m_inc["sources"].items()} == m_ref["sources"]
    for name, name_ref in zip(m_inc["rejected_files"], m_ref["rejected_files"]):
        assert open(os.path.join(out, name), "rb").read() == open(os.path.join(ref, name_ref), "rb").read()
    listed = {n for sp in m_inc["splits"].values() for n in sp["shards"]}
    on_disk = {n for n in storage.files_under(out) if n.endswith(".tfrecord")}
    assert listed == on_disk  # replaced shards were deleted after the commit
    # Compacted and delta shards keep frontal records first, as many as the manifest says.
    from core import tfrecord
    from schemas import example as ex
    from schemas import example_tf

    mixed = []
    for name in listed:
        with open(os.path.join(out, name), "rb") as f:
            views = [example_tf.parse(r, decode=False)[ex.IMAGE_VIEW].numpy() for r in tfrecord.read_records(f, name)]
        n = m_inc["shard_stats"][name]["views"].get("frontal", 0)
        assert views == [b"frontal"] * n + [b"lateral"] * (len(views) - n), name
        if 0 < n < len(views):
            mixed.append(name)
    assert [n for n in mixed if inc["incremental"]["tag"] in n]  # a compacted or delta shard holds both views
    assert build_records.run([f"--output_dir={out}", "--incremental", *args])["nothing_new"] is True
    assert first["written"] < full["written"]
    # The same delta through the Beam runner (the path of a large one): the same records,
    # counts and dead letters as in process.
    rejects_inc = [open(os.path.join(out, name), "rb").read() for name in m_inc["rejected_files"]]
    shutil.rmtree(out)
    shutil.copytree(committed, out)
    via_beam = build_records.run([f"--output_dir={out}", "--incremental", "--in_process_rows=0", *args])
    m_beam, recs_beam = _records_by_split(out)
    assert recs_beam == recs_ref
    assert via_beam["incremental"]["processed"] == inc["incremental"]["processed"]
    assert m_beam["sources"] == m_inc["sources"]
    assert {k: {f: v for f, v in sp.items() if f != "shards"} for k, sp in m_beam["splits"].items()} == \
        {k: {f: v for f, v in sp.items() if f != "shards"} for k, sp in m_inc["splits"].items()}
    assert [open(os.path.join(out, name), "rb").read() for name in m_beam["rejected_files"]] == rejects_inc
    # The same folders spelled another way (a nightly job's absolute paths after a first
    # build by hand from the project folder): still the same delta, not a rebuild of everything.
    shutil.rmtree(out)
    shutil.copytree(committed, out)
    spelled = [a.replace(f"--input_dir={root}", f"--input_dir={os.path.relpath(root)}/") for a in args]
    with caplog.at_level(logging.INFO, logger="build_records"):
        caplog.clear()
        respelled = build_records.run([f"--output_dir={os.path.join(out, '.', '')}", "--incremental", *spelled])
    assert "rebuilding everything" not in caplog.text
    assert respelled["incremental"]["processed"] == inc["incremental"]["processed"]
    assert _records_by_split(out)[1] == recs_ref
    # ... and a plain rerun in the first spelling is "nothing new", not "other inputs".
    assert build_records.run([f"--output_dir={out}", *args])["nothing_new"] is True
    # An option that does change the records is named in the warning.
    with caplog.at_level(logging.WARNING, logger="build_records"):
        caplog.clear()
        build_records.run([f"--output_dir={out}", "--incremental", *[a for a in args if a != "--image_size=32"],
                           "--image_size=48"])
    assert "options changed (--image_size 32 -> 48) since the committed run; rebuilding everything" in caplog.text


def test_a_file_changed_after_the_drivers_stat_is_rebuilt_by_the_next_incremental_run(tmp_path, monkeypatch):
    # The driver stats every image before the graph runs; a file can change before its
    # writer reads it. The index and the fingerprint must be over what was read: over the
    # driver's stats, a file that changed (version B read, or an empty file that made the
    # row a dead letter) and then changed back (version A, the stat the driver saw) would
    # look unchanged, and the next run would keep B's record or the dead letter.
    from core import fingerprint
    from pipeline import build_records, inputs

    root = str(tmp_path / "in")
    make_sample.generate(root, num_patients=3, num_valid_patients=0, seed=5, workers=1, progress=False)
    args = [f"--input_dir={root}", "--image_size=16", "--min_shards=1", "--runner=DirectRunner",
            "--max_reject_fraction=0.5"]
    rel = sorted(glob.glob("**/*.jpg", root_dir=root, recursive=True))[0]
    full = os.path.join(root, rel)
    version_a, mtime_a, seen_by_driver = open(full, "rb").read(), os.stat(full).st_mtime_ns, fingerprint.file_stat(full)
    real_stats = fingerprint.file_stats
    outs = []
    for meanwhile in (images.jpeg_bytes(images.gradient(390, 320)), b""):  # version B; briefly empty
        open(full, "wb").write(meanwhile)  # after the driver's stat, before the writer's read
        monkeypatch.setattr(inputs.fingerprint, "file_stats", lambda root_, paths, **kw: [
            seen_by_driver if p == rel else s for p, s in zip(paths, real_stats(root_, paths, **kw))])
        out = str(tmp_path / f"out{len(outs)}")
        first = build_records.run([f"--output_dir={out}", *args])
        monkeypatch.setattr(inputs.fingerprint, "file_stats", real_stats)
        if meanwhile:  # the index has the stat of what was read
            index = outputs.contents(out)["index.tsv"].decode().splitlines()
            assert [line.split("\t")[1] for line in index if line.startswith(rel + "\t")] == [
                fingerprint.file_stat(full)]
        else:
            assert first["sources"]["train.csv"]["rejected_by_reason"] == {"empty_file": 1}
        open(full, "wb").write(version_a)  # back to version A, stat and all
        os.utime(full, ns=(mtime_a, mtime_a))
        assert fingerprint.file_stat(full) == seen_by_driver
        inc = build_records.run([f"--output_dir={out}", "--incremental", *args])
        assert not inc["nothing_new"] and inc["incremental"]["processed"] == 1, meanwhile[:4]
        outs.append((out, inc))
    ref = str(tmp_path / "ref")
    full_build = build_records.run([f"--output_dir={ref}", *args])
    for out, inc in outs:
        assert outputs.records_by_split(out) == outputs.records_by_split(ref)
        assert inc["sources"] == full_build["sources"] and not full_build["rejected"]


def test_the_model_digest_is_the_one_earlier_releases_committed(trained_job, tmp_path):
    """An upgrade must not make a nightly --incremental run rescore everything: the digest is
    sha256 over the model's bytes, then job_spec.json's (absent before the spec existed),
    then config.json's, as committed by every earlier release."""
    def sha(*names, root=trained_job):
        return hashlib.sha256(b"".join(open(os.path.join(root, n), "rb").read() for n in names)).hexdigest()

    assert score._model_digest(trained_job, "keras") == sha("model.keras", "job_spec.json", "config.json")
    old = tmp_path / "old"
    shutil.copytree(trained_job, old, ignore=shutil.ignore_patterns("job_spec.json", "saved_model"))
    assert score._model_digest(str(old), "keras") == sha("model.keras", "config.json", root=str(old))
