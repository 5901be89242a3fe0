"""Change detection for scheduled jobs: what a run's output depends on, as digests.

A job's fingerprint is a sha256 over everything its output depends on (the input CSVs'
digests, every input file's path, size and mtime, the options): a rerun whose fingerprint
equals the committed manifest's has "nothing new" to do and leaves the output byte for byte
as it is. A file's ``size:mtime_ns`` stands in for its content where reading every image
would cost more than the build saves; whole files that are read anyway (CSVs, models) are
hashed with ``hashlib.file_digest``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import stat
from typing import Iterable, Sequence


def fingerprint(parts: Iterable[str]) -> str:
    """sha256 over an ordered sequence of strings (each newline-terminated); hex."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\n")
    return h.hexdigest()


def stat_text(st: os.stat_result) -> str:
    """A file's ``size:mtime_ns``, as ``file_stat`` gives it for a file that is not a link."""
    return f"{st.st_size}:{st.st_mtime_ns}"


def _stat(path: str, dir_fd: int | None = None) -> str:
    try:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            return stat_text(st)
        st = os.stat(path, dir_fd=dir_fd)
    except OSError:
        return "missing"
    # A file replaced by a link to a copy with the same size and mtime (`cp -a`, then
    # `ln -s`) is a change: the records job must look at the link again (it may lead out of
    # the dataset). One lstat costs what a stat does; a link costs a second call.
    return f"link:{st.st_size}:{st.st_mtime_ns}"


def file_stat(path: str) -> str:
    """``size:mtime_ns`` of a local file (``link:size:mtime_ns`` of its target when the
    path itself is a symbolic link), or ``missing``: a cheap change detector."""
    return _stat(path)


def _stats_under(dir_fd: int | None, root: str, paths: Sequence[str]) -> list[str]:
    if dir_fd is None:
        return [_stat(os.path.join(root, path)) for path in paths]
    return [_stat(path, dir_fd) for path in paths]


def file_stats(root: str, paths: Sequence[str], workers: int = 4) -> list[str]:
    """``file_stat(root/path)`` for each of ``paths`` (relative to ``root``), by ``workers``
    threads: ``os.stat`` releases the GIL, so at 224k files the calls overlap (measured 4x
    faster than a loop on 2 cores, BUILD_NOTES). Paths are resolved from an open ``root``
    (``dir_fd``), not re-walked from the working directory each time."""
    try:
        dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        dir_fd = None  # not a local folder: each path then says "missing", as file_stat does
    try:
        step = max(1024, -(-len(paths) // (workers * 8)))
        chunks = [paths[i:i + step] for i in range(0, len(paths), step)]
        if workers <= 1 or len(chunks) <= 1:
            return [s for chunk in chunks for s in _stats_under(dir_fd, root, chunk)]
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return [s for part in pool.map(lambda c: _stats_under(dir_fd, root, c), chunks) for s in part]
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


def file_sha256(path: str) -> str:
    """sha256 of a local file's bytes, read in blocks (``hashlib.file_digest``); hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
