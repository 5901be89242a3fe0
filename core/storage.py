"""The one filesystem layer the jobs write through: local paths and any Beam filesystem.

Every write, rename and delete that build_records and score make (shards, dead letters,
index, scores, manifest, garbage collection) goes through the functions here, and nothing in
those jobs calls ``open(..., "w")``, ``os.replace`` or ``FileSystems`` directly for output.
That is what lets ``tests/faults.py`` fail or "kill" a run at each single mutating step and
check that the committed output never changes before the commit.

Mutating functions: ``create`` (the write happens on the returned file; the file counts as
written when closed), ``write_bytes``, ``rename``, ``delete``, ``mkdirs``. The rest only read.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from typing import BinaryIO



def _beam():
    """Beam's FileSystems, imported only for a remote path: local runs and the tools that
    read outputs (trainer, web demo, tests) never pay for importing Beam."""
    from apache_beam.io.filesystems import FileSystems
    return FileSystems


def is_remote(path: str) -> bool:
    """True for an object-store path (``gs://``, ``s3://``, ...), where rename is not atomic
    and files cannot be locked."""
    return "://" in path


def join(*parts: str) -> str:
    """Path join that keeps ``gs://`` prefixes intact (posixpath on every filesystem)."""
    return posixpath.join(*parts)


def create(path: str) -> BinaryIO:
    """A new file opened for binary writing (replaces an existing one)."""
    if not is_remote(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # as Beam's local create does
        return open(path, "wb")
    return _beam().create(path)


def write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` as the whole content of a new file at ``path``. On an object store
    this is one object upload: readers see the old object or the new one, never a part."""
    with create(path) as f:
        f.write(data)


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def open_read(path: str) -> BinaryIO:
    if not is_remote(path):
        return open(path, "rb")
    return _beam().open(path, compression_type="uncompressed")


def rename(src: str, dst: str) -> None:
    """Moves ``src`` to ``dst``, replacing it. Locally one ``rename(2)``: atomic."""
    if not is_remote(src):
        os.replace(src, dst)
        return
    _beam().rename([src], [dst])


def delete(paths: list[str]) -> None:
    """Deletes files and folders (recursively)."""
    failed = {}
    for p in (p for p in paths if not is_remote(p)):  # as Beam's local delete: try all, then raise
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.remove(p)  # a missing path is an error, not a silent no-op
        except OSError as e:
            failed[p] = e
    if failed:
        first = next(iter(failed.values()))
        raise OSError(first.errno, f"could not delete {len(failed)} path(s): {first}")
    remote = [p for p in paths if is_remote(p)]
    if remote:
        _beam().delete(remote)


def mkdirs(path: str) -> None:
    """Creates a folder and its parents; an existing folder is fine."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
    elif not _beam().exists(path):
        _beam().mkdirs(path)


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    return _beam().exists(path)


def size(path: str) -> int | None:
    """A file's size in bytes, or None if it does not exist (or is a folder)."""
    if not is_remote(path):
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_size if not os.path.isdir(path) else None
    found = _beam().match([path])[0].metadata_list
    return found[0].size_in_bytes if found else None


def children(folder: str) -> list[str]:
    """Names of the entries directly inside ``folder`` (files and folders), sorted."""
    if not is_remote(folder):
        try:
            return sorted(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):  # no such folder, or a file
            return []
    prefix = folder.rstrip("/") + "/"
    names = {m.path[len(prefix):].split("/", 1)[0]
             for m in _beam().match([prefix + "**"])[0].metadata_list if m.path.startswith(prefix)}
    return sorted(n for n in names if n)


def files_under(folder: str) -> list[str]:
    """Paths (relative to ``folder``, ``/``-separated) of every file below it, sorted."""
    if not is_remote(folder):
        out = []
        for root, _, names in os.walk(folder):
            rel = os.path.relpath(root, folder)
            out += [name if rel == "." else posixpath.join(rel.replace(os.sep, "/"), name) for name in names]
        return sorted(out)
    prefix = folder.rstrip("/") + "/"
    return sorted(m.path[len(prefix):] for m in _beam().match([prefix + "**"])[0].metadata_list)
