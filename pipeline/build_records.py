r"""Beam job: CheXpert CSV (or an NIH ChestX-ray14 or MIMIC-CXR-JPG folder) + radiographs ->
validated, sharded TFRecords.

Run on this machine (both cores)::

    python -m pipeline.build_records --runner=DirectRunner \
        --direct_num_workers=2 --direct_running_mode=multi_processing

With no ``--input_dir`` and no CheXpert under ``./data``, a synthetic sample is generated in
``data/synthetic`` first (the log says so). On a real copy::

    python -m pipeline.build_records --runner=DirectRunner \
        --input_dir=/datasets/chexpert --output_dir=/datasets/chexpert-records

On Dataflow, add ``--runner=DataflowRunner --project=P --region=R
--temp_location=gs://B/tmp --setup_file=./setup.py`` and use ``gs://`` for both folders.

NIH ChestX-ray14 or MIMIC-CXR-JPG (``--format nih|mimic``, or told from the folder's files)
become the same records, with ``source/dataset`` and the source's own labels
(``source/labels``); observations the dataset does not label are masked. The official
splits are kept: NIH's test list and MIMIC's ``test`` -> ``test``, MIMIC's ``validate`` ->
``valid``, the rest train/holdout by patient (an image a dataset's split files leave out is a
``no_split`` dead letter; a dataset without split files is all train/holdout)::

    python -m pipeline.build_records --runner=DirectRunner \
        --input_dir=/datasets/nih-chestxray14 --output_dir=/datasets/nih-records

U-SelfTrained (the CheXpert paper's policy for Consolidation): with ``--labeller JOB_DIR``,
a trainer.task job trained with that observation ``ignore``d, the job runs the labeller over
every row with an uncertain ``self_trained`` label and stores its P(positive) as the soft
target of exactly those entries (known labels are untouched)::

    python -m pipeline.build_records --runner=DirectRunner --labeller=jobs/labeller \
        --policy=consolidation=self_trained --output_dir=data/records-selftrained

Graph (``pipeline.transforms``; row-sized elements are grouped, never pixels)::

    ListCsvs -> ReadCsv -> ParseRows -> RejectDuplicates -> BatchRows -> PlanShards (side input)
        -> WriteShards
    (RejectDuplicates is a Map, no shuffle, when the driver's scan saw no Path twice; rows
    cross the shuffles after it in lists of up to 1,000)
    NIH/MIMIC: ListDatasets -> ReadDataset (core.datasets, in a worker) -> RejectDuplicates -> ...
    with --labeller: RejectDuplicates -> LabellerTargets (RunInference; side input) -> WriteShards
    every stage's rejects -> WriteRejects;  WriteShards' reports -> WriteStats

An ``--incremental`` run on a local runner whose delta is at most ``--in_process_rows``
rows (5,000) calls the same DoFns in this process (``pipeline.in_process``) instead of
starting the runner and its workers: the same records, dead letters and stats.

Every file a run writes is new, in its own snapshot folder ``OUTPUT/snapshot-<time>-<id>/``.
The driver then checks that rows in = written + rejected for every CSV (an external
dataset's label file) and the guards
(``--max_reject_fraction``, ``--max_shrink_fraction``), and commits by writing
``OUTPUT/manifest.json`` in one atomic step (``core.commit``): the new records appear
only when the whole job succeeded, and any fault before that leaves the committed ones as
they were.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import posixpath
import sys
from typing import Sequence

from pipeline import options as job_options

if __name__ == "__main__":  # --help and flag typos answered before Beam loads
    job_options.build_records_parser(__doc__, warn=False).parse_known_args()

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions  # noqa: E402

from core import cli  # noqa: E402
from core import commit as commit_lib  # noqa: E402
from core.errors import ConfigError  # noqa: E402
from pipeline import in_process, incremental, inputs, manifest_builder, runs, shards, transforms  # noqa: E402
from pipeline.build_config import BuildConfig, configure  # noqa: E402
from schemas import chexpert  # noqa: E402
from schemas import manifest as manifest_lib  # noqa: E402

log = logging.getLogger("build_records")


def make_parser() -> argparse.ArgumentParser:
    """The job's own flags (``pipeline.options``)."""
    return job_options.build_records_parser(__doc__)


def _check_workers_can_load_models(options: PipelineOptions, needed: bool) -> None:
    """With --labeller the workers load a Keras model: on a local runner (workers in this
    environment) a missing [serving] extra is a one-line error before any work, not a
    worker's traceback mid-run. Remote workers get it with the job (README)."""
    if needed and options.view_as(StandardOptions).runner in cli.LOCAL_RUNNERS:
        problem = cli.missing_extra("serving")
        if problem:
            raise ConfigError(f"--labeller: {problem}")


def run(argv: Sequence[str] | None = None, save_main_session: bool = True,
        test_pipeline: beam.Pipeline | None = None) -> dict:
    """Builds the records.

    Args:
        argv: the job's and the runner's flags (default ``sys.argv[1:]``).
        save_main_session: pickle ``__main__``'s globals for remote workers.
        test_pipeline: a pipeline to build into instead of one made from the runner flags
            (e.g. ``apache_beam.testing.test_pipeline.TestPipeline``).

    Returns:
        The committed manifest.json's object (``schemas.manifest.Manifest.to_json``), and
        ``nothing_new``: True when the inputs and options had not changed, nothing was
        built and the committed manifest is returned as it was.

    Raises:
        ConfigError: a bad flag, input folder or CSV header, before any work.
        commit_lib.LockedError: another run holds the output folder.
        commit_lib.DamagedOutputError: the committed output is not what its manifest says
            (``--overwrite`` replaces it).
        commit_lib.GuardError: too many rejects, or too large a shrink (nothing committed).
        RuntimeError: counts that do not reconcile (nothing is committed).
    """
    opts, runner_flags = cli.parse_flags(make_parser(), sys.argv[1:] if argv is None else argv)
    options = PipelineOptions(runs.runner_args(runner_flags))
    options.view_as(SetupOptions).save_main_session = save_main_session
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "DirectRunner"  # Prism would download a binary
    cfg, dataset = configure(opts)
    _check_workers_can_load_models(options, bool(cfg.labeller))
    for note in dataset.notes if dataset is not None else ():
        log.warning("%s", note)
    sources, rows = inputs.list_inputs(cfg, dataset)
    inputs.check_image_folders(cfg, rows)
    valid_patients = inputs.check_patient_overlap(cfg, rows)
    held_out = inputs.check_held_out(cfg, rows)
    fp = inputs.input_fingerprint(cfg, sources, rows, dataset)
    with commit_lib.exclusive(cfg.output_dir):
        raw = commit_lib.committed(cfg.output_dir, cfg.overwrite)
        previous = manifest_lib.Manifest.from_json(raw) if raw is not None else None
        unchanged = previous is not None and not cfg.overwrite and (
            previous.fingerprint == fp
            # or the fingerprint of a manifest from before the folders left it
            or previous.fingerprint == inputs.input_fingerprint(cfg, sources, rows, dataset, with_folders=True))
        if unchanged:
            log.info("nothing new: inputs and options unchanged since %s; output left as it is", previous.created)
            return {**raw, "nothing_new": True}
        if previous and not (cfg.overwrite or cfg.incremental):
            raise ConfigError(f"--output_dir={cfg.output_dir} already holds records (manifest.json) built from "
                              "other inputs or options; pass --overwrite to replace them, --incremental to update "
                              "them, or choose another folder")
        with commit_lib.new_snapshot(cfg.output_dir) as (snapshot, snapshot_dir):
            # On any failure in here the committed output is as it was (the unfinished
            # snapshot is removed, or collected by the next run).
            manifest = _build(cfg, sources, rows, options, test_pipeline, fp, previous, valid_patients, snapshot,
                              snapshot_dir, dataset, held_out, opts.in_process_rows)
    return {**manifest.to_json(), "nothing_new": False}


def _build(cfg: BuildConfig, sources: list[inputs.CsvSource], rows: list[inputs.ListedRow], options: PipelineOptions,
           test_pipeline: beam.Pipeline | None, fp: str, previous: manifest_lib.Manifest | None,
           valid_patients: frozenset, snapshot: str, snapshot_dir: str, dataset=None,
           held_out: dict | None = None, in_process_rows: int = 0) -> manifest_lib.Manifest:
    """Runs the pipeline into ``snapshot_dir``, reconciles, applies the guards and commits;
    returns the committed manifest. ``dataset``: the NIH/MIMIC ``core.datasets.Dataset``
    (None for CheXpert); ``held_out``: ``inputs.check_held_out``'s patients;
    ``in_process_rows``: ``--in_process_rows`` (see ``_in_process``)."""
    kept = incremental.CarryOver(skip={}, duplicate_rejects=[], kept_stats=[], index={})
    tag = ""
    if previous and cfg.incremental and not cfg.overwrite:  # --overwrite rebuilds everything
        why = incremental.incompatible(cfg, previous)
        if why:
            log.warning("--incremental: %s since the committed run; rebuilding everything", why)
        else:
            tag = "u" + snapshot.removeprefix(commit_lib.SNAPSHOT_PREFIX).split("-")[0]
            kept = incremental.carry_over(cfg, rows, previous, snapshot, tag, valid_patients, held_out)
            log.info("--incremental: %d rows kept from the committed records, %d to process", len(kept.index),
                     len(rows) - len(kept.index) - len(kept.duplicate_rejects))
    if cfg.external:
        kind = f"synthetic {cfg.format}" if cfg.synthetic else cfg.format
    else:
        kind = "synthetic" if cfg.synthetic else "CheXpert"
    log.info("input %s (%s), %d CSV rows, output %s, policy %s", cfg.input_dir, kind,
             sum(s.rows for s in sources), cfg.output_dir,
             ",".join(f"{k}={v}" for k, v in cfg.policy.items()))
    if cfg.labeller:
        log.info("labeller %s (model sha256 %s...) relabels uncertain %s", cfg.labeller, cfg.labeller_sha256[:12],
                 ", ".join(chexpert.labelled_observations(cfg.policy)))
    csvs = [(s.path, s.split, s.rows) for s in sources]
    delta = len(rows) - len(kept.index) - len(kept.duplicate_rejects)
    if _in_process(cfg, options, test_pipeline, tag, delta, in_process_rows):
        log.info("--incremental: %d rows to process (<= --in_process_rows=%d): in this process, no Beam runner",
                 delta, in_process_rows)
        stats, rejects = in_process.run(cfg, csvs, snapshot_dir, kept.skip or None, tag, valid_patients, held_out,
                                        workers=len(os.sched_getaffinity(0)))
    else:
        with runs.quiet_workers(cfg.verbose), (test_pipeline or beam.Pipeline(options=options)) as p:
            transforms.build_pipeline(p, cfg, csvs, snapshot_dir, kept.skip or None, tag, valid_patients, held_out,
                                      unique_paths=len({r.path for r in rows}) == len(rows))
        stats = runs.take_jsonl(posixpath.join(snapshot_dir, "stats*.jsonl"))
        rejects = runs.take_jsonl(posixpath.join(snapshot_dir, "rejects*.jsonl"))
    written = [shards.WrittenShard.from_json(d) for d in stats]
    rejects += kept.duplicate_rejects
    written = manifest_builder.fill_missing_shards(snapshot_dir, written, tag)
    by_path = {r.path: r for r in reversed(rows)}  # first occurrence wins
    index = dict(kept.index)
    for w in written:
        w.stats.shard = f"{snapshot}/{w.stats.shard}"
        # The stat of each file as the writer read it: the driver's, taken before the graph
        # ran, may be of another version of a file that changed since.
        for path, codes, view, soft, file_stat in zip(w.paths, w.codes, w.views, w.labeller, w.files, strict=True):
            index[path] = {"stat": file_stat, "row": by_path[path].digest, "split": w.stats.split,
                           "shard": w.stats.shard, "codes": codes, "view": view, "teacher": soft}
    manifest = manifest_builder.summarize(cfg, sources, kept.kept_stats + [w.stats for w in written], rejects)
    seen = {path: e["stat"] for path, e in index.items()}
    for w in written:
        seen.update(w.rejected_files)
    manifest.fingerprint = _fingerprint_as_read(cfg, sources, rows, dataset, seen, fp)
    manifest.incremental = ({"tag": tag, "kept": len(kept.index),
                             "processed": manifest.rows - len(kept.index) - len(kept.duplicate_rejects)}
                            if tag else None)
    manifest.patient_overlap = {"mode": cfg.patient_overlap, "valid_patients": len(valid_patients),
                                "rows_rejected": sum(r["reason"] in ("patient_in_valid", "patient_in_test")
                                                     for r in rejects)}
    if cfg.external:
        manifest.patient_overlap["patients_in_two_splits"] = len(held_out or {})
    manifest.datasets = manifest_builder.describe_dataset(cfg, dataset, sources, index, by_path)
    commit_lib.check_rejected(manifest.rejected, manifest.rows, cfg.max_reject_fraction, "CSV rows",
                              "--max_reject_fraction")
    if previous:
        commit_lib.check_shrink(manifest.written, previous.written, cfg.max_shrink_fraction,
                                "records", "--max_shrink_fraction")
    manifest_builder.write_snapshot(cfg, snapshot, manifest, rejects, index)
    commit_lib.commit(cfg.output_dir, manifest.to_json())
    return manifest


def _fingerprint_as_read(cfg: BuildConfig, sources: list[inputs.CsvSource], rows: list[inputs.ListedRow], dataset,
                         seen: dict[str, str], fp: str) -> str:
    """The run's fingerprint over its image files as the writers read them.

    ``fp`` is over the driver's stats, taken before the graph ran; ``seen`` has each file's
    stat as its writer found it (written records' from the index, rejected rows' from the
    writers' reports). The committed fingerprint must be over those, or a rerun that finds a
    file as the driver saw it (changed back: a record of the other version, or a row
    rejected while the file was briefly empty, gone or a FIFO) would have "nothing new" to
    do and keep what this run made of the other version.
    """
    read = {r.path: seen[r.path] for r in rows if r.path in seen and seen[r.path] not in (None, r.stat)}
    if not read:
        return fp
    log.warning("%d image file(s) changed while the job ran (first: %s); the records, dead letters and index hold "
                "the versions read, and no rerun calls them unchanged: the next --incremental run rebuilds or "
                "retries them", len(read), next(iter(read)))
    rows = [dataclasses.replace(r, stat=read[r.path]) if r.path in read else r for r in rows]
    return inputs.input_fingerprint(cfg, sources, rows, dataset)


# What a blank label of an observation the dataset labels becomes in training, per --blank
# (CheXpert's "not mentioned"; an observation the dataset does not label is masked whatever).
_BLANK_BECOMES = {"negative": "negative targets", "ignore": "masked (not trained on)"}


def _in_process(cfg: BuildConfig, options: PipelineOptions, test_pipeline: beam.Pipeline | None, tag: str,
                delta: int, in_process_rows: int) -> bool:
    """Whether an incremental run's delta of ``delta`` rows runs in this process
    (``pipeline.in_process``) rather than on the Beam runner: only on a local runner (a
    remote one's workers may be meant to read what this machine cannot), without a
    labeller (RunInference), and never into a pipeline the caller handed in."""
    return bool(tag and test_pipeline is None and not cfg.labeller and 0 < in_process_rows
                and delta <= in_process_rows and options.view_as(StandardOptions).runner in cli.LOCAL_RUNNERS)


def _dataset_summary(manifest: manifest_lib.Manifest) -> str:
    """A few lines on an external dataset's records: its format, what it labels, the
    positive/negative/uncertain/blank codes per labelled observation and what the blanks
    become under the run's --blank, the source's own labels that map to none, and the
    manifest's notes on the dataset (no official split files: all train/holdout, ...)."""
    info = manifest.datasets[manifest.format]
    head = (f"format {info.format} ({info.folder}): labels {len(info.labelled)} of {len(manifest.observations)} "
            f"observations; not labelled (blank, masked in training): {', '.join(info.unlabelled) or 'none'}")
    counts = ", ".join(f"{slug} {c.get('positive', 0)}/{c.get('negative', 0)}/{c.get('uncertain', 0)}/"
                       f"{c.get('blank', 0)}" for slug, c in info.counts.items())
    lines = [head, f"  positive/negative/uncertain/blank: {counts}"]
    blanks = sum(c.get("blank", 0) for c in info.counts.values())
    if blanks:
        lines.append(f"  the {blanks} blank labels of labelled observations (not mentioned) are "
                     f"{_BLANK_BECOMES.get(manifest.blank, manifest.blank)} under --blank={manifest.blank}")
    if info.unmapped_findings:
        lines.append("  unmapped source labels (kept in source/labels): "
                     + ", ".join(f"{k}={v}" for k, v in info.unmapped_findings.items()))
    lines += [f"  note: {note}" for note in info.notes]  # no split files; a label file passed over, ...
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: one line per error (exit 2 for flags, inputs and a held lock, 1
    for everything else), never a traceback unless ``--verbose``."""
    runs.configure_logging()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        result = run(argv)
    except (ConfigError, commit_lib.LockedError, commit_lib.OutputError) as e:
        print(f"build_records: error: {e}", file=sys.stderr)
        return 2
    except (commit_lib.DamagedOutputError, commit_lib.GuardError) as e:
        print(f"build_records: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a full disk, a worker failure...: said in one line, nothing committed
        return cli.unexpected("build_records", e, "--verbose" in argv, "; nothing committed")
    manifest = manifest_lib.Manifest.from_json(result)
    out = manifest.options["output_dir"]
    if result.get("nothing_new"):
        print(f"nothing new: inputs and options unchanged; records in {out} left as they are")
        return 0
    if manifest.format != "chexpert":
        print(_dataset_summary(manifest))
    for split, sp in sorted(manifest.splits.items()):
        print(f"{split:8s} {sp.written:7d} written, {sp.rejected:5d} rejected, {len(sp.shards)} shards, "
              f"{sp.bytes / 2**20:.1f} MiB")
    for name, src in manifest.sources.items():
        # Every row of every CSV, including rows rejected before their split was known.
        print(f"{name}: {src.rows} rows = {src.written} written + {src.rejected} rejected"
              + (": " + ", ".join(f"{k}={v}" for k, v in sorted(src.rejected_by_reason.items()))
                 if src.rejected else ""))
    if manifest.labeller:
        t = manifest.labeller
        print(f"labeller {t.job_dir} relabelled uncertain entries: " + "; ".join(
            f"{split} " + ", ".join(f"{slug}={n}" for slug, n in per.items())
            for split, per in sorted(t.relabelled.items())))
    print(f"records written to {out}/{manifest.snapshot} ({manifest.written} of {manifest.rows} rows), "
          f"committed by {out}/manifest.json; rejects in " + ", ".join(manifest.rejected_files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
