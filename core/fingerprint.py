"""Change detection for scheduled jobs: what a run's output depends on, as digests.

A job's fingerprint is a sha256 over everything its output depends on (the input CSVs'
digests, every input file's path, size and mtime, the options): a rerun whose fingerprint
equals the committed manifest's has "nothing new" to do and leaves the output byte for byte
as it is. A file's ``size:mtime_ns`` stands in for its content where reading every image
would cost more than the build saves; whole files that are read anyway (CSVs, models) are
hashed with ``hashlib.file_digest``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterable


def fingerprint(parts: Iterable[str]) -> str:
    """sha256 over an ordered sequence of strings (each newline-terminated); hex."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\n")
    return h.hexdigest()


def file_stat(path: str) -> str:
    """``size:mtime_ns`` of a local file, or ``missing``: a cheap change detector."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def file_sha256(path: str) -> str:
    """sha256 of a local file's bytes, read in blocks (``hashlib.file_digest``); hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
