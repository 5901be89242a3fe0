"""Incremental builds (``--incremental``): which committed records a run keeps, and the
compaction of shards that hold records it drops.

A kept record is one whose row (cells digest) and image (size, mtime) are unchanged since
the committed run; its shard is kept as it is, or, when some of its records are dropped,
compacted: the kept records copied (no decoding) into a new shard of this run's snapshot.
A committed shard is never modified.
"""

from __future__ import annotations

import dataclasses
import posixpath

import numpy as np

from core import commit as commit_lib
from core import storage, tfrecord
from core.csv_reader import Reject
from pipeline import example_builder, index as index_lib, rows as rows_lib, self_trained
from pipeline.build_config import LOCATION_OPTIONS, BuildConfig, output_options
from pipeline.inputs import ListedRow
from schemas import chexpert
from schemas import example as example_lib
from schemas import manifest as manifest_lib


@dataclasses.dataclass
class CarryOver:
    """What an incremental run keeps of the committed records.

    Attributes:
        skip: {csv name: int64 array of line numbers} the pipeline need not read (kept rows
            and later duplicates of them).
        duplicate_rejects: dead letters (``Reject.to_dict()``) for those duplicates.
        kept_stats: the stats of every committed shard kept (untouched, or compacted into
            this run's snapshot).
        index: {path: index entry} of the kept records (``pipeline.index``).
    """

    skip: dict[str, np.ndarray]
    duplicate_rejects: list[dict]
    kept_stats: list[manifest_lib.ShardStats]
    index: dict[str, dict]


def incompatible(cfg: BuildConfig, previous: manifest_lib.Manifest) -> str | None:
    """Why an incremental run cannot reuse the committed output (naming what changed), or
    None if it can."""
    if previous.schema_version != chexpert.SCHEMA_VERSION:
        return "schema version changed"
    if previous.record_order != example_lib.RECORD_ORDER:
        return "the order of records inside shards changed"  # compaction relies on it
    old, new = output_options(previous.options), output_options(cfg.manifest_options())
    changed = sorted(k for k in old.keys() | new.keys() if k not in LOCATION_OPTIONS and old.get(k) != new.get(k))
    if changed:
        return "options changed (" + ", ".join(f"--{k} {old.get(k)!r} -> {new.get(k)!r}" for k in changed) + ")"
    if previous.policy != cfg.policy:
        changed = sorted(k for k in previous.policy.keys() | cfg.policy.keys()
                         if previous.policy.get(k) != cfg.policy.get(k))
        return "--policy changed (" + ", ".join(f"{k}: {previous.policy.get(k)} -> {cfg.policy.get(k)}"
                                                for k in changed) + ")"
    if not previous.index_file:
        return "no index of the committed records"
    return None


def carry_over(cfg: BuildConfig, rows: list[ListedRow], previous: manifest_lib.Manifest, snapshot: str, tag: str,
               valid_patients: frozenset, held_out: dict | None = None) -> CarryOver:
    """Decides what an incremental run keeps, compacting the shards it drops records from
    into this run's ``snapshot`` (their names carry ``tag``).

    ``held_out``: an external dataset's patients with images in two splits
    (``inputs.check_held_out``); a kept image of one of them that must now be a dead letter
    is processed again, as a train.csv row of a patient since seen in valid.csv is.

    Raises:
        commit_lib.DamagedOutputError: the committed index cannot be read.
    """
    index_path = posixpath.join(cfg.output_dir, previous.index_file)
    try:
        old_index = index_lib.read_index(storage.read_bytes(index_path))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise commit_lib.DamagedOutputError(f"{index_path}: unreadable records index ({e}); rerun with --overwrite "
                                            "to rebuild the output") from None
    first: dict[str, ListedRow] = {}
    for r in rows:
        first.setdefault(r.path, r)  # rows come in file, then line order: the first occurrence
    keep = {p: e for p, e in old_index.items()
            if p in first and first[p].stat == e["stat"] and first[p].digest == e["row"]
            # a patient who has since appeared in valid.csv: the row must become a dead letter
            and not (first[p].source == "train.csv" and first[p].patient in valid_patients)
            and not rows_lib.leak_reason(first[p].split, (held_out or {}).get(first[p].patient))}
    skip: dict[str, list[int]] = {}
    duplicate_rejects = []
    for r in rows:
        if r.path not in keep:
            continue
        skip.setdefault(r.source, []).append(r.line)
        f = first[r.path]
        if r is not f:
            duplicate_rejects.append(Reject(r.source, r.line, r.path, keep[r.path]["split"], "duplicate_path",
                                            f"Path {r.path!r} already appears at {f.source} line {f.line}").to_dict())
    dropped_from = {e["shard"] for p, e in old_index.items() if p not in keep}
    kept_stats = []
    for name, st in previous.shard_stats.items():
        if name not in dropped_from:
            kept_stats.append(dataclasses.replace(st))
            continue
        # Compaction: copy the kept records (no decoding) into a new shard of this run's
        # snapshot. A shard's records are its index entries in example_lib.record_order, as
        # WriteShardFn writes them.
        in_shard = sorted((p for p, e in old_index.items() if e["shard"] == name),
                          key=lambda p: example_lib.record_order(p, old_index[p]["view"]))
        survivors = [p for p in in_shard if p in keep]
        if not survivors:
            continue
        new_name = f"{snapshot}/" + posixpath.basename(name).replace(".tfrecord", f".{tag}.tfrecord")
        size = 0
        with storage.open_read(posixpath.join(cfg.output_dir, name)) as src, \
                storage.create(posixpath.join(cfg.output_dir, new_name)) as dst:
            for path, data in zip(in_shard, tfrecord.read_records(src, name)):
                if path in keep:
                    size += tfrecord.write_record(dst, data)
        kept_stats.append(stats_for(cfg, survivors, keep, st.split, new_name, size))
        for p in survivors:
            keep[p] = {**keep[p], "shard": new_name}
    skip_arrays = {name: np.array(sorted(lines), np.int64) for name, lines in skip.items()}
    return CarryOver(skip_arrays, duplicate_rejects, kept_stats, keep)


def stats_for(cfg: BuildConfig, paths: list[str], entries: dict, split: str, shard: str,
              size: int) -> manifest_lib.ShardStats:
    """A compacted shard's stats, recomputed from its index entries' stored label codes."""
    codes = np.array([entries[p]["codes"] for p in paths], np.int64)
    draws = np.stack([chexpert.draws_for(p, cfg.seed) for p in paths])
    soft = np.stack([chexpert.no_labeller_values() if entries[p].get("teacher") is None
                     else np.asarray(entries[p]["teacher"], np.float32) for p in paths])
    targets, mask = chexpert.apply_policy(codes, draws, cfg.table, soft)
    if cfg.external:  # as example_builder.build_example masks an external record
        mask = mask * example_builder.labelled_mask(cfg.format)
    raw_counts, target_counts = example_builder.label_counts(codes, targets, mask)
    views: dict[str, int] = {}
    for p in paths:
        views[entries[p]["view"]] = views.get(entries[p]["view"], 0) + 1
    return manifest_lib.ShardStats(
        shard=shard, split=split, written=len(paths), bytes=size, views=views, raw_counts=raw_counts,
        target_counts=target_counts,
        relabelled=self_trained.relabelled_counts([entries[p].get("teacher") for p in paths]))
