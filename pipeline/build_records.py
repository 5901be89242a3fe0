r"""Beam job: CheXpert CSV + radiographs -> validated, sharded TFRecords.

Run on this machine (both cores)::

    python -m pipeline.build_records --runner=DirectRunner \
        --direct_num_workers=2 --direct_running_mode=multi_processing

With no ``--input_dir`` and no CheXpert under ``./data``, a synthetic sample is generated in
``data/synthetic`` first (the log says so). On a real copy::

    python -m pipeline.build_records --runner=DirectRunner \
        --input_dir=/datasets/chexpert --output_dir=/datasets/chexpert-records

On Dataflow, add ``--runner=DataflowRunner --project=P --region=R
--temp_location=gs://B/tmp --setup_file=./setup.py`` and use ``gs://`` for both folders.

U-SelfTrained (the CheXpert paper's policy for Consolidation): with ``--teacher JOB_DIR``, a
trainer.task job trained with that observation ``ignore``d, the job runs the teacher over
every row with an uncertain ``self_trained`` label and stores its P(positive) as the soft
target of exactly those entries (known labels are untouched)::

    python -m pipeline.build_records --runner=DirectRunner --teacher=jobs/teacher \
        --policy=consolidation=self_trained --output_dir=data/records-selftrained

Graph (row-sized elements are grouped, never pixels)::

    ListCsvs -> ReadCsv -> ParseRows -> GroupByPath -> RejectDuplicates
        -> CountPerSplit (side input) -> AssignShards -> GroupByShard -> WriteShards
    with --teacher: RejectDuplicates -> TeacherImages (rows that need it) -> Teacher (RunInference)
        -> TeacherTargets (side input, path -> probabilities) -> WriteShards
    every stage's rejects -> WriteRejects;  WriteShards' stats -> WriteStats

Every file a run writes is new, in its own snapshot folder ``OUTPUT/snapshot-<time>-<id>/``.
The driver then checks that rows in = written + rejected for every CSV and the guards
(``--max_reject_fraction``, ``--max_shrink_fraction``), and commits by writing
``OUTPUT/manifest.json`` in one atomic step (``core.commit``): the new records appear
only when the whole job succeeded, and any fault before that leaves the committed ones as
they were.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import io
import json
import logging
import os
import posixpath
import sys
from typing import Sequence

from pipeline import options as job_options

if __name__ == "__main__":  # --help and flag typos answered before Beam loads
    job_options.build_records_parser(__doc__).parse_known_args()

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.metrics import Metrics  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions  # noqa: E402

from core import cli, fingerprint  # noqa: E402
from core import commit as commit_lib  # noqa: E402
from core import imaging  # noqa: E402
from pipeline import make_sample  # noqa: E402
from pipeline import records  # noqa: E402
from pipeline import runs  # noqa: E402
from core import storage  # noqa: E402
from core import tfrecord  # noqa: E402
from schemas import chexpert  # noqa: E402
from schemas import example as example_lib  # noqa: E402

log = logging.getLogger("build_records")
NAMESPACE = "build_records"
REJECTED = "rejected"
INDEX = "index.tsv"
DEFAULT_DATA = "data"
SYNTHETIC_DIR = "data/synthetic"
DATASET_DIRS = (make_sample.DATASET_DIR, make_sample.DATASET_DIR_FULL)
SOURCES = (("train.csv", "train"), ("valid.csv", "valid"))


def make_parser() -> argparse.ArgumentParser:
    """The job's own flags (``pipeline.options``)."""
    return job_options.build_records_parser(__doc__)


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """Validated job settings (what the manifest records as ``options``)."""

    input_dir: str
    output_dir: str
    image_size: int
    resize: str
    policy: dict
    blank: str
    holdout_fraction: float
    num_shards: int
    shard_size_mb: float
    min_shards: int
    encoding: str
    seed: int
    overwrite: bool
    synthetic: bool
    incremental: bool = False
    teacher: str = ""  # job folder; "" = no teacher
    teacher_sha256: str = ""  # of its model.keras: a retrained teacher is a changed input
    teacher_batch_size: int = 32
    max_reject_fraction: float = 0.05
    max_shrink_fraction: float = 0.05
    patient_overlap: str = "reject"
    verbose: bool = False

    @property
    def table(self) -> np.ndarray:
        return chexpert.policy_matrix(self.policy, self.blank)

    @property
    def teacher_indices(self) -> tuple[int, ...]:
        """Observation indices whose uncertain entries take the teacher's probability."""
        if not self.teacher:
            return ()
        return tuple(chexpert.OBSERVATION_INDEX[s] for s in chexpert.teacher_observations(self.policy))

    def example_settings(self) -> records.ExampleSettings:
        return records.ExampleSettings(self.image_size, self.resize, self.encoding, self.table, self.seed)


class ConfigError(ValueError):
    """A flag value that cannot work; the message names the flag."""


def find_dataset_root(input_dir: str) -> str:
    """The folder that CSV paths (``CheXpert-v1.0-small/train/...``) are relative to.

    Accepts the folder holding the dataset or the dataset folder itself.
    """
    if FileSystems.exists(posixpath.join(input_dir, "train.csv")) or FileSystems.exists(
        posixpath.join(input_dir, "valid.csv")
    ):
        return posixpath.dirname(input_dir.rstrip("/")) or "."
    for name in DATASET_DIRS:
        if FileSystems.exists(posixpath.join(input_dir, name, "train.csv")) or FileSystems.exists(
            posixpath.join(input_dir, name, "valid.csv")
        ):
            return input_dir
    raise ConfigError(
        f"--input_dir={input_dir}: no train.csv or valid.csv in it or in {' or '.join(DATASET_DIRS)}/ under it"
    )


def dataset_dir(root: str) -> str:
    for name in DATASET_DIRS:
        if FileSystems.exists(posixpath.join(root, name)):
            return posixpath.join(root, name)
    return root


def default_input(sample_patients: int) -> tuple[str, bool]:
    """./data if it holds CheXpert; else a synthetic sample (generated once)."""
    for name in DATASET_DIRS:
        if os.path.exists(os.path.join(DEFAULT_DATA, name, "train.csv")):
            log.info("using the CheXpert copy in %s", os.path.join(DEFAULT_DATA, name))
            return DEFAULT_DATA, False
    if os.path.exists(os.path.join(SYNTHETIC_DIR, make_sample.DATASET_DIR, "train.csv")):
        log.warning("No CheXpert under ./%s: using the synthetic sample in %s", DEFAULT_DATA, SYNTHETIC_DIR)
    else:
        log.warning("No CheXpert under ./%s: generating a synthetic sample (%d train patients) in %s",
                    DEFAULT_DATA, sample_patients, SYNTHETIC_DIR)
        make_sample.generate(SYNTHETIC_DIR, num_patients=sample_patients)
    return SYNTHETIC_DIR, True


def make_config(opts: argparse.Namespace) -> BuildConfig:
    """Turns flags into a validated config; raises ConfigError naming the flag."""
    if opts.image_size < 16 or opts.image_size > 4096:
        raise ConfigError(f"--image_size={opts.image_size}: expected 16..4096")
    if opts.resize not in imaging.RESIZE_MODES:
        raise ConfigError(f"--resize={opts.resize}: expected one of {', '.join(imaging.RESIZE_MODES)}")
    if opts.encoding not in imaging.ENCODINGS:
        raise ConfigError(f"--encoding={opts.encoding}: expected one of {', '.join(imaging.ENCODINGS)}")
    if not 0.0 <= opts.holdout_fraction < 1.0:
        raise ConfigError(f"--holdout_fraction={opts.holdout_fraction}: expected 0 <= f < 1")
    if opts.num_shards < 0 or opts.min_shards < 1 or opts.shard_size_mb <= 0:
        raise ConfigError("--num_shards must be >= 0, --min_shards >= 1 and --shard_size_mb > 0")
    try:
        policy = chexpert.resolve_policies(chexpert.parse_policy_overrides(opts.policy),
                                           have_teacher=bool(opts.teacher))
        chexpert.policy_matrix(policy, opts.blank)
    except chexpert.PolicyError as e:
        raise ConfigError(str(e)) from None
    teacher_sha256 = check_teacher(opts.teacher, policy) if opts.teacher else ""
    if opts.teacher_batch_size < 1:
        raise ConfigError("--teacher_batch_size must be >= 1")
    if opts.patient_overlap not in job_options.PATIENT_OVERLAP:
        raise ConfigError(f"--patient_overlap={opts.patient_overlap}: expected one of {', '.join(job_options.PATIENT_OVERLAP)}")
    try:
        commit_lib.check_output_dir(opts.output_dir)
    except commit_lib.OutputError as e:
        raise ConfigError(str(e)) from None
    synthetic = False
    input_dir = opts.input_dir
    if input_dir is None:
        input_dir, synthetic = default_input(opts.sample_patients)
    root = find_dataset_root(input_dir)
    synthetic = synthetic or FileSystems.exists(posixpath.join(root, make_sample.TRUTH_FILE))
    return BuildConfig(
        input_dir=root, output_dir=opts.output_dir, image_size=opts.image_size, resize=opts.resize,
        policy=policy, blank=opts.blank, holdout_fraction=opts.holdout_fraction, num_shards=opts.num_shards,
        shard_size_mb=opts.shard_size_mb, min_shards=opts.min_shards, encoding=opts.encoding, seed=opts.seed,
        overwrite=opts.overwrite, synthetic=synthetic, incremental=opts.incremental,
        teacher=opts.teacher, teacher_sha256=teacher_sha256, teacher_batch_size=opts.teacher_batch_size,
        max_reject_fraction=opts.max_reject_fraction, max_shrink_fraction=opts.max_shrink_fraction,
        patient_overlap=opts.patient_overlap, verbose=opts.verbose,
    )


def check_teacher(job_dir: str, policy: dict) -> str:
    """Checks a --teacher job folder against the policy; returns its model's sha256.

    Raises:
        ConfigError: no model, no self_trained observation, or a teacher that does not
            predict one of them.
    """
    if "://" in job_dir:
        raise ConfigError(f"--teacher={job_dir}: the teacher is loaded from a local (or mounted) folder by every "
                          "worker; copy the job folder there (e.g. into the workers' container image)")
    observations = chexpert.teacher_observations(policy)
    if not observations:
        raise ConfigError(f"--teacher={job_dir}: no observation uses the self_trained policy, so the teacher would "
                          "change nothing; add e.g. --policy=consolidation=self_trained")
    paths = {name: os.path.join(job_dir, name) for name in ("config.json", "model.keras")}
    missing = [name for name, p in paths.items() if not os.path.exists(p)]
    if missing:
        raise ConfigError(f"--teacher={job_dir}: no {' or '.join(missing)}; expected a trainer.task --job_dir "
                          "that finished training")
    with open(paths["config.json"]) as f:
        teacher_cfg = json.load(f)
    absent = [s for s in observations if s not in teacher_cfg.get("tasks", ())]
    if absent:
        raise ConfigError(f"--teacher={job_dir} predicts {', '.join(teacher_cfg.get('tasks', ()))} but not "
                          f"{', '.join(absent)} (self_trained here); train it with --pathology including them")
    for slug in observations:
        if teacher_cfg.get("policy", {}).get(slug) not in ("ignore", None):
            log.warning("--teacher=%s was trained with %s=%s; U-SelfTrained expects a teacher trained with %s=ignore",
                        job_dir, slug, teacher_cfg["policy"][slug], slug)
    digest = hashlib.sha256()
    with open(paths["model.keras"], "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- Beam wiring ----------------------------------------------------------------------------


def _reject_counter(reason: str):
    return Metrics.counter(NAMESPACE, f"rejected_{reason}")


class ReadCsvFn(beam.DoFn):
    """(csv path, source split) -> CsvRow | Reject (tagged REJECTED), one per data line.

    ``skip``: {csv name: int array of line numbers} an incremental run has already settled
    (kept records, and duplicates of them); a compact array, not a set, since it travels
    to every worker.
    """

    def __init__(self, skip: dict | None = None):
        self.skip = skip or {}
        self.rows_read = Metrics.counter(NAMESPACE, "rows_read")

    def setup(self):
        self._skip = {name: set(lines.tolist()) for name, lines in self.skip.items()}

    def process(self, element):
        path, source_split = element
        source = posixpath.basename(path)
        skip = self._skip.get(source, set())
        with FileSystems.open(path) as f:
            for item in records.read_csv_rows(f, source):
                if (item.row if isinstance(item, records.Reject) else item.line) in skip:
                    continue
                self.rows_read.inc()
                if isinstance(item, records.Reject):
                    _reject_counter(item.reason).inc()
                    yield beam.pvalue.TaggedOutput(REJECTED, item)
                else:
                    yield source_split, item


class ParseRowFn(beam.DoFn):
    """(source split, CsvRow) -> (path, (split, Row, CsvRow)) | Reject (tagged REJECTED).

    ``valid_patients``: patient ids of valid.csv; a train.csv row of one of them is rejected
    as ``patient_in_valid`` (its images would leak into the validation set's patients).
    """

    def __init__(self, holdout_fraction: float, valid_patients: frozenset = frozenset()):
        self.holdout_fraction = holdout_fraction
        self.valid_patients = valid_patients

    def process(self, element):
        source_split, row = element
        try:
            split, parsed = records.parse_csv_row(row, source_split, self.holdout_fraction)
            if source_split == "train" and parsed.patient_id in self.valid_patients:
                raise chexpert.RowError("patient_in_valid", f"patient {parsed.patient_id} also appears in valid.csv: "
                                        "kept out of training (pass --patient_overlap=fail to stop instead)")
        except chexpert.RowError as e:
            _reject_counter(e.reason).inc()
            split = records.guess_split(row, source_split, self.holdout_fraction)
            yield beam.pvalue.TaggedOutput(
                REJECTED, records.Reject(row.source, row.line, row.cells.get(chexpert.COL_PATH, ""), split,
                                         e.reason, e.detail))
            return
        yield parsed.path, (split, parsed, row)


class RejectDuplicatesFn(beam.DoFn):
    """(path, [(split, Row, CsvRow), ...]) -> (split, (Row, source, line)) for the first
    occurrence (lowest file and line); later ones REJECTED."""

    def process(self, element):
        path, items = element
        items = sorted(items, key=lambda it: (it[2].source, it[2].line))
        first = items[0]
        yield first[0], (first[1], first[2].source, first[2].line)
        for split, _, row in items[1:]:
            _reject_counter("duplicate_path").inc()
            yield beam.pvalue.TaggedOutput(
                REJECTED, records.Reject(row.source, row.line, path, split, "duplicate_path",
                                         f"Path {path!r} already appears at {first[2].source} line {first[2].line}"))


def _assign_shard(element, plan: dict):
    split, item = element
    n = plan[split]
    return (split, records.shard_of(item[0].path, n), n), item


class WriteShardFn(beam.DoFn):
    """((split, shard, num_shards), [(Row, source, line), ...]) -> one TFRecord file in the
    run's snapshot folder.

    ``teacher`` (side input, with --teacher): {path: [P(positive) per teacher index]}.

    Reads, decodes and encodes one image at a time, so a worker's memory is one shard's
    row list plus one image. Yields the shard's stats dict; undecodable images are REJECTED.
    Writing the same shard twice (a retried bundle) rewrites the same file.
    """

    def __init__(self, input_root: str, snapshot_dir: str, settings: records.ExampleSettings, tag: str = "",
                 teacher_indices: tuple[int, ...] = ()):
        self.input_root = input_root
        self.snapshot_dir = snapshot_dir
        self.settings = settings
        self.tag = tag
        self.teacher_indices = teacher_indices
        self.written = Metrics.counter(NAMESPACE, "written")
        self.bytes = Metrics.counter(NAMESPACE, "bytes_written")

    def process(self, element, teacher=None):
        (split, index, num_shards), rows = element
        name = records.shard_name(split, index, num_shards, self.tag)
        codes, targets_all, masks_all, paths, view_list, teacher_list = [], [], [], [], [], []
        views: dict[str, int] = {}
        written = size = 0
        with storage.create(posixpath.join(self.snapshot_dir, name)) as writer:
            # Sorted: the same bytes every run, frontal views first (example_lib.RECORD_ORDER).
            for row, source, line in sorted(rows, key=lambda r: example_lib.record_order(r[0].path, r[0].view)):
                try:
                    data = _read_file(posixpath.join(self.input_root, row.path), row.path)
                    soft = teacher_vector(row.codes, (teacher or {}).get(row.path), self.teacher_indices)
                    serialized, targets, mask = records.build_example(row, data, self.settings, soft)
                except chexpert.RowError as e:
                    _reject_counter(e.reason).inc()
                    yield beam.pvalue.TaggedOutput(
                        REJECTED, records.Reject(source, line, row.path, split, e.reason, e.detail))
                    continue
                size += tfrecord.write_record(writer, serialized)
                written += 1
                paths.append(row.path)
                view_list.append(row.view)
                codes.append(row.codes)
                targets_all.append(targets)
                masks_all.append(mask)
                teacher_list.append(None if soft is None else soft.tolist())
                views[row.view] = views.get(row.view, 0) + 1
        raw_counts, mapped_counts = records.label_counts(codes, targets_all, masks_all)
        self.written.inc(written)
        self.bytes.inc(size)
        yield {"split": split, "shard": name, "index": index, "num_shards": num_shards, "written": written,
               "bytes": size, "views": views, "raw_counts": raw_counts, "target_counts": mapped_counts,
               # Per record, for the index an incremental run keeps (and compacts from).
               "relabelled": relabelled_counts(teacher_list),
               "paths": paths, "codes": [list(map(int, c)) for c in codes], "view_list": view_list,
               "teacher_list": teacher_list}


def teacher_vector(codes, probs, indices: tuple[int, ...]) -> np.ndarray | None:
    """A row's ``labels/teacher``: the teacher's probability at each uncertain entry of a
    teacher observation, ``NO_TEACHER`` everywhere else.

    Args:
        codes: the row's 14 codes.
        probs: the teacher's P(positive) per entry of ``indices`` (None: not run on the row).
        indices: observation indices under a teacher policy.

    Returns:
        float32 (14,), or None when the row has no teacher value.
    """
    if probs is None:
        return None
    out = chexpert.no_teacher()
    for i, p in zip(indices, probs):
        if codes[i] == chexpert.Code.UNCERTAIN:
            out[i] = p
    return out if (out >= 0).any() else None


def relabelled_counts(teacher_list: list) -> dict:
    """{slug: entries holding a teacher value} over a shard's ``labels/teacher`` vectors."""
    counts: dict[str, int] = {}
    for soft in teacher_list:
        for i, v in enumerate(soft or ()):
            if v >= 0:
                counts[chexpert.OBSERVATIONS[i]] = counts.get(chexpert.OBSERVATIONS[i], 0) + 1
    return counts


def needs_teacher(codes, indices: tuple[int, ...]) -> bool:
    return any(codes[i] == chexpert.Code.UNCERTAIN for i in indices)


def teacher_image_fn(input_root: str, job_dir: str, indices: tuple[int, ...]) -> beam.DoFn:
    """The DoFn of the TeacherImages stage (built here so that Beam's ML module is imported
    only with --teacher)."""
    from pipeline.score import LoadImageFn

    class TeacherImageFn(LoadImageFn):
        """(split, (Row, source, line)) -> (path, uint8 (S, S, 1)) as the teacher saw images
        in training (the scoring job's loader: same config, same preprocessing), for rows
        with an uncertain label under a teacher policy.

        An image that cannot be read is skipped here (counted); WriteShards meets the same
        error and dead-letters the row with its reason, so each bad row is rejected once.
        """

        def __init__(self):
            super().__init__(job_dir)
            self.skipped = Metrics.counter(NAMESPACE, "teacher_skipped_unreadable")

        def process(self, element):
            _, (row, _, _) = element
            if not needs_teacher(row.codes, indices):
                return
            try:
                data = _read_file(posixpath.join(input_root, row.path), row.path)
                yield row.path, self._model_input(data, row.path, self.cfg)
            except chexpert.RowError:
                self.skipped.inc()

    return TeacherImageFn()


def _read_file(path: str, name: str) -> bytes:
    imaging.refuse_link_outside(path, name)
    imaging.refuse_non_file(path, name)
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            return f.read()
    except (FileNotFoundError, IOError, OSError) as e:
        if not FileSystems.exists(path):
            raise chexpert.RowError("missing_file", f"{name}: no such file under the input folder") from None
        raise chexpert.RowError("unreadable_file", f"{name}: {e}") from None


def build_pipeline(p: beam.Pipeline, cfg: BuildConfig, sources: list[tuple[str, str]], snapshot_dir: str,
                   skip: dict | None = None, tag: str = "", valid_patients: frozenset = frozenset()) -> None:
    """Adds the records job to ``p``; its outputs land in ``snapshot_dir``.

    ``skip``: lines an incremental run has settled (see ReadCsvFn); ``tag``: its shard tag;
    ``valid_patients``: see ParseRowFn.
    """
    to_json = lambda r: json.dumps(r.to_dict() if isinstance(r, records.Reject) else r, sort_keys=True)  # noqa: E731
    read = (p | "ListCsvs" >> beam.Create(sources)
              | "ReadCsv" >> beam.ParDo(ReadCsvFn(skip)).with_outputs(REJECTED, main="rows"))
    parsed = read.rows | "ParseRows" >> beam.ParDo(ParseRowFn(cfg.holdout_fraction, valid_patients)).with_outputs(
        REJECTED, main="rows")
    unique = (parsed.rows
              | "GroupByPath" >> beam.GroupByKey()
              | "RejectDuplicates" >> beam.ParDo(RejectDuplicatesFn()).with_outputs(REJECTED, main="rows"))
    plan = (unique.rows
            | "SplitOf" >> beam.Map(lambda kv: kv[0])
            | "CountPerSplit" >> beam.combiners.Count.PerElement()
            | "ShardsPerSplit" >> beam.Map(lambda kv: (kv[0], records.num_shards_for(
                kv[1], image_size=cfg.image_size, encoding=cfg.encoding, shard_size_mb=cfg.shard_size_mb,
                min_shards=cfg.min_shards, fixed=cfg.num_shards))))
    side = {}
    if cfg.teacher:
        side["teacher"] = beam.pvalue.AsDict(teacher_targets(unique.rows, cfg))
    written = (unique.rows
               | "AssignShards" >> beam.Map(_assign_shard, plan=beam.pvalue.AsDict(plan))
               | "GroupByShard" >> beam.GroupByKey()
               | "WriteShards" >> beam.ParDo(WriteShardFn(cfg.input_dir, snapshot_dir, cfg.example_settings(), tag,
                                                          cfg.teacher_indices), **side)
                                  .with_outputs(REJECTED, main="stats"))
    ((read[REJECTED], parsed[REJECTED], unique[REJECTED], written[REJECTED])
     | "MergeRejects" >> beam.Flatten()
     | "RejectsToJson" >> beam.Map(to_json)
     | "WriteRejects" >> beam.io.WriteToText(posixpath.join(snapshot_dir, "rejects"), file_name_suffix=".jsonl"))
    (written.stats
     | "StatsToJson" >> beam.Map(to_json)
     | "WriteStats" >> beam.io.WriteToText(posixpath.join(snapshot_dir, "stats"), file_name_suffix=".jsonl"))


def teacher_targets(rows: beam.PCollection, cfg: BuildConfig) -> beam.PCollection:
    """The teacher stage: (split, (Row, source, line)) -> (path, [P(positive) per teacher
    observation]) for the rows that need it, scored in batches by RunInference."""
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

    from pipeline.score import ChexpertModelHandler

    slugs = chexpert.teacher_observations(cfg.policy)
    handler = KeyedModelHandler(ChexpertModelHandler(cfg.teacher, max_batch_size=cfg.teacher_batch_size))
    return (rows
            | "TeacherImages" >> beam.ParDo(teacher_image_fn(cfg.input_dir, cfg.teacher, cfg.teacher_indices))
            | "Teacher" >> RunInference(handler)
            | "TeacherTargets" >> beam.MapTuple(lambda path, result: (path, [result.inference[s] for s in slugs])))


# --- Driver: inputs, reconciliation, commit --------------------------------------------------


def list_sources(cfg: BuildConfig) -> list[dict]:
    """The CSVs present, each with its row count and sha256; fails fast on a bad header."""
    folder = dataset_dir(cfg.input_dir)
    found = []
    for name, split in SOURCES:
        path = posixpath.join(folder, name)
        if not FileSystems.exists(path):
            continue
        with FileSystems.open(path, compression_type="uncompressed") as f:
            data = f.read()
        records.read_header(records.iter_lines(io.BytesIO(data)), name)
        # "data" is kept for scan_rows, so the driver reads each CSV once.
        found.append({"name": name, "path": path, "split": split, "sha256": hashlib.sha256(data).hexdigest(),
                      "rows": records.count_data_rows(io.BytesIO(data)), "data": data})
    if not found:
        raise ConfigError(f"--input_dir={cfg.input_dir}: neither train.csv nor valid.csv found in {folder}")
    return found


def summarize(cfg: BuildConfig, sources: list[dict], stats: list[dict], rejects: list[dict]) -> dict:
    """The manifest: options, policy, per-source reconciliation and per-split totals.

    Args:
        stats: one dict per listed shard (this run's, and in an incremental run the ones it
            keeps), as WriteShardFn yields them.

    Raises:
        RuntimeError: rows in != written + rejected for some CSV.
    """
    split_source = {"train": "train.csv", "holdout": "train.csv", "valid": "valid.csv"}
    splits: dict = {}
    for s in sorted(stats, key=lambda s: (s["split"], s["shard"])):
        sp = splits.setdefault(s["split"], {"rows": 0, "written": 0, "rejected": 0, "rejected_by_reason": {},
                                            "shards": [], "bytes": 0, "views": {},
                                            "raw_counts": records.empty_counts(),
                                            "target_counts": records.empty_counts()})
        sp["shards"].append(s["shard"])
        sp["written"] += s["written"]
        sp["bytes"] += s["bytes"]
        for view, n in s.get("views", {}).items():
            sp["views"][view] = sp["views"].get(view, 0) + n
        records.merge_counts(sp["raw_counts"], s["raw_counts"])
        records.merge_counts(sp["target_counts"], s["target_counts"])
    for sp in splits.values():
        sp["num_shards"] = len(sp["shards"])
    by_source = {src["name"]: {"path": src["path"], "sha256": src["sha256"], "rows": src["rows"], "written": 0,
                               "rejected": 0, "rejected_by_reason": {}} for src in sources}
    for split, sp in splits.items():
        by_source[split_source[split]]["written"] += sp["written"]
    for r in rejects:
        src = by_source.setdefault(r["source"], {"rows": 0, "written": 0, "rejected": 0, "rejected_by_reason": {}})
        src["rejected"] += 1
        src["rejected_by_reason"][r["reason"]] = src["rejected_by_reason"].get(r["reason"], 0) + 1
        if r["split"] in splits:
            sp = splits[r["split"]]
            sp["rejected"] += 1
            sp["rejected_by_reason"][r["reason"]] = sp["rejected_by_reason"].get(r["reason"], 0) + 1
    for sp in splits.values():
        sp["rows"] = sp["written"] + sp["rejected"]
    bad = [f"{name}: {s['rows']} rows in, {s['written']} written + {s['rejected']} rejected"
           for name, s in by_source.items() if s["rows"] != s["written"] + s["rejected"]]
    if bad:
        raise RuntimeError("counts do not reconcile, nothing committed: " + "; ".join(bad))
    return {
        "schema_version": chexpert.SCHEMA_VERSION,
        "record_order": example_lib.RECORD_ORDER,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "observations": list(chexpert.OBSERVATIONS),
        "policy": cfg.policy,
        "blank": cfg.blank,
        "image_size": cfg.image_size,
        "encoding": cfg.encoding,
        "options": _options(cfg),
        "sources": by_source,
        "splits": splits,
        "teacher": _teacher_summary(cfg, stats),
        "shard_stats": {s["shard"]: {k: v for k, v in s.items() if k != "paths"} for s in stats},
        "rows": sum(s["rows"] for s in by_source.values()),
        "written": sum(s["written"] for s in by_source.values()),
        "rejected": sum(s["rejected"] for s in by_source.values()),
    }


def _teacher_summary(cfg: BuildConfig, stats: list[dict]) -> dict | None:
    """The manifest's record of the teacher: which model, which observations, how many
    uncertain entries it relabelled per split and observation."""
    if not cfg.teacher:
        return None
    with open(os.path.join(cfg.teacher, "config.json")) as f:
        teacher_cfg = json.load(f)
    slugs = chexpert.teacher_observations(cfg.policy)
    relabelled: dict = {}
    for s in stats:
        per = relabelled.setdefault(s["split"], {slug: 0 for slug in slugs})
        for slug in slugs:
            per[slug] += s.get("relabelled", {}).get(slug, 0)
    return {"job_dir": os.path.abspath(cfg.teacher), "model_sha256": cfg.teacher_sha256,
            "tasks": teacher_cfg.get("tasks"), "trained_policy": {s: teacher_cfg.get("policy", {}).get(s) for s in slugs},
            "observations": list(slugs), "relabelled": relabelled}


def _options(cfg: BuildConfig) -> dict:
    options = dataclasses.asdict(cfg)
    options.pop("policy")
    return options


# How a run treats existing output, not what it writes: left out of comparisons.
_TRANSIENT_OPTIONS = ("overwrite", "incremental", "max_reject_fraction", "max_shrink_fraction", "verbose")


def _output_options(options: dict) -> dict:
    """The options that determine the records (``_options`` less the transient ones)."""
    return {k: v for k, v in options.items() if k not in _TRANSIENT_OPTIONS}


def _fill_missing_shards(snapshot_dir: str, stats: list[dict], tag: str) -> list[dict]:
    """A full build: writes an empty shard for any index no row hashed to, so ``-of-N``
    always holds N. An incremental run keeps only the delta shards that hold records (and
    deletes the empty ones it wrote), so empty files do not pile up run after run."""
    if tag:
        empty = [s for s in stats if not s["written"]]
        storage.delete([posixpath.join(snapshot_dir, s["shard"]) for s in empty])
        return [s for s in stats if s["written"]]
    seen = {(s["split"], s["index"]) for s in stats}
    for split, n in {(s["split"], s["num_shards"]) for s in stats}:
        for i in range(n):
            if (split, i) not in seen:
                name = records.shard_name(split, i, n, tag)
                storage.write_bytes(posixpath.join(snapshot_dir, name), b"")
                stats.append({"split": split, "shard": name, "index": i, "num_shards": n, "written": 0,
                              "bytes": 0, "views": {}, "raw_counts": {}, "target_counts": {}, "paths": [],
                              "codes": [], "view_list": [], "teacher_list": []})
    return stats


def write_snapshot(cfg: BuildConfig, snapshot: str, manifest: dict, rejects: list[dict], index: dict) -> None:
    """Writes this run's dead letters and index into its snapshot folder and completes
    ``manifest``: their names, and ``files``, every file the snapshot consists of (this
    run's and the kept ones of earlier snapshots) with its size."""
    out = cfg.output_dir
    reject_files = []
    for name, _ in SOURCES:
        if name not in manifest["sources"]:
            continue
        rows = sorted((r for r in rejects if r["source"] == name), key=lambda r: r["row"])
        rel = f"{snapshot}/rejected-{name.removesuffix('.csv')}.jsonl"
        storage.write_bytes(posixpath.join(out, rel), "".join(json.dumps(r, sort_keys=True) + "\n"
                                                             for r in rows).encode())
        reject_files.append(rel)
    index_rel = f"{snapshot}/{INDEX}"
    storage.write_bytes(posixpath.join(out, index_rel), records.write_index(index))
    manifest["snapshot"] = snapshot
    manifest["rejected_files"] = reject_files
    manifest["index_file"] = index_rel
    shards = [n for sp in manifest["splits"].values() for n in sp["shards"]]
    manifest["files"] = commit_lib.file_sizes(out, shards + reject_files + [index_rel])


def run(argv: Sequence[str] | None = None, save_main_session: bool = True) -> dict:
    """Builds the records; returns the manifest.

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
    cfg = make_config(opts)
    try:
        sources = list_sources(cfg)
    except chexpert.CsvHeaderError as e:
        raise ConfigError(str(e)) from None
    rows = scan_rows(cfg, sources)
    check_image_folders(cfg, rows)
    valid_patients = check_patient_overlap(cfg, rows)
    fp = input_fingerprint(cfg, sources, rows)
    with commit_lib.exclusive(cfg.output_dir):
        previous = commit_lib.committed(cfg.output_dir, cfg.overwrite)
        if previous and previous.get("fingerprint") == fp and not cfg.overwrite:
            log.info("nothing new: inputs and options unchanged since %s; output left as it is", previous["created"])
            previous["nothing_new"] = True
            return previous
        if previous and not (cfg.overwrite or cfg.incremental):
            raise ConfigError(f"--output_dir={cfg.output_dir} already holds records (manifest.json) built from "
                              "other inputs or options; pass --overwrite to replace them, --incremental to update "
                              "them, or choose another folder")
        return _build(cfg, sources, rows, options, fp, previous, valid_patients)


def scan_rows(cfg: BuildConfig, sources: list[dict]) -> list[dict]:
    """Each CSV row with a usable path: source, line, path, patient, the image's stat, the
    cells' digest. A stat, not a read: 224k of them take seconds."""
    out = []
    for src in sources:
        for item in records.read_csv_rows(io.BytesIO(src["data"]), src["name"]):
            if not isinstance(item, records.CsvRow):
                continue
            try:
                path = chexpert.normalize_path(item.cells.get(chexpert.COL_PATH) or "")
            except chexpert.RowError:
                continue
            out.append({"source": src["name"], "line": item.line, "path": path, "patient": records.patient_of(path),
                        "stat": fingerprint.file_stat(posixpath.join(cfg.input_dir, path)),
                        "row": records.row_digest(item.cells)})
    return out


def check_image_folders(cfg: BuildConfig, rows: list[dict]) -> None:
    """Fails when an image folder the CSV points into (``CheXpert-v1.0-small/train``) is
    missing or holds none of the images listed, and its rows are more than
    ``--max_reject_fraction`` of all: an unmounted disk, said before any work. A folder of a
    few rows (a typo in one row's Path) is not: those rows become ``missing_file`` dead
    letters like any other missing image.

    Raises:
        ConfigError: naming the folder.
    """
    if storage.is_remote(cfg.input_dir):
        return  # no cheap stat there; the --max_reject_fraction guard still applies
    listed: dict[str, list[int]] = {}
    for r in rows:
        n = listed.setdefault("/".join(r["path"].split("/")[:2]), [0, 0])
        n[0] += 1
        n[1] += r["stat"] != "missing"
    for folder, (n, present) in sorted(listed.items()):
        if not present and n > cfg.max_reject_fraction * len(rows):
            full = posixpath.join(cfg.input_dir, folder)
            state = "does not exist" if not os.path.isdir(full) else "holds none of them"
            raise ConfigError(f"{full}: {n} CSV rows list images in this folder, but it {state}; is the image "
                              f"folder there (mounted, unpacked)? (--input_dir={cfg.input_dir})")


def check_patient_overlap(cfg: BuildConfig, rows: list[dict]) -> frozenset:
    """valid.csv's patient ids; with ``--patient_overlap=fail``, fails when train.csv lists
    any of them (otherwise those train rows become ``patient_in_valid`` dead letters)."""
    valid = frozenset(r["patient"] for r in rows if r["source"] == "valid.csv" and r["patient"])
    leaked = [r for r in rows if r["source"] == "train.csv" and r["patient"] in valid]
    if leaked and cfg.patient_overlap == "fail":
        first = leaked[0]
        raise ConfigError(f"{len(leaked)} train.csv rows belong to patients of valid.csv (first: line {first['line']}, "
                          f"{first['patient']}); valid-set leakage. --patient_overlap=reject keeps them out of "
                          "training as dead letters instead")
    return valid


def input_fingerprint(cfg: BuildConfig, sources: list[dict], rows: list[dict]) -> str:
    """Everything the output depends on: options, CSV digests, each listed file's size and
    mtime. Equal fingerprints mean a rebuild would be identical."""
    parts = [json.dumps(_output_options(_options(cfg)), sort_keys=True), json.dumps(cfg.policy, sort_keys=True),
             str(chexpert.SCHEMA_VERSION), example_lib.RECORD_ORDER]
    parts += [f"{src['name']}\t{src['sha256']}" for src in sources]
    parts += [f"{r['path']}\t{r['stat']}" for r in rows]
    return fingerprint.fingerprint(parts)


def _compatible(cfg: BuildConfig, previous: dict) -> str | None:
    """Why an incremental run cannot reuse the committed output, or None if it can."""
    if previous.get("schema_version") != chexpert.SCHEMA_VERSION:
        return "schema version changed"
    if previous.get("record_order") != example_lib.RECORD_ORDER:
        return "the order of records inside shards changed"  # compaction relies on it
    old, new = _output_options(previous.get("options", {})), _output_options(_options(cfg))
    if old != new or previous.get("policy") != cfg.policy:
        return "options or policy changed"
    if not previous.get("index_file"):
        return "no index of the committed records"
    return None


def _carry_over(cfg: BuildConfig, rows: list[dict], previous: dict, snapshot: str, tag: str,
                valid_patients: frozenset):
    """Decides what an incremental run keeps.

    Returns:
        ``(skip, dup_rejects, kept stats, index)``: {csv: line numbers} the pipeline need
        not read (kept rows and later duplicates of them); dead letters for those
        duplicates; stats of every committed shard kept (untouched, or compacted into this
        run's ``snapshot`` to drop records of changed or removed rows); the index entries
        of the kept records.

    Raises:
        commit_lib.DamagedOutputError: the committed index cannot be read.
    """
    index_path = posixpath.join(cfg.output_dir, previous["index_file"])
    try:
        old_index = records.read_index(storage.read_bytes(index_path))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise commit_lib.DamagedOutputError(f"{index_path}: unreadable records index ({e}); rerun with --overwrite "
                                            "to rebuild the output") from None
    first: dict[str, dict] = {}
    for r in rows:
        first.setdefault(r["path"], r)  # rows come in file, then line order: the first occurrence
    keep = {p: e for p, e in old_index.items()
            if p in first and first[p]["stat"] == e["stat"] and first[p]["row"] == e["row"]
            # a patient who has since appeared in valid.csv: the row must become a dead letter
            and not (first[p]["source"] == "train.csv" and first[p]["patient"] in valid_patients)}
    skip: dict[str, list[int]] = {}
    dup_rejects = []
    for r in rows:
        if r["path"] not in keep:
            continue
        skip.setdefault(r["source"], []).append(r["line"])
        f = first[r["path"]]
        if r is not f:
            split = keep[r["path"]]["split"]
            dup_rejects.append(records.Reject(r["source"], r["line"], r["path"], split, "duplicate_path",
                                              f"Path {r['path']!r} already appears at {f['source']} line {f['line']}"
                                              ).to_dict())
    skip_arrays = {name: np.array(sorted(lines), np.int64) for name, lines in skip.items()}
    dropped_from = {e["shard"] for p, e in old_index.items() if p not in keep}
    kept_stats, index = [], {}
    for name, st in previous.get("shard_stats", {}).items():
        if name not in dropped_from:
            kept_stats.append(dict(st))
            continue
        # Compaction: copy the kept records (no decoding) into a new shard of this run's
        # snapshot; the committed shard itself is never touched. A shard's records are its
        # index entries in example_lib.record_order, as WriteShardFn writes them.
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
        kept_stats.append({**_stats_for(cfg, survivors, keep, st["split"]), "shard": new_name, "bytes": size})
        for p in survivors:
            keep[p] = {**keep[p], "shard": new_name}
    for p, e in keep.items():
        index[p] = {k: v for k, v in e.items() if k != "path"}
    return skip_arrays, dup_rejects, kept_stats, index


def _stats_for(cfg: BuildConfig, paths: list[str], entries: dict, split: str) -> dict:
    """Shard stats recomputed from the index entries' stored label codes."""
    codes = np.array([entries[p]["codes"] for p in paths], np.int64)
    draws = np.stack([chexpert.draws_for(p, cfg.seed) for p in paths])
    teacher = np.stack([chexpert.no_teacher() if entries[p].get("teacher") is None
                        else np.asarray(entries[p]["teacher"], np.float32) for p in paths])
    targets, mask = chexpert.apply_policy(codes, draws, cfg.table, teacher)
    raw_counts, target_counts = records.label_counts(codes, targets, mask)
    views: dict[str, int] = {}
    for p in paths:
        views[entries[p]["view"]] = views.get(entries[p]["view"], 0) + 1
    return {"split": split, "written": len(paths), "views": views, "raw_counts": raw_counts,
            "target_counts": target_counts, "relabelled": relabelled_counts([entries[p].get("teacher") for p in paths])}




def _build(cfg: BuildConfig, sources: list[dict], rows: list[dict], options: PipelineOptions, fp: str,
           previous: dict | None, valid_patients: frozenset) -> dict:
    """Runs the pipeline into a new snapshot folder, reconciles, applies the guards and
    commits; on any failure the committed output is as it was (the unfinished snapshot is
    removed, or collected by the next run)."""
    with commit_lib.new_snapshot(cfg.output_dir) as (snapshot, snapshot_dir):
        return _build_into(cfg, sources, rows, options, fp, previous, valid_patients, snapshot, snapshot_dir)


def _build_into(cfg: BuildConfig, sources: list[dict], rows: list[dict], options: PipelineOptions, fp: str,
                previous: dict | None, valid_patients: frozenset, snapshot: str, snapshot_dir: str) -> dict:
    skip, dup_rejects, kept_stats, index = None, [], [], {}
    tag, kept = "", 0
    if previous and cfg.incremental and not cfg.overwrite:  # --overwrite rebuilds everything
        why = _compatible(cfg, previous)
        if why:
            log.warning("--incremental: %s since the committed run; rebuilding everything", why)
        else:
            tag = "u" + snapshot.removeprefix(commit_lib.SNAPSHOT_PREFIX).split("-")[0]
            skip, dup_rejects, kept_stats, index = _carry_over(cfg, rows, previous, snapshot, tag, valid_patients)
            kept = len(index)
            log.info("--incremental: %d rows kept from the committed records, %d to process", kept,
                     len(rows) - kept - len(dup_rejects))
    log.info("input %s (%s), %d CSV rows, output %s, policy %s", cfg.input_dir,
             "synthetic" if cfg.synthetic else "CheXpert", sum(s["rows"] for s in sources), cfg.output_dir,
             ",".join(f"{k}={v}" for k, v in cfg.policy.items()))
    if cfg.teacher:
        log.info("teacher %s (model sha256 %s...) relabels uncertain %s", cfg.teacher, cfg.teacher_sha256[:12],
                 ", ".join(chexpert.teacher_observations(cfg.policy)))
    with runs.quiet_workers(cfg.verbose), beam.Pipeline(options=options) as p:
        build_pipeline(p, cfg, [(s["path"], s["split"]) for s in sources], snapshot_dir, skip, tag, valid_patients)
    stats = runs.take_jsonl(posixpath.join(snapshot_dir, "stats*.jsonl"))
    rejects = runs.take_jsonl(posixpath.join(snapshot_dir, "rejects*.jsonl")) + dup_rejects
    stats = _fill_missing_shards(snapshot_dir, stats, tag)
    by_path = {r["path"]: r for r in reversed(rows)}  # first occurrence wins
    for s in stats:
        s["shard"] = f"{snapshot}/{s['shard']}"
        for p, codes, view, soft in zip(s["paths"], s.pop("codes"), s.pop("view_list"), s.pop("teacher_list")):
            index[p] = {"stat": by_path[p]["stat"], "row": by_path[p]["row"], "split": s["split"],
                        "shard": s["shard"], "codes": codes, "view": view, "teacher": soft}
    manifest = summarize(cfg, sources, kept_stats + stats, rejects)
    manifest["fingerprint"] = fp
    manifest["incremental"] = ({"tag": tag, "kept": kept, "processed": manifest["rows"] - kept - len(dup_rejects)}
                               if tag else None)
    manifest["patient_overlap"] = {"mode": cfg.patient_overlap, "valid_patients": len(valid_patients),
                                   "rows_rejected": sum(r["reason"] == "patient_in_valid" for r in rejects)}
    commit_lib.check_rejected(manifest["rejected"], manifest["rows"], cfg.max_reject_fraction, "CSV rows",
                              "--max_reject_fraction")
    if previous:
        commit_lib.check_shrink(manifest["written"], previous.get("written", 0), cfg.max_shrink_fraction,
                                "records", "--max_shrink_fraction")
    write_snapshot(cfg, snapshot, manifest, rejects, index)
    commit_lib.commit(cfg.output_dir, manifest)
    manifest["nothing_new"] = False
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: one line per error (exit 2 for flags, inputs and a held lock, 1
    for everything else), never a traceback unless ``--verbose``."""
    runs.configure_logging()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        manifest = run(argv)
    except (ConfigError, commit_lib.LockedError, commit_lib.OutputError) as e:
        print(f"build_records: error: {e}", file=sys.stderr)
        return 2
    except (commit_lib.DamagedOutputError, commit_lib.GuardError) as e:
        print(f"build_records: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a full disk, a worker failure...: said in one line, nothing committed
        print(f"build_records: error: {cli.one_line(e)}; nothing committed", file=sys.stderr)
        if "--verbose" in argv:
            raise
        return 1
    if manifest.get("nothing_new"):
        print(f"nothing new: inputs and options unchanged; records in {manifest['options']['output_dir']} left as "
              "they are")
        return 0
    for split, sp in sorted(manifest["splits"].items()):
        print(f"{split:8s} {sp['written']:7d} written, {sp['rejected']:5d} rejected, {len(sp['shards'])} shards, "
              f"{sp['bytes'] / 2**20:.1f} MiB")
    for name, src in manifest["sources"].items():
        # Every row of every CSV, including rows rejected before their split was known.
        print(f"{name}: {src['rows']} rows = {src['written']} written + {src['rejected']} rejected"
              + (": " + ", ".join(f"{k}={v}" for k, v in sorted(src["rejected_by_reason"].items()))
                 if src["rejected"] else ""))
    if manifest.get("teacher"):
        t = manifest["teacher"]
        print(f"teacher {t['job_dir']} relabelled uncertain entries: " + "; ".join(
            f"{split} " + ", ".join(f"{slug}={n}" for slug, n in per.items())
            for split, per in sorted(t["relabelled"].items())))
    out = manifest["options"]["output_dir"]
    print(f"records written to {out}/{manifest['snapshot']} ({manifest['written']} of {manifest['rows']} rows), "
          f"committed by {out}/manifest.json; rejects in " + ", ".join(manifest["rejected_files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
