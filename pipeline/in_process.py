"""The records job's graph run in this process, without a Beam pipeline: for an incremental
run's small delta, where starting a runner and its workers costs more than the work.

The same DoFns as ``pipeline.transforms.build_pipeline`` are called in the same order on
the same elements, and the shuffles they stand between (GroupByPath, CountPerSplit,
GroupByShard) become dicts: both paths sort inside each group before writing, so the
records, the stats and the dead letters are the same (tested against a Beam run). Shards
are written by ``workers`` threads (decoding and resizing release the GIL).

Not for ``--labeller`` (RunInference loads a Keras model per worker): the caller runs Beam.
"""

from __future__ import annotations

import concurrent.futures
import json
from typing import Iterable

import apache_beam as beam

from core.csv_reader import Reject
from pipeline import rows as rows_lib
from pipeline import transforms
from pipeline.build_config import BuildConfig


def _call(fn: beam.DoFn, elements: Iterable, rejects: list, **side) -> list:
    """``fn.process`` over ``elements``: its main outputs; REJECTED ones appended to ``rejects``."""
    out = []
    for element in elements:
        for item in fn.process(element, **side) or ():
            if isinstance(item, beam.pvalue.TaggedOutput):
                if item.tag != transforms.REJECTED:
                    raise ValueError(f"{type(fn).__name__}: unexpected output {item.tag!r}")
                rejects.append(item.value)
            else:
                out.append(item)
    return out


def _as_written(elements: Iterable) -> list[dict]:
    """What WriteJsonLines then ``runs.take_jsonl`` give the driver: each element as JSON."""
    return [json.loads(json.dumps(e.to_dict() if isinstance(e, Reject) else e, sort_keys=True))
            for e in elements]


def run(cfg: BuildConfig, sources: list[tuple[str, str, int]], snapshot_dir: str, skip: dict | None = None,
        tag: str = "", valid_patients: frozenset = frozenset(), held_out: dict | None = None,
        workers: int = 2) -> tuple[list[dict], list[dict]]:
    """Writes the shards of the rows not in ``skip`` into ``snapshot_dir``, as
    ``transforms.build_pipeline`` would (same arguments).

    Returns:
        (the ``shards.WrittenShard`` JSON of every shard written, every dead letter's
        ``Reject.to_dict()``): what the Beam job leaves in ``stats-*.jsonl`` and
        ``rejects-*.jsonl``.
    """
    if cfg.labeller:
        raise ValueError("--labeller needs the Beam pipeline (RunInference)")
    rejects: list = []
    if cfg.external:
        read = transforms.ReadDatasetFn(cfg.holdout_fraction, skip, held_out)
        read.setup()
        parsed = _call(read, [(cfg.input_dir, cfg.format)], rejects)
    else:
        read = transforms.ReadCsvFn(skip)
        read.setup()
        folder = rows_lib.dataset_folder(cfg.input_dir, sources[0][0]) if sources else ""
        parsed = _call(transforms.ParseRowFn(cfg.holdout_fraction, valid_patients, folder),
                       _call(read, [(path, split, 0, 1) for path, split, _ in sources], rejects), rejects)
    by_path: dict[str, list] = {}
    for path, item in parsed:  # GroupByPath
        by_path.setdefault(path, []).append(item)
    unique = _call(transforms.RejectDuplicatesFn(), by_path.items(), rejects)
    counts: dict[str, int] = {}
    for split, _ in unique:  # CountPerSplit
        counts[split] = counts.get(split, 0) + 1
    plan = {split: transforms.shards_per_split(cfg, n) for split, n in counts.items()}
    by_shard: dict[tuple, list] = {}
    for element in unique:  # AssignShards, GroupByShard
        key, item = transforms.assign_shard(element, plan)
        by_shard.setdefault(key, []).append(item)
    write = transforms.WriteShardFn(cfg.input_dir, snapshot_dir, cfg.example_settings(), tag, cfg.labeller_indices)

    def write_shard(element) -> tuple[list, list]:  # one shard per task, with its own dead letters
        shard_rejects: list = []
        return _call(write, [element], shard_rejects), shard_rejects

    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(write_shard, [(key, [items]) for key, items in sorted(by_shard.items())]))
    stats = []
    for written, shard_rejects in results:
        stats += written
        rejects += shard_rejects
    return _as_written(stats), _as_written(rejects)
