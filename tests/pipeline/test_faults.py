"""A fault at every filesystem step of a run never changes committed data.

For each job (build_records, score) and each kind of run (full, --overwrite, --incremental),
a clean run is first counted step by step (every create, close, rename, delete and mkdirs
through ``core.storage``). Then, for every step ``i``, a copy of the committed output is
run again with a fault at step ``i``:

* a kill (``Killed``: that step and everything after it fails, so no clean-up runs), and
* a full disk (``ENOSPC`` at that step only, so the job's own error handling runs);

and the output must be either the old snapshot byte for byte (the fault came before the
commit) or the new one whole; a rerun must then equal the clean run and leave no file that
the manifest does not reference. A real ``kill -9`` at every step (subprocess) and a real
full disk (a small tmpfs) follow.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

import tests
from core import commit
from pipeline import build_records, make_sample, score
from tests import images, outputs
from tests.faults import Faults, Killed, bootstrap

pytestmark = pytest.mark.slow  # a fault at every write and rename: dozens of runs


ROOT = tests.ROOT
BUILD_ARGS = ["--image_size=16", "--num_shards=1", "--runner=DirectRunner"]


@pytest.fixture(autouse=True)
def _quiet():
    # Each injected fault is logged by Beam with a traceback; hundreds of them drown the report.
    logging.disable(logging.ERROR)
    yield
    logging.disable(logging.NOTSET)


def _committed_bytes(out) -> dict[str, bytes]:
    """manifest.json and every file it lists, as bytes ({} when nothing is committed)."""
    if not os.path.exists(os.path.join(out, "manifest.json")):
        return {}
    m = outputs.manifest(out)
    return {rel: open(os.path.join(out, rel), "rb").read() for rel in ["manifest.json", *m["files"]]}


def _build_summary(out) -> dict:
    """What a build committed, independent of snapshot and shard names: the records of each
    split, the dead letters, and the manifest's counts."""
    m = outputs.manifest(out)
    recs = outputs.records_by_split(out)
    keys = ("rows", "written", "rejected", "rejected_by_reason", "bytes", "views", "raw_counts", "target_counts")
    return {"records": recs, "rejects": [open(os.path.join(out, n), "rb").read() for n in m["rejected_files"]],
            "sources": m["sources"], "splits": {s: {k: sp[k] for k in keys} for s, sp in m["splits"].items()},
            "options": {k: v for k, v in m["options"].items() if k != "output_dir"}}


def _score_summary(out) -> dict:
    m = outputs.manifest(out)
    files = {k: open(os.path.join(out, rel), "rb").read() for k, rel in m["outputs"].items()}
    return {"files": files, "counts": [m[k] for k in ("inputs", "scored", "rejected", "rejected_by_reason")]}


def _exercise(run, template, work, summary, mode):
    """Runs ``run(out)`` on a copy of ``template`` once cleanly, then with a fault of ``mode``
    at every storage step, checking the committed output after each fault and after a
    rerun. Returns the number of steps."""
    clean = os.path.join(work, "clean")
    _copy(template, clean)
    before = _committed_bytes(clean)
    counter = Faults()
    with counter.installed():
        run(clean)
    want = summary(clean)
    assert not outputs.unreferenced(clean)
    steps = counter.steps
    commit_step = next(i for i, (kind, path) in enumerate(steps)
                       if kind == "rename" and path.endswith("/manifest.json"))
    for i, (kind, path) in enumerate(steps):
        out = os.path.join(work, f"{mode}-{i}")
        _copy(template, out)
        faults = Faults(at=i, mode=mode)
        try:
            with faults.installed():
                run(out)
        except (Exception, Killed):
            pass
        where = f"{mode} at step {i} ({kind} {os.path.relpath(path, clean)})"
        assert faults.fired, where
        after = _committed_bytes(out)
        if i <= commit_step:
            # Before (or at) the commit's rename: the committed output, byte for byte.
            assert after == before, where
        elif after != before:  # after it: the new snapshot, whole
            commit.verify(out, outputs.manifest(out))
            assert summary(out) == want, where
        run(out)  # the rerun, no faults
        assert summary(out) == want, where
        assert not outputs.unreferenced(out), where
        shutil.rmtree(out)
    return len(steps)


def _copy(template, dst):
    if template and os.path.exists(template):
        shutil.copytree(template, dst, symlinks=True)
    else:
        os.makedirs(dst)


@pytest.fixture(scope="module")
def build_inputs(tmp_path_factory):
    """One input folder, and two committed outputs of its earlier state (``v1``): plain, and
    at another image size. The folder then changes (``v2``): new patients, a relabelled
    row, a removed row, a replaced image."""
    base = tmp_path_factory.mktemp("faults-build")
    root = str(base / "in")
    make_sample.generate(root, num_patients=8, num_valid_patients=2, seed=21, workers=1, progress=False)
    csv_path = os.path.join(root, make_sample.DATASET_DIR, "train.csv")
    lines = open(csv_path).read().splitlines()
    v1 = [line for line in lines if "patient00007" not in line and "patient00008" not in line]
    open(csv_path, "w").write("\n".join(v1) + "\n")
    committed = str(base / "committed")
    build_records.run([f"--input_dir={root}", f"--output_dir={committed}", *BUILD_ARGS])
    committed_32 = str(base / "committed-32")
    build_records.run([f"--input_dir={root}", f"--output_dir={committed_32}", *BUILD_ARGS, "--image_size=32"])
    v2 = lines[:]
    cells = v2[2].split(",")
    cells[-1] = "0.0" if cells[-1] != "0.0" else "1.0"
    v2[2] = ",".join(cells)
    v2.remove(v1[4])
    open(os.path.join(root, v1[6].split(",")[0]), "wb").write(images.jpeg_bytes(images.gradient(390, 320)))
    open(csv_path, "w").write("\n".join(v2) + "\n")
    return root, committed, committed_32


# Every kind of run is killed at every step; the full disk, whose only difference is that the
# job's own clean-up runs, is exercised on the run with the most steps (and on a real tmpfs).
@pytest.mark.slow
@pytest.mark.parametrize("kind,mode", [("full", "kill"), ("overwrite", "kill"), ("incremental", "kill"),
                                       ("incremental", "enospc")])
def test_build_records_fault_at_every_step(build_inputs, tmp_path, kind, mode):
    root, committed, committed_32 = build_inputs
    template, extra = {"full": (None, []), "overwrite": (committed_32, ["--overwrite"]),
                       "incremental": (committed, ["--incremental"])}[kind]
    max_shrink = ["--max_shrink_fraction=1"]  # v2 removes a row: within 5% only at full scale

    def run(out):
        build_records.run([f"--input_dir={root}", f"--output_dir={out}", *BUILD_ARGS, *extra, *max_shrink])

    steps = _exercise(run, template, str(tmp_path), _build_summary, mode)
    assert steps >= 12  # mkdirs, 2 shards, rejects, index, manifest: each create+close, rename


@pytest.fixture(scope="module")
def score_inputs(sample_dir, trained_job, tmp_path_factory):
    """A folder of 6 images with a committed score output; then 2 new images and a changed one."""
    base = tmp_path_factory.mktemp("faults-score")
    folder = base / "incoming"
    folder.mkdir()
    valid = os.path.join(sample_dir, make_sample.DATASET_DIR, "valid")
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(valid) for f in fs)
    for i, f in enumerate(files[:6]):
        shutil.copy(f, folder / f"img{i}.jpg")
    committed = str(base / "committed")
    score.run([f"--job_dir={trained_job}", f"--output_dir={committed}", f"--input_pattern={folder}/*.jpg",
               "--runner=DirectRunner"])
    for i, f in enumerate(files[6:8]):
        shutil.copy(f, folder / f"new{i}.jpg")
    shutil.copy(files[9], folder / "img2.jpg")
    return trained_job, str(folder), committed


# Scoring shares core.commit with the records job; each of its steps is a driver step
# (Beam's own temporary files stay inside the new snapshot), so two runs cover them: a full
# rescore over a committed output on a full disk, and an incremental run killed.
@pytest.mark.slow
@pytest.mark.parametrize("kind,mode", [("rescore", "enospc"), ("incremental", "kill")])
def test_score_fault_at_every_step(score_inputs, tmp_path, kind, mode):
    job, folder, committed = score_inputs
    template, extra = {"full": (None, []), "rescore": (committed, []),
                       "incremental": (committed, ["--incremental"])}[kind]

    def run(out):
        score.run([f"--job_dir={job}", f"--output_dir={out}", f"--input_pattern={folder}/*.jpg",
                   "--runner=DirectRunner", *extra])

    steps = _exercise(run, template, str(tmp_path), _score_summary, mode)
    assert steps >= 9  # mkdirs, 3 outputs and the manifest (create+close each), rename


@pytest.mark.slow
def test_build_records_real_kill_9_at_every_commit_step(build_inputs, tmp_path):
    """The same for a real SIGKILL, at every step from the first the driver takes after the
    pipeline (dead letters, index, manifest, rename, collection): the process dies there
    (returncode -9, so the kill did interrupt the run), the committed output is byte for
    byte the old one up to the rename, and a rerun equals the clean run."""
    root, committed, _ = build_inputs
    argv = [f"--input_dir={root}", *BUILD_ARGS, "--incremental", "--max_shrink_fraction=1"]
    clean = str(tmp_path / "clean")
    shutil.copytree(committed, clean)
    before = _committed_bytes(clean)
    counter = Faults()
    with counter.installed():
        build_records.run([f"--output_dir={clean}", *argv])
    want = _build_summary(clean)
    commit_step = next(i for i, (k, p) in enumerate(counter.steps) if k == "rename" and p.endswith("manifest.json"))
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    driver = next(i for i, (k, p) in enumerate(counter.steps) if k == "create" and "rejected-" in p)
    for i, (kind, _) in list(enumerate(counter.steps))[driver:]:
        out = str(tmp_path / f"kill-{i}")
        shutil.copytree(committed, out)
        proc = subprocess.run([sys.executable, "-c", bootstrap(i, "pipeline.build_records",
                                                                [f"--output_dir={out}", *argv])],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == -9, (i, kind, proc.stderr[-2000:])
        if i <= commit_step:
            assert _committed_bytes(out) == before, (i, kind)
        build_records.run([f"--output_dir={out}", *argv])
        assert _build_summary(out) == want, (i, kind)
        assert not outputs.unreferenced(out), (i, kind)
        shutil.rmtree(out)


def _mount_tmpfs(path, size) -> bool:
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                          capture_output=True).returncode == 0


def test_a_real_full_disk_commits_nothing_and_a_rerun_with_space_succeeds(build_inputs, tmp_path, capsys):
    """On a 1 MiB tmpfs: a committed small build (16 px), then a build at 320 px (~3 MB) that
    does not fit. It fails with one line naming the full disk, the committed records stay byte for byte,
    no lock blocks the next run, and after the disk grows the rerun commits."""
    root, _, _ = build_inputs
    disk = str(tmp_path / "disk")
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount(8)); the injected ENOSPC tests still run")
    try:
        out = os.path.join(disk, "records")
        args = [f"--input_dir={root}", f"--output_dir={out}", "--num_shards=1", "--runner=DirectRunner"]
        build_records.run([*args, "--image_size=16"])
        before = _committed_bytes(out)
        assert build_records.main([*args, "--image_size=320", "--overwrite"]) == 1
        err = capsys.readouterr().err
        assert "No space left on device" in err and "nothing committed" in err and "Traceback" not in err
        assert _committed_bytes(out) == before
        assert not outputs.unreferenced(out)  # the unfinished snapshot was removed
        subprocess.run(["mount", "-o", "remount,size=64m", disk], check=True)
        m = build_records.run([*args, "--image_size=320", "--overwrite"])
        assert m["options"]["image_size"] == 320 and not outputs.unreferenced(out)
        assert json.load(open(os.path.join(out, "manifest.json")))["snapshot"] == m["snapshot"]
    finally:
        subprocess.run(["umount", "-l", disk], capture_output=True)
