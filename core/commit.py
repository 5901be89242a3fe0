"""Snapshot commits, output locks and guards against mass loss: one implementation that
both scheduled jobs (``pipeline.build_records``, ``pipeline.score``) use.

Layout of an output folder::

    OUTPUT/manifest.json              the pointer: names every file of the committed snapshot
    OUTPUT/snapshot-<time>-<id>/...   one folder per run; never modified once committed
    OUTPUT/.lock                      held (flock) by the run in progress

The design is the one table formats that run unattended use (Apache Iceberg, Delta Lake) and
TFDS's versioned dataset folders: a run only ever *adds* files, under a new, uniquely named
snapshot folder; its commit is one atomic step, writing ``manifest.json`` (locally a
temporary file renamed over it: ``rename(2)`` is atomic; on an object store a single-object
upload, which readers see whole or not at all). Readers follow ``manifest.json`` only. So a
kill, a full disk or any error at any step leaves either the old snapshot whole (before the
commit) or the new one whole (after it). Files no committed manifest references (a killed
run's snapshot, the previous snapshot once replaced) are garbage: collected under the lock,
after a successful commit and at the start of the next run.

Before a run trusts the committed output ("nothing new", or an incremental run that keeps
part of it), ``verify`` checks that every file the manifest lists is present with the size it
records; damaged metadata is a ``DamagedOutputError`` naming the file, and ``--overwrite``
(which neither trusts nor needs the old output) recovers.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import re
import socket
import uuid
from typing import Iterator

from core import storage
from schemas import manifest as manifest_lib

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = ".lock"
SNAPSHOT_PREFIX = "snapshot-"
_TMP_RE = re.compile(r"^\.manifest-[0-9a-f]+\.tmp$")
# Top-level names the jobs wrote before snapshot folders (schema of 2026-11 and earlier):
# collected once no manifest references them.
_LEGACY_RE = re.compile(r"^(\.staging-.*|.*\.tfrecord|rejected.*\.jsonl|index\.tsv|scores\.(csv|jsonl)|"
                        r"manifest\.json\.tmp)$")


class LockedError(RuntimeError):
    """Another run holds the output folder's lock."""


class DamagedOutputError(RuntimeError):
    """The committed output is not what its manifest says; the message names the file."""


class GuardError(RuntimeError):
    """A run that would lose too much (rejects, or a shrink of the committed output):
    nothing was committed; the message says why and which flag accepts it."""


class OutputError(ValueError):
    """An output folder that cannot be used (e.g. a file); the message names it."""


def check_output_dir(output_dir: str, flag: str = "--output_dir") -> None:
    """Raises OutputError if ``output_dir`` exists and is not a folder, or holds a
    ``manifest.json`` or ``.lock`` that is not a file (nothing could be committed there)."""
    if storage.is_remote(output_dir) or not os.path.exists(output_dir):
        return
    if not os.path.isdir(output_dir):
        raise OutputError(f"{flag}={output_dir} is a file, not a folder; choose a folder for the output")
    for name in (MANIFEST, LOCK):
        path = os.path.join(output_dir, name)
        if os.path.lexists(path) and not os.path.isfile(path):
            raise OutputError(f"{path} is not a file (a folder or a link?); remove it, or choose another {flag}")


# --- Lock -----------------------------------------------------------------------------------


@contextlib.contextmanager
def exclusive(output_dir: str) -> Iterator[None]:
    """Holds an exclusive kernel lock (``flock``) on ``output_dir/.lock`` while the body runs.

    The kernel releases it when the process ends in any way (``kill -9`` included), so a lock
    can never outlive its run, whatever the lock file holds (empty after a full disk, stale
    holder details, unreadable): only a live process holding the lock blocks. The file is
    never deleted, since deleting a lock file lets two runs lock two different files.

    Raises:
        LockedError: a live run holds the lock (the message names it).
        OutputError: ``output_dir`` is a file.
    """
    if storage.is_remote(output_dir):
        log.warning("%s: object stores cannot be locked; do not start overlapping runs", output_dir)
        yield
        return
    check_output_dir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"{output_dir} is locked by another run ({_holder(fd)}); wait for it to finish") from None
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        except OSError as e:
            # The holder details only feed the message a second run prints; the lock is the
            # kernel's and is held regardless.
            log.warning("%s: could not record the lock holder (%s); the lock is held all the same", path, e)
        yield
    finally:
        os.close(fd)  # releases the flock


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


# --- Snapshots ------------------------------------------------------------------------------


@contextlib.contextmanager
def new_snapshot(output_dir: str) -> Iterator[tuple[str, str]]:
    """Creates this run's snapshot folder and yields ``(name, path)``. The name sorts by
    time and is unique (uuid), so no two runs ever write the same file.

    An exception from the body means the run did not commit (``commit`` raises only before
    its atomic step): the unfinished folder is removed, or left for the next run's
    collection when that fails too. A kill skips this, and the collection covers it.
    """
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    name = f"{SNAPSHOT_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}"
    path = storage.join(output_dir, name)
    storage.mkdirs(path)
    try:
        yield name, path
    except Exception:
        try:
            storage.delete([path])
        except Exception as e:  # the next run collects it
            log.warning("could not remove the unfinished snapshot %s: %s", path, e)
        raise


def read_manifest(output_dir: str) -> dict | None:
    """The committed manifest, or None when the folder holds none.

    Raises:
        DamagedOutputError: manifest.json exists but is not a readable JSON object.
    """
    path = storage.join(output_dir, MANIFEST)
    if not storage.exists(path):
        return None
    try:
        manifest = json.loads(storage.read_bytes(path))
    except (OSError, ValueError) as e:
        raise DamagedOutputError(f"{path}: unreadable or not valid JSON ({e}); the committed output cannot be "
                                 "trusted: rerun with --overwrite to rebuild it") from None
    if not isinstance(manifest, dict):
        raise DamagedOutputError(f"{path}: not a manifest (a JSON object expected); rerun with --overwrite")
    return manifest


def read_records_manifest(records_dir: str) -> manifest_lib.Manifest | None:
    """The committed manifest of a records folder (``pipeline.build_records``), typed: the
    one way every reader of records reads it. None when the folder holds none.

    Raises:
        DamagedOutputError: manifest.json exists but is not a records manifest.
    """
    raw = read_manifest(records_dir)
    if raw is None:
        return None
    try:
        return manifest_lib.Manifest.from_json(raw)
    except (manifest_lib.ManifestError, TypeError) as e:
        raise DamagedOutputError(f"{storage.join(records_dir, MANIFEST)}: not a records manifest ({e}); rebuild "
                                 "the records with --overwrite") from None


def committed(output_dir: str, overwrite: bool) -> dict | None:
    """The committed manifest, verified against the files it lists, after collecting what
    no manifest references (a killed run's snapshot); None when there is none.

    Args:
        overwrite: the run replaces the output whatever it holds: damaged output is then
            logged and treated as absent instead of being an error.

    Raises:
        DamagedOutputError: without ``overwrite``.
    """
    try:
        previous = read_manifest(output_dir)
        if previous is not None:
            verify(output_dir, previous)
    except DamagedOutputError as e:
        if not overwrite:
            raise
        log.warning("%s; --overwrite: replacing it", e)
        return None
    if previous is not None:
        collect_garbage(output_dir, previous)
    return previous


def verify(output_dir: str, manifest: dict) -> None:
    """Checks that every file the manifest lists is present with the size it records.

    Raises:
        DamagedOutputError: naming the first missing or resized file.
    """
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise DamagedOutputError(f"{storage.join(output_dir, MANIFEST)}: lists no files (written by an older "
                                 "version, or damaged); rerun with --overwrite to rebuild the output")
    for rel, want in sorted(files.items()):
        got = storage.size(storage.join(output_dir, rel))
        if got is None:
            raise DamagedOutputError(f"{storage.join(output_dir, rel)}: listed by the committed manifest but missing; "
                                     "rerun with --overwrite to rebuild the output")
        if got != want:
            raise DamagedOutputError(f"{storage.join(output_dir, rel)}: {got} bytes, the committed manifest says "
                                     f"{want}; rerun with --overwrite to rebuild the output")


def file_sizes(output_dir: str, rels: list[str]) -> dict[str, int]:
    """{relative path: size} of files just written, for the manifest's ``files``."""
    out = {}
    for rel in rels:
        n = storage.size(storage.join(output_dir, rel))
        if n is None:
            raise RuntimeError(f"{storage.join(output_dir, rel)}: written by this run but not found; nothing committed")
        out[rel] = n
    return out


def commit(output_dir: str, manifest: dict) -> None:
    """Makes ``manifest`` (whose ``files`` name every file of the new snapshot) the committed
    one, in one atomic step; then collects what no longer belongs to it.

    Whatever fails before the final rename (or upload) leaves the previous manifest, and so
    the previous snapshot, exactly as it was, and raises. Once it is done the run has
    committed: a failure to collect garbage after it is only logged (the next run collects).
    """
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    final = storage.join(output_dir, MANIFEST)
    if storage.is_remote(output_dir):
        storage.write_bytes(final, data)  # one object: visible whole or not at all
    else:
        tmp = storage.join(output_dir, f".manifest-{uuid.uuid4().hex}.tmp")
        storage.write_bytes(tmp, data)
        storage.rename(tmp, final)
    try:
        collect_garbage(output_dir, manifest)
    except Exception as e:  # committed already; the next run's start collects the rest
        log.warning("committed; could not collect unreferenced files in %s yet: %s", output_dir, e)


def collect_garbage(output_dir: str, manifest: dict) -> list[str]:
    """Deletes what the jobs wrote into ``output_dir`` that ``manifest`` does not reference:
    other snapshot folders, stray files inside referenced ones, temporary manifests, and
    top-level files of the pre-snapshot layout. Anything else (a user's own files) is left.

    Call only under the lock, with the committed manifest. Returns the deleted paths.
    """
    files = manifest.get("files")
    if not isinstance(files, dict):
        return []
    referenced = set(files)
    snapshots = {rel.split("/", 1)[0] for rel in referenced if "/" in rel}
    doomed = []
    for name in storage.children(output_dir):
        path = storage.join(output_dir, name)
        if name in (MANIFEST, LOCK) or name in referenced:
            continue
        if name.startswith(SNAPSHOT_PREFIX):
            if name not in snapshots:
                doomed.append(path)
            else:
                doomed += [storage.join(path, rel) for rel in storage.files_under(path)
                           if f"{name}/{rel}" not in referenced]
        elif _TMP_RE.match(name) or _LEGACY_RE.match(name):
            doomed.append(path)
    if doomed:
        log.info("collecting %d unreferenced entries in %s", len(doomed), output_dir)
        storage.delete(doomed)
    return doomed


# --- Guards against mass loss -----------------------------------------------------------------


def check_rejected(rejected: int, total: int, max_fraction: float, what: str, flag: str) -> None:
    """Raises GuardError when more than ``max_fraction`` of ``total`` inputs were rejected."""
    if total and rejected / total > max_fraction:
        raise GuardError(f"{rejected} of {total} {what} rejected ({rejected / total:.1%} > {flag}={max_fraction:g}); "
                         "nothing committed. Look at the reasons above (a missing or unmounted image folder?); "
                         f"to commit anyway, raise {flag}")


def check_shrink(kept: int, previous: int, max_fraction: float, what: str, flag: str) -> None:
    """Raises GuardError when the new output holds more than ``max_fraction`` fewer ``what``
    than the committed one."""
    if previous and (previous - kept) / previous > max_fraction:
        raise GuardError(f"this run would shrink the committed output from {previous} to {kept} {what} "
                         f"({(previous - kept) / previous:.1%} > {flag}={max_fraction:g}); nothing committed. "
                         f"If the inputs really shrank, rerun with {flag}=1")

