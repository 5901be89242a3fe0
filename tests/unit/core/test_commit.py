"""core/commit.py on its own (TF- and Beam-free, milliseconds): the atomic manifest swap under
a fault at every storage step, the kernel lock, garbage collection and the size check that
"nothing new" trusts.

The jobs' own fault harness (tests/pipeline/test_faults.py) covers the same promises through
whole Beam runs in minutes; these name the broken promise in milliseconds, and are what the
named mutants of tests/mutation/run.py for this module run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

import tests
from core import commit, storage
from tests.faults import Faults, Killed

OLD = {"x.bin": b"old x" * 10, "y.bin": b"old y" * 20}
NEW = {"x.bin": b"new x" * 30, "z.bin": b"new z" * 40}


def _run(out: str, files: dict[str, bytes], tag: str) -> None:
    """One run as build_records and score make it: lock, trust (and collect) the committed
    output, write a new snapshot, commit its manifest."""
    with commit.exclusive(out):
        commit.committed(out, overwrite=False)
        with commit.new_snapshot(out) as (name, path):
            for rel, data in files.items():
                storage.write_bytes(storage.join(path, rel), data)
            rels = [f"{name}/{rel}" for rel in sorted(files)]
            commit.commit(out, {"run": tag, "files": commit.file_sizes(out, rels)})


def _committed_content(out: str) -> tuple[str, dict[str, bytes]]:
    """The committed run's tag and its files by base name, read through the manifest only."""
    manifest = commit.read_manifest(out)
    commit.verify(out, manifest)
    files = {}
    for rel in manifest["files"]:
        with open(os.path.join(out, rel), "rb") as f:
            files[rel.split("/", 1)[1]] = f.read()
    return manifest["run"], files


def _all_files(out: str) -> set[str]:
    return {os.path.relpath(os.path.join(root, n), out) for root, _, names in os.walk(out) for n in names}


def _layout(out: str) -> set[str]:
    """Every file under ``out``, snapshot folder names (unique per run) replaced by one word."""
    return {"/".join("SNAPSHOT" if part.startswith(commit.SNAPSHOT_PREFIX) else part for part in p.split(os.sep))
            for p in _all_files(out)}


def test_a_fault_at_any_step_of_a_run_leaves_the_old_commit_or_the_new_one_whole(tmp_path):
    committed = str(tmp_path / "committed")
    _run(committed, OLD, "old")
    with open(os.path.join(committed, "notes.txt"), "w") as f:
        f.write("a user's own file")
    clean = str(tmp_path / "clean")
    shutil.copytree(committed, clean)
    with Faults(at=None).installed() as counting:
        _run(clean, NEW, "new")
    # Its snapshot folder, two files, the temporary manifest, the rename, the old snapshot's
    # collection: a fault at each in turn.
    steps = len(counting.steps)
    assert _committed_content(clean) == ("new", NEW)
    outcomes = []
    for at in range(steps):
        for mode in ("kill", "enospc"):
            out = str(tmp_path / f"{mode}-{at}")
            shutil.copytree(committed, out)
            with Faults(at=at, mode=mode).installed() as faults:
                try:
                    _run(out, NEW, "new")
                except (Killed, OSError):
                    pass
            assert faults.fired
            # Readers see the old commit or the new one, whole, and never a part of either.
            tag, files = _committed_content(out)
            assert files == (OLD if tag == "old" else NEW), (mode, at)
            outcomes.append(tag)
            # The next run collects what the faulty one left and commits as a clean run does.
            _run(out, NEW, "new")
            assert _committed_content(out) == ("new", NEW)
            assert _layout(out) == _layout(clean), (mode, at)
    # Old up to one step (the rename: a fault there is raised before rename(2) runs), new after.
    assert outcomes == sorted(outcomes, key=("old", "new").index) and {"old", "new"} == set(outcomes)


def test_an_output_folder_holds_one_run_at_a_time_and_a_killed_holder_releases_it(tmp_path):
    out = str(tmp_path / "out")
    with commit.exclusive(out):
        with pytest.raises(commit.LockedError, match=f"locked by another run \\(pid {os.getpid()} on "):
            with commit.exclusive(out):
                pass
    with commit.exclusive(out):  # released at the end of the body
        pass
    assert os.path.isfile(os.path.join(out, commit.LOCK))  # never deleted: two runs would lock two files
    # Another process holds it until the kernel releases it on kill -9.
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; from core import commit\n"
                              f"with commit.exclusive({out!r}):\n    print('held', flush=True); time.sleep(60)"],
                             cwd=tests.ROOT, env=dict(os.environ, PYTHONPATH=tests.ROOT), stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline() == "held\n"
        with pytest.raises(commit.LockedError, match=f"pid {child.pid} on "):
            with commit.exclusive(out):
                pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with commit.exclusive(out):
        pass


def test_garbage_is_what_no_manifest_references_and_committed_or_user_files_stay(tmp_path):
    out = str(tmp_path / "out")
    _run(out, OLD, "old")
    manifest = commit.read_manifest(out)
    snapshot = next(iter(manifest["files"])).split("/")[0]
    leftovers = {f"{commit.SNAPSHOT_PREFIX}20260101T000000-deadbeef/x.bin": b"a killed run's",
                 f"{snapshot}/stray.bin": b"written, never committed",
                 ".manifest-0123abcd.tmp": b"{}",
                 "train-00000-of-00001.tfrecord": b"the pre-snapshot layout's",
                 "notes.txt": b"a user's own file", "mine/more.txt": b"and folder"}
    for rel, data in leftovers.items():
        os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
        with open(os.path.join(out, rel), "wb") as f:
            f.write(data)
    deleted = commit.collect_garbage(out, manifest)
    assert sorted(os.path.relpath(p, out) for p in deleted) == sorted([
        f"{commit.SNAPSHOT_PREFIX}20260101T000000-deadbeef", f"{snapshot}/stray.bin", ".manifest-0123abcd.tmp",
        "train-00000-of-00001.tfrecord"])
    assert _all_files(out) == {commit.MANIFEST, commit.LOCK, "notes.txt", os.path.join("mine", "more.txt"),
                               *(os.path.join(*rel.split("/")) for rel in manifest["files"])}
    assert _committed_content(out) == ("old", OLD)
    # A commit collects the snapshot it replaces.
    _run(out, NEW, "new")
    assert not os.path.exists(os.path.join(out, snapshot)) and _committed_content(out) == ("new", NEW)


@pytest.mark.parametrize("damage", ["resized", "missing"])
def test_committed_output_is_trusted_only_with_every_file_at_its_recorded_size(tmp_path, damage):
    """What "nothing new" and an incremental run rely on: a listed file missing or of another
    size is damage naming the file; --overwrite (which trusts nothing) goes on without it."""
    out = str(tmp_path / "out")
    _run(out, OLD, "old")
    manifest = commit.read_manifest(out)
    rel = sorted(manifest["files"])[0]
    path = os.path.join(out, rel)
    if damage == "resized":
        with open(path, "ab") as f:
            f.write(b"!")
        message = f"{rel}: {manifest['files'][rel] + 1} bytes, the committed manifest says {manifest['files'][rel]}"
    else:
        os.remove(path)
        message = f"{rel}: listed by the committed manifest but missing"
    with pytest.raises(commit.DamagedOutputError, match=message):
        commit.verify(out, manifest)
    with pytest.raises(commit.DamagedOutputError, match=message):
        commit.committed(out, overwrite=False)
    assert commit.committed(out, overwrite=True) is None
    with open(os.path.join(out, commit.MANIFEST)) as f:
        assert json.load(f) == manifest  # damage is reported, never "repaired" by a reader


def test_the_guards_trip_only_past_their_fraction():
    """`--max_reject_fraction` / `--max_shrink_fraction` are allowances: exactly the fraction
    passes, one more input trips it, and `=1` accepts every input rejected or every record
    gone (README: "`=1` accepts it")."""
    commit.check_rejected(5, 100, 0.05, "rows", "--max_reject_fraction")
    with pytest.raises(commit.GuardError, match=r"6 of 100 rows rejected \(6\.0% > --max_reject_fraction=0\.05\)"):
        commit.check_rejected(6, 100, 0.05, "rows", "--max_reject_fraction")
    commit.check_rejected(100, 100, 1, "rows", "--max_reject_fraction")
    commit.check_rejected(0, 0, 0, "rows", "--max_reject_fraction")  # nothing read, nothing to judge
    commit.check_shrink(95, 100, 0.05, "records", "--max_shrink_fraction")
    with pytest.raises(commit.GuardError, match=r"from 100 to 94 records \(6\.0% > --max_shrink_fraction=0\.05\)"):
        commit.check_shrink(94, 100, 0.05, "records", "--max_shrink_fraction")
    commit.check_shrink(0, 100, 1, "records", "--max_shrink_fraction")
    commit.check_shrink(7, 0, 0, "records", "--max_shrink_fraction")  # a first run
