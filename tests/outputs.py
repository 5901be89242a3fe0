"""Reading a committed output folder (``core.commit`` layout) the way a reader does:
through ``manifest.json`` only."""

from __future__ import annotations

import json
import os

from core import storage


def manifest(out) -> dict:
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)


def contents(out) -> dict[str, bytes]:
    """Every committed file, keyed by its name within its snapshot folder, with the snapshot
    ids in its bytes (the index names shards by path) replaced by ``SNAPSHOT``: two runs
    that committed the same data compare equal."""
    m = manifest(out)
    snapshots = {n.split("/")[0] for n in m["files"]}
    got = {}
    for rel in m["files"]:
        with open(os.path.join(out, rel), "rb") as f:
            data = f.read()
        for s in snapshots:
            data = data.replace(s.encode(), b"SNAPSHOT")
        got[rel.split("/", 1)[1]] = data
    return got


def unreferenced(out) -> set[str]:
    """Files in ``out`` that the committed manifest does not reference (besides itself and
    the lock file): what garbage collection should have removed."""
    listed = set(manifest(out)["files"]) | {"manifest.json", ".lock"}
    return set(storage.files_under(str(out))) - listed


def records_by_split(out) -> dict[str, list[bytes]]:
    """{split: the serialized records of its committed shards, sorted}: what a build
    committed, whatever its snapshot and shard names."""
    from core import tfrecord

    got = {}
    for split, sp in manifest(out)["splits"].items():
        recs = []
        for name in sp["shards"]:
            with open(os.path.join(out, name), "rb") as f:
                recs += list(tfrecord.read_records(f, name))
        got[split] = sorted(recs)
    return got
