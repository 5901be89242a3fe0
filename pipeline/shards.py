"""How a split's records are cut into shards: how many, which one a record goes to, and
the shard's file name, and what writing one reports. No Beam.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

from schemas import manifest as manifest_lib

# Bytes per stored 320^2 image, before the Example's ~0.5 KB of labels and metadata; used
# only to pick a shard count before any image is read. PNG's ratio was measured on the
# synthetic set (BUILD_NOTES.md); real radiographs compress similarly within ~20%.
ENCODED_RATIO = {"raw": 1.0, "png": 0.65, "jpeg": 0.35}
# Fewer rows than this per shard and a hash split could leave a shard empty.
MIN_ROWS_PER_SHARD = 64


def num_shards_for(rows: int, *, image_size: int, encoding: str, shard_size_mb: float, min_shards: int,
                   fixed: int = 0) -> int:
    """How many shards a split of ``rows`` records gets.

    ``fixed`` (``--num_shards``) wins. Otherwise enough shards to keep each near
    ``shard_size_mb``, at least ``min_shards`` so that several workers write in parallel,
    but never so many that a shard expects fewer than MIN_ROWS_PER_SHARD rows (a hash split
    could then leave one empty).
    """
    if rows <= 0:
        return 0
    if fixed:
        return fixed
    est = rows * (image_size * image_size * ENCODED_RATIO[encoding] + 600)
    n = max(math.ceil(est / (shard_size_mb * 2**20)), min_shards)
    return max(1, min(n, rows // MIN_ROWS_PER_SHARD))


def shard_of(key: str, num_shards: int) -> int:
    """A record's shard: a stable hash of its key (its Path), independent of input order."""
    return int.from_bytes(hashlib.sha256(("shard:" + key).encode()).digest()[:8], "big") % num_shards


def shard_name(split: str, index: int, num_shards: int, tag: str = "") -> str:
    """``train-00003-of-00008.tfrecord``; an incremental run's shards carry its tag:
    ``train-u20261125T182300-00000-of-00001.tfrecord``."""
    return f"{split}-{tag + '-' if tag else ''}{index:05d}-of-{num_shards:05d}.tfrecord"


@dataclasses.dataclass
class WrittenShard:
    """What WriteShards reports for one shard (a line of the snapshot's ``stats*.jsonl``):
    its stats for the manifest, and per record (in file order) what the index keeps.

    Attributes:
        stats: the shard's counts.
        paths: each record's Path; codes: its 14 raw label codes; views: ``frontal`` or
            ``lateral``; labeller: its ``labels/teacher`` (14 floats) or None; files: its
            image file's ``core.fingerprint`` stat as the writer read it (the index's ``stat``);
            rejected_files: for each row rejected for its image, the stat the read found.
    """

    stats: manifest_lib.ShardStats
    paths: list[str] = dataclasses.field(default_factory=list)
    codes: list[list[int]] = dataclasses.field(default_factory=list)
    views: list[str] = dataclasses.field(default_factory=list)
    labeller: list[list[float] | None] = dataclasses.field(default_factory=list)
    files: list[str] = dataclasses.field(default_factory=list)
    rejected_files: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return {"stats": self.stats.to_json(), "paths": self.paths, "codes": self.codes, "views": self.views,
                "labeller": self.labeller, "files": self.files, "rejected_files": self.rejected_files}

    @classmethod
    def from_json(cls, d: dict) -> WrittenShard:
        return cls(manifest_lib.ShardStats.from_json(d["stats"]), d["paths"], d["codes"], d["views"], d["labeller"],
                   d["files"], d["rejected_files"])
