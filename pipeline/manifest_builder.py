"""The records job's manifest, from what its pipeline reports: per-CSV reconciliation
(rows in = written + rejected), per-split totals, every shard's stats, the dataset the
records came from (``describe_dataset``); and the snapshot's own files (dead letters,
index) that the manifest names.
"""

from __future__ import annotations

import datetime
import json
import posixpath

import numpy as np

from core import commit as commit_lib
from core import datasets, storage
from pipeline import index as index_lib
from pipeline import rows as rows_lib
from pipeline import self_trained, shards
from pipeline.build_config import BuildConfig
from pipeline.inputs import CsvSource, ListedRow
from schemas import chexpert, mimic, nih
from schemas import example as example_lib
from schemas import manifest as manifest_lib
from schemas import sources as sources_lib

INDEX = "index.tsv"
_SPLIT_SOURCE = {"train": "train.csv", "holdout": "train.csv", "valid": "valid.csv"}


def summarize(cfg: BuildConfig, sources: list[CsvSource], stats: list[manifest_lib.ShardStats],
              rejects: list[dict]) -> manifest_lib.Manifest:
    """The manifest's options, policy, per-source reconciliation and per-split totals
    (the rest, from ``fingerprint`` on, is filled in as the run commits).

    Args:
        stats: one per listed shard (this run's, and in an incremental run the ones it keeps).
        rejects: ``Reject.to_dict()`` of every dead letter.

    Raises:
        RuntimeError: rows in != written + rejected for some CSV.
    """
    splits: dict[str, manifest_lib.SplitInfo] = {}
    for s in sorted(stats, key=lambda s: (s.split, s.shard)):
        sp = splits.setdefault(s.split, manifest_lib.SplitInfo(
            views={}, raw_counts=manifest_lib.empty_counts(chexpert.OBSERVATIONS),
            target_counts=manifest_lib.empty_counts(chexpert.OBSERVATIONS)))
        sp.add_shard(s)
    by_source = {src.name: manifest_lib.SourceInfo(path=src.path, sha256=src.sha256, rows=src.rows)
                 for src in sources}
    for split, sp in splits.items():
        # An external dataset's records all come from its one label file.
        by_source[sources[0].name if cfg.external else _SPLIT_SOURCE[split]].written += sp.written
    for r in rejects:
        by_source.setdefault(r["source"], manifest_lib.SourceInfo()).add_reject(r["reason"])
        if r["split"] in splits:
            splits[r["split"]].add_reject(r["reason"])
    for sp in splits.values():
        sp.rows = sp.written + sp.rejected
    bad = [f"{name}: {s.rows} rows in, {s.written} written + {s.rejected} rejected"
           for name, s in by_source.items() if s.rows != s.written + s.rejected]
    if bad:
        raise RuntimeError("counts do not reconcile, nothing committed: " + "; ".join(bad))
    labeller = (self_trained.labeller_info(cfg.labeller, cfg.labeller_sha256, cfg.policy, stats)
                if cfg.labeller else None)
    return manifest_lib.Manifest(
        schema_version=chexpert.SCHEMA_VERSION,
        record_order=example_lib.RECORD_ORDER,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        observations=list(chexpert.OBSERVATIONS),
        policy=cfg.policy,
        blank=cfg.blank,
        image_size=cfg.image_size,
        encoding=cfg.encoding,
        options=cfg.manifest_options(),
        sources=by_source,
        splits=splits,
        labeller=labeller,
        shard_stats={s.shard: s for s in stats},
        rows=sum(s.rows for s in by_source.values()),
        written=sum(s.written for s in by_source.values()),
        rejected=sum(s.rejected for s in by_source.values()),
    )


_CODE_NAMES = {int(chexpert.Code.POSITIVE): "positive", int(chexpert.Code.NEGATIVE): "negative",
               int(chexpert.Code.UNCERTAIN): "uncertain", int(chexpert.Code.BLANK): "blank"}


def describe_dataset(cfg: BuildConfig, dataset: datasets.Dataset | None, sources: list[CsvSource],
                     index: dict[str, dict], by_path: dict[str, ListedRow]) -> dict[str, manifest_lib.DatasetInfo]:
    """The manifest's ``datasets``: the one dataset the records came from, with the
    observations it labels and counts over the committed records.

    Args:
        dataset: the NIH/MIMIC dataset, or None for CheXpert (whose files are ``sources``).
        index: {path: index entry} of every committed record (its ``codes``).
        by_path: the listed row of each path (its source's own labels, ``findings``).
    """
    labelled = list(sources_lib.labelled(cfg.format))
    codes = np.array([e["codes"] for e in index.values()], np.int64).reshape(-1, chexpert.NUM_OBSERVATIONS)
    counts = {}
    for slug in labelled:
        values, n = np.unique(codes[:, chexpert.OBSERVATION_INDEX[slug]], return_counts=True)
        counts[slug] = {_CODE_NAMES[int(v)]: int(c) for v, c in zip(values, n)}
    unmapped: dict[str, int] = {}
    if cfg.external:  # CheXpert's labels are the observations themselves
        for path in index:
            listed = by_path.get(path)
            for finding in rows_lib.unmapped_findings(cfg.format, listed.findings if listed else ()):
                unmapped[finding] = unmapped.get(finding, 0) + 1
    if dataset is None:
        files = {s.name: {"sha256": s.sha256, "rows": s.rows} for s in sources}
        official, folder, notes = "valid.csv" in files, cfg.input_dir, []
    else:
        files = {f.name: {"sha256": f.sha256, "rows": f.rows} for f in dataset.files}
        official, folder, notes = dataset.official_split, dataset.folder, list(dataset.notes)
        if not official:
            notes.append(no_split_files_note(cfg.format, cfg.holdout_fraction))
    return {cfg.format: manifest_lib.DatasetInfo(
        format=cfg.format, folder=folder, files=files, official_split=official, labelled=labelled,
        unlabelled=[s for s in chexpert.OBSERVATIONS if s not in labelled], counts=counts,
        unmapped_findings=dict(sorted(unmapped.items())), notes=notes)}


def no_split_files_note(fmt: str, holdout_fraction: float) -> str:
    """What a dataset folder without its official split files became: all train/holdout."""
    expected = ("train_val_list.txt and test_list.txt" if fmt == nih.DATASET
                else " or ".join(mimic.SPLIT_FILES))
    where = (f"split train/holdout by patient with --holdout_fraction={holdout_fraction:g}" if holdout_fraction
             else "in train (--holdout_fraction=0: no holdout)")
    return f"no official split files ({expected} not in the folder): every image {where}; no test or valid split"


def fill_missing_shards(snapshot_dir: str, written: list[shards.WrittenShard], tag: str) -> list[shards.WrittenShard]:
    """A full build: writes an empty shard for any index no row hashed to, so ``-of-N``
    always holds N. An incremental run keeps only the delta shards that hold records (and
    deletes the empty ones it wrote), so empty files do not pile up run after run."""
    if tag:
        empty = [w for w in written if not w.stats.written]
        storage.delete([posixpath.join(snapshot_dir, w.stats.shard) for w in empty])
        return [w for w in written if w.stats.written]
    seen = {(w.stats.split, w.stats.index) for w in written}
    for split, n in {(w.stats.split, w.stats.num_shards) for w in written}:
        for i in range(n):
            if (split, i) not in seen:
                name = shards.shard_name(split, i, n, tag)
                storage.write_bytes(posixpath.join(snapshot_dir, name), b"")
                written.append(shards.WrittenShard(manifest_lib.ShardStats(
                    shard=name, split=split, index=i, num_shards=n, views={}, raw_counts={}, target_counts={})))
    return written


def write_snapshot(cfg: BuildConfig, snapshot: str, manifest: manifest_lib.Manifest, rejects: list[dict],
                   index: dict) -> None:
    """Writes this run's dead letters and index into its snapshot folder and completes
    ``manifest``: their names, and ``files``, every file the snapshot consists of (this
    run's and the kept ones of earlier snapshots) with its size."""
    out = cfg.output_dir
    reject_files = []
    for name in manifest.sources:  # train.csv, valid.csv; or an external dataset's label file
        rows = sorted((r for r in rejects if r["source"] == name), key=lambda r: r["row"])
        rel = f"{snapshot}/rejected-{name.removesuffix('.gz').removesuffix('.csv')}.jsonl"
        storage.write_bytes(posixpath.join(out, rel), "".join(json.dumps(r, sort_keys=True) + "\n"
                                                             for r in rows).encode())
        reject_files.append(rel)
    index_rel = f"{snapshot}/{INDEX}"
    storage.write_bytes(posixpath.join(out, index_rel), index_lib.write_index(index))
    manifest.snapshot = snapshot
    manifest.rejected_files = reject_files
    manifest.index_file = index_rel
    shard_files = [n for sp in manifest.splits.values() for n in sp.shards]
    manifest.files = commit_lib.file_sizes(out, shard_files + reject_files + [index_rel])
