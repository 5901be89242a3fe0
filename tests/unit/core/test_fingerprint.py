"""core.fingerprint's change detector: what a scheduled run treats as a changed file."""

from __future__ import annotations

import os
import shutil

from core import fingerprint


def test_a_file_turned_into_a_link_to_an_identical_copy_is_a_change(tmp_path):
    (tmp_path / "d").mkdir()
    f = tmp_path / "d" / "a.jpg"
    f.write_bytes(b"x" * 1000)
    before = fingerprint.file_stat(str(f))
    assert before == f"1000:{os.stat(f).st_mtime_ns}"
    copy = tmp_path / "copy.jpg"
    shutil.copy2(f, copy)  # same size and mtime
    assert fingerprint.file_stat(str(copy)) == before
    f.unlink()
    os.symlink(copy, f)
    after = fingerprint.file_stat(str(f))
    assert after != before and after == "link:" + before
    os.symlink(tmp_path / "nowhere", tmp_path / "d" / "dangling.jpg")
    names = ["a.jpg", "dangling.jpg", "absent.jpg"]
    want = [after, "missing", "missing"]
    assert [fingerprint.file_stat(str(tmp_path / "d" / n)) for n in names] == want
    # The threaded, dir_fd form says the same, in order, for local and non-openable roots.
    assert fingerprint.file_stats(str(tmp_path / "d"), names * 800, workers=4) == want * 800
    assert fingerprint.file_stats(str(tmp_path / "nope"), names) == ["missing"] * 3
