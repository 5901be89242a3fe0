"""The records job's Beam graph: DoFns wrapped in composite PTransforms, each a CapWords
stage that only chains the plain functions of ``pipeline.rows``, ``pipeline.shards`` and
``pipeline.example_builder``.

    ListCsvs -> ReadCsv -> ParseRows -> RejectDuplicates -> BatchRows -> PlanShards (side input)
        -> WriteShards
    NIH/MIMIC: ListDatasets -> ReadDataset -> RejectDuplicates -> ... (the same from there)
    with --labeller: RejectDuplicates -> LabellerTargets (RunInference; side input) -> WriteShards
    every stage's rejects -> WriteRejects;  WriteShards' reports -> WriteStats

Row-sized elements are grouped, never pixels: after RejectDuplicates (a Map when the driver
saw no Path twice) in lists of up to 1,000 rows (BatchRows), so that the shuffles to
PlanShards and WriteShards cost Beam's per-element work per list, not per row. Each stage with dead letters returns a
``beam.pvalue.DoOutputsTuple`` whose main output is ``rows`` (``stats`` for WriteShards)
and whose ``REJECTED`` output holds ``core.csv_reader.Reject`` elements.
"""

from __future__ import annotations

import itertools
import json
import posixpath

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from core import datasets, storage, tfrecord
from core.csv_reader import CsvRow, Reject, read_csv_rows
from pipeline import example_builder, rows, self_trained, shards
from pipeline.build_config import BuildConfig
from schemas import chexpert
from schemas import example as example_lib
from schemas import manifest as manifest_lib

NAMESPACE = "build_records"
REJECTED = "rejected"


def _reject_counter(reason: str):
    return Metrics.counter(NAMESPACE, f"rejected_{reason}")


def _rejected(reject: Reject) -> beam.pvalue.TaggedOutput:
    """A dead letter on the REJECTED output, counted under its reason."""
    _reject_counter(reject.reason).inc()
    return beam.pvalue.TaggedOutput(REJECTED, reject)


class _ReadsLabelFileFn(beam.DoFn):
    """The part the two readers of label files share: the lines an incremental run settled.

    ``skip``: {label file name: int array of line numbers} an incremental run has already
    settled (kept records, and duplicates of them); a compact array, not a set, since it
    travels to every worker; ``setup`` makes the sets a worker looks lines up in.
    """

    def __init__(self, skip: dict | None = None):
        self.skip = skip or {}
        self.rows_read = Metrics.counter(NAMESPACE, "rows_read")

    def setup(self):
        self._skip = {name: set(lines.tolist()) for name, lines in self.skip.items()}


class ReadCsvFn(_ReadsLabelFileFn):
    """(csv path, source split, part k, parts) -> (source split, CsvRow) | Reject (tagged
    REJECTED), one per data line of part k of the file (``csv_reader.read_csv_rows``) not
    in ``skip`` (see ``_ReadsLabelFileFn``)."""

    def process(self, element):
        path, source_split, k, parts = element
        source = posixpath.basename(path)
        with FileSystems.open(path) as f:
            for item in read_csv_rows(f, source, self._skip.get(source, ()), (k, parts)):
                self.rows_read.inc()
                yield _rejected(item) if isinstance(item, Reject) else (source_split, item)


class ParseRowFn(beam.DoFn):
    """(source split, CsvRow) -> (path, (split, Row, CsvRow)) | Reject (tagged REJECTED).

    The CsvRow it yields keeps the row's file and line only: its cells are in the Row, and
    every row crosses GroupByPath (a pickled dict of 19 cells each, for nothing).

    ``valid_patients``: patient ids of valid.csv; a train.csv row of one of them is rejected
    as ``patient_in_valid`` (its images would leak into the validation set's patients).
    ``folder``: the dataset folder the CSVs are in (``rows.dataset_folder``); a Path outside
    it is ``bad_path`` (``rows.check_in_dataset_folder``).
    """

    def __init__(self, holdout_fraction: float, valid_patients: frozenset = frozenset(), folder: str = ""):
        self.holdout_fraction = holdout_fraction
        self.valid_patients = valid_patients
        self.folder = folder

    def process(self, element):
        source_split, row = element
        try:
            split, parsed = rows.parse_csv_row(row, source_split, self.holdout_fraction)
            rows.check_in_dataset_folder(parsed.path, self.folder, row.source)
            if source_split == "train" and parsed.patient_id in self.valid_patients:
                raise chexpert.RowError("patient_in_valid", f"patient {parsed.patient_id} also appears in valid.csv: "
                                        "kept out of training (pass --patient_overlap=fail to stop instead)")
        except chexpert.RowError as e:
            split = rows.guess_split(row, source_split, self.holdout_fraction)
            yield _rejected(Reject(row.source, row.line, row.cells.get(chexpert.COL_PATH, ""), split, e.reason,
                                   e.detail))
            return
        yield parsed.path, (split, parsed, CsvRow(row.source, row.line, {}))


class ReadDatasetFn(_ReadsLabelFileFn):
    """(dataset folder, format) -> (image path, (split, ExternalRecordRow, CsvRow)) |
    Reject (tagged REJECTED), one per data row of the dataset's label file: what ReadCsv and
    ParseRows together give for CheXpert, so the rest of the graph is shared.

    The dataset is read here, in a worker (``core.datasets.find_dataset``,
    ``Dataset.rows()``), not sent from the driver. The ``CsvRow`` carries only the row's
    file and line (for duplicates and dead letters).

    Args:
        holdout_fraction: train/holdout by patient for images without an official
            evaluation split (``rows.external_split``). An image of a dataset with split
            files that lists it on none is a ``no_split`` dead letter (``rows.no_split_detail``).
        skip: {label file name: int array of lines} an incremental run has settled
            (``_ReadsLabelFileFn``).
        held_out: {patient: its latest split} for patients with images in two splits
            (``inputs.check_held_out``): their earlier images are ``patient_in_<split>``.
    """

    def __init__(self, holdout_fraction: float, skip: dict | None = None, held_out: dict | None = None):
        super().__init__(skip)
        self.holdout_fraction = holdout_fraction
        self.held_out = held_out or {}

    def process(self, element):
        folder, fmt = element
        dataset = datasets.find_dataset(folder, fmt)
        skip = self._skip.get(dataset.label_file.name, set())
        for item in dataset.rows():
            if (item.row if isinstance(item, Reject) else item.line) in skip:
                continue
            self.rows_read.inc()
            if isinstance(item, Reject):
                yield _rejected(item)
                continue
            unlisted = rows.no_split_detail(dataset, item.split, item.image)
            if unlisted:
                yield _rejected(Reject(item.source, item.line, item.image, None, rows.NO_SPLIT, unlisted))
                continue
            official = rows.official_split(fmt, item.split)
            record = rows.record_row(item.image, item.row)
            split = rows.external_split(fmt, official, record.patient_id, self.holdout_fraction)
            patient_split = self.held_out.get(record.patient_id)
            reason = rows.leak_reason(official, patient_split)
            if reason:
                yield _rejected(Reject(
                    item.source, item.line, item.image, split, reason,
                    f"patient {record.patient_id} also has images in {patient_split}: kept out of {split} (pass "
                    "--patient_overlap=fail to stop instead)"))
                continue
            yield item.image, (split, record, CsvRow(item.source, item.line, {}))


class RejectDuplicatesFn(beam.DoFn):
    """(path, [(split, Row, CsvRow), ...]) -> (split, (Row, source, line)) for the first
    occurrence (lowest file and line); later ones REJECTED."""

    def process(self, element):
        path, items = element
        items = sorted(items, key=lambda it: (it[2].source, it[2].line))
        first = items[0]
        yield first[0], (first[1], first[2].source, first[2].line)
        for split, _, row in items[1:]:
            yield _rejected(Reject(row.source, row.line, path, split, "duplicate_path",
                                   f"Path {path!r} already appears at {first[2].source} line {first[2].line}"))


class AsUniqueFn(beam.DoFn):
    """(path, (split, Row, CsvRow)) -> (split, (Row, source, line)): RejectDuplicatesFn's
    output for a path seen once, for a run whose driver found no path twice
    (``RejectDuplicates(unique=True)``); nothing is REJECTED."""

    def process(self, element):
        _, (split, row, csv_row) = element
        yield split, (row, csv_row.source, csv_row.line)


class BatchRowsFn(beam.DoFn):
    """(split, item) -> (split, [item, ...]): a split's rows in lists of up to ``size``.

    Every element that crosses a shuffle is encoded and decoded, on the worker and in the
    runner, at a cost per element (~0.05 ms a row over the two shuffles after
    RejectDuplicates, BUILD_NOTES issue 14); lists of rows pay it per list. A bundle's last
    partial lists are emitted in ``finish_bundle``.
    """

    def __init__(self, size: int = 1000):
        self.size = size

    def start_bundle(self):
        self._lists: dict[str, list] = {}

    def process(self, element):
        split, item = element
        rows_of = self._lists.setdefault(split, [])
        rows_of.append(item)
        if len(rows_of) >= self.size:
            self._lists[split] = []
            yield split, rows_of

    def finish_bundle(self):
        for split, rows_of in self._lists.items():
            if rows_of:
                yield beam.transforms.window.GlobalWindows.windowed_value((split, rows_of))
        self._lists = {}


class WriteShardFn(beam.DoFn):
    """((split, shard, num_shards), [[(Row, source, line), ...], ...]) -> one TFRecord file
    in the run's snapshot folder (the shard's rows come in lists, ``BatchRowsFn``).

    ``labeller`` (side input, with --labeller): {path: [P(positive) per labeller index]}.

    Reads, decodes and encodes one image at a time, so a worker's memory is one shard's
    row list, with each row's record less its image (~0.9 KB), plus one image. Yields the
    shard's ``shards.WrittenShard`` as JSON; undecodable images are REJECTED. Writing the
    same shard twice (a retried bundle) rewrites the same file.
    """

    def __init__(self, input_root: str, snapshot_dir: str, settings: example_builder.ExampleSettings, tag: str = "",
                 labeller_indices: tuple[int, ...] = ()):
        self.input_root = input_root
        self.snapshot_dir = snapshot_dir
        self.settings = settings
        self.tag = tag
        self.labeller_indices = labeller_indices
        self.written = Metrics.counter(NAMESPACE, "written")
        self.bytes = Metrics.counter(NAMESPACE, "bytes_written")

    def process(self, element, labeller=None):
        (split, index, num_shards), row_lists = element
        shard_rows = itertools.chain.from_iterable(row_lists)
        name = shards.shard_name(split, index, num_shards, self.tag)
        report = shards.WrittenShard(manifest_lib.ShardStats(shard=name, split=split, index=index,
                                                             num_shards=num_shards))
        # Sorted: the same bytes every run, frontal views first (example_lib.RECORD_ORDER).
        ordered = sorted(shard_rows, key=lambda r: example_lib.record_order(r[0].path, r[0].view))
        softs = [self_trained.labeller_vector(row.codes, (labeller or {}).get(row.path), self.labeller_indices)
                 for row, _, _ in ordered]
        # Labels for the whole shard in one go: per row they cost ~0.05 ms (BUILD_NOTES, issue 14).
        draws, targets, masks = example_builder.shard_labels([row for row, _, _ in ordered], self.settings, softs)
        # Everything of each record but its image, for the whole shard before any image is
        # decoded: ~3x cheaper in one tight loop than between decodes (BUILD_NOTES, issue 14).
        rests = [example_builder.record_rest(row, self.settings, draws[i], targets[i], masks[i], softs[i])
                 for i, (row, _, _) in enumerate(ordered)]
        kept = []
        size = 0
        real_folders: dict[str, str] = {}  # resolved once per shard, not per image
        with storage.create(posixpath.join(self.snapshot_dir, name)) as writer:
            for i, (row, source, line) in enumerate(ordered):
                file_stat = None
                try:
                    data, file_stat = example_builder.read_image_and_stat(
                        posixpath.join(self.input_root, row.path), row.path, real_folders)
                    encoded = example_builder.encode_image(row, data, self.settings)
                except chexpert.RowError as e:
                    # The file as the rejecting read found it: if it differs from the
                    # driver's stat, the file changed while the job ran (build_records).
                    report.rejected_files[row.path] = getattr(e, "file_stat", file_stat)
                    yield _rejected(Reject(source, line, row.path, split, e.reason, e.detail))
                    continue
                size += tfrecord.write_record_parts(writer, example_lib.with_image(encoded, rests[i])[0])
                kept.append(i)
                report.files.append(file_stat)
        for i in kept:
            row = ordered[i][0]
            report.paths.append(row.path)
            report.views.append(row.view)
            report.codes.append(list(map(int, row.codes)))
            report.labeller.append(None if softs[i] is None else softs[i].tolist())
        targets_all, masks_all = targets[kept], masks[kept]
        stats = report.stats
        stats.written, stats.bytes = len(report.paths), size
        for view in report.views:
            stats.views[view] = stats.views.get(view, 0) + 1
        stats.raw_counts, stats.target_counts = example_builder.label_counts(report.codes, targets_all, masks_all)
        stats.relabelled = self_trained.relabelled_counts(report.labeller)
        self.written.inc(stats.written)
        self.bytes.inc(size)
        yield report.to_json()


class ReadCsv(beam.PTransform):
    """(csv path, source split, part k, parts) -> rows: (source split, CsvRow); REJECTED:
    unreadable rows."""

    def __init__(self, skip: dict | None = None):
        super().__init__()
        self.skip = skip

    def expand(self, sources):
        return sources | "ReadLines" >> beam.ParDo(ReadCsvFn(self.skip)).with_outputs(REJECTED, main="rows")


class ParseRows(beam.PTransform):
    """rows: (source split, CsvRow) -> (path, (split, Row, CsvRow)); REJECTED: invalid rows."""

    def __init__(self, holdout_fraction: float, valid_patients: frozenset = frozenset(), folder: str = ""):
        super().__init__()
        self.holdout_fraction, self.valid_patients, self.folder = holdout_fraction, valid_patients, folder

    def expand(self, csv_rows):
        return csv_rows | "ParseRow" >> beam.ParDo(ParseRowFn(self.holdout_fraction, self.valid_patients,
                                                              self.folder)).with_outputs(REJECTED, main="rows")


class ReadDataset(beam.PTransform):
    """(dataset folder, format) -> rows: (path, (split, ExternalRecordRow, CsvRow));
    REJECTED: rows that do not fit the format, images on no split list of a dataset that
    has them, and images of held-out patients."""

    def __init__(self, holdout_fraction: float, skip: dict | None = None, held_out: dict | None = None):
        super().__init__()
        self.holdout_fraction, self.skip, self.held_out = holdout_fraction, skip, held_out

    def expand(self, folders):
        return folders | "ReadRows" >> beam.ParDo(ReadDatasetFn(self.holdout_fraction, self.skip, self.held_out)
                                                  ).with_outputs(REJECTED, main="rows")


class RejectDuplicates(beam.PTransform):
    """(path, (split, Row, CsvRow)) -> rows: (split, (Row, source, line)), one per path;
    REJECTED: every later row of a path.

    ``unique``: the driver's scan of every row found no path twice (``inputs.scan_rows``
    normalizes each Path as ParseRows does), so there is nothing to group: a Map, fused with
    ParseRows, instead of a shuffle of every row (BUILD_NOTES, issue 14).
    """

    def __init__(self, unique: bool = False):
        super().__init__()
        self.unique = unique

    def expand(self, parsed):
        if self.unique:
            return parsed | "AsUnique" >> beam.ParDo(AsUniqueFn()).with_outputs(REJECTED, main="rows")
        return (parsed
                | "GroupByPath" >> beam.GroupByKey()
                | "KeepFirst" >> beam.ParDo(RejectDuplicatesFn()).with_outputs(REJECTED, main="rows"))


class PlanShards(beam.PTransform):
    """(split, [(Row, source, line), ...]) -> (split, number of shards): rows counted per
    split (``shards.num_shards_for``)."""

    def __init__(self, cfg: BuildConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, batches):
        cfg = self.cfg
        return (batches
                | "RowsOfList" >> beam.Map(lambda kv: (kv[0], len(kv[1])))
                | "CountPerSplit" >> beam.CombinePerKey(sum)
                | "ShardsPerSplit" >> beam.Map(lambda kv: (kv[0], shards_per_split(cfg, kv[1]))))


def shards_per_split(cfg: BuildConfig, rows: int) -> int:
    """PlanShards' count for a split of ``rows`` unique rows (``shards.num_shards_for``)."""
    return shards.num_shards_for(rows, image_size=cfg.image_size, encoding=cfg.encoding,
                                 shard_size_mb=cfg.shard_size_mb, min_shards=cfg.min_shards, fixed=cfg.num_shards)


def assign_shard(element, plan: dict):
    split, item = element
    n = plan[split]
    return (split, shards.shard_of(item[0].path, n), n), item


def assign_shards(element, plan: dict):
    """(split, [item, ...]) -> ((split, shard, num_shards), [item, ...]) per shard the list
    has rows of (``assign_shard`` on each row)."""
    split, items = element
    by_shard: dict[tuple, list] = {}
    for item in items:
        key, _ = assign_shard((split, item), plan)
        by_shard.setdefault(key, []).append(item)
    return list(by_shard.items())


class WriteShards(beam.PTransform):
    """(split, [(Row, source, line), ...]) -> stats: ``shards.WrittenShard`` JSON per shard
    file written; REJECTED: rows whose image cannot be read or decoded.

    Args:
        plan: (split, number of shards), from PlanShards.
        labeller: (path, probabilities), from LabellerTargets, or None.
    """

    def __init__(self, cfg: BuildConfig, snapshot_dir: str, tag: str, plan, labeller=None):
        super().__init__()
        self.cfg, self.snapshot_dir, self.tag, self.plan, self.labeller = cfg, snapshot_dir, tag, plan, labeller

    def expand(self, batches):
        cfg = self.cfg
        side = {"labeller": beam.pvalue.AsDict(self.labeller)} if self.labeller is not None else {}
        return (batches
                | "AssignShards" >> beam.FlatMap(assign_shards, plan=beam.pvalue.AsDict(self.plan))
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteShard" >> beam.ParDo(WriteShardFn(cfg.input_dir, self.snapshot_dir, cfg.example_settings(),
                                                          self.tag, cfg.labeller_indices), **side)
                                   .with_outputs(REJECTED, main="stats"))


class WriteJsonLines(beam.PTransform):
    """Elements (dicts, or Rejects) -> ``PREFIX-*.jsonl`` files, one JSON object a line."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def expand(self, elements):
        return (elements
                | "ToJson" >> beam.Map(lambda r: json.dumps(r.to_dict() if isinstance(r, Reject) else r,
                                                            sort_keys=True))
                | "Write" >> beam.io.WriteToText(self.prefix, file_name_suffix=".jsonl"))


def csv_parts(rows: int) -> int:
    """How many parts ReadCsv reads a CSV of ``rows`` data rows in, each by its own worker:
    one per 2,000 rows, at most 8 (each part cuts all the file's lines, ~1.3 us a row)."""
    return max(1, min(8, -(-rows // 2000)))


def build_pipeline(p: beam.Pipeline, cfg: BuildConfig, sources: list[tuple[str, str, int]], snapshot_dir: str,
                   skip: dict | None = None, tag: str = "", valid_patients: frozenset = frozenset(),
                   held_out: dict | None = None, unique_paths: bool = False) -> None:
    """Adds the records job to ``p``; its outputs land in ``snapshot_dir``: the shards,
    ``stats-*.jsonl`` (WrittenShard per shard) and ``rejects-*.jsonl`` (Reject per row).

    Args:
        sources: (CSV path, the split its rows go to, its data rows); unused for an
            NIH/MIMIC input (``cfg.external``), whose dataset folder is read by ReadDataset.
        skip: lines an incremental run has settled (see _ReadsLabelFileFn); tag: its shard tag.
        valid_patients: see ParseRowFn; held_out: see ReadDatasetFn.
        unique_paths: no Path appears twice in the CSVs (see RejectDuplicates); CheXpert only.
    """
    if cfg.external:
        read = (p | "ListDatasets" >> beam.Create([(cfg.input_dir, cfg.format)])
                | "ReadDataset" >> ReadDataset(cfg.holdout_fraction, skip, held_out))
        parsed_rows, early_rejects = read.rows, (read[REJECTED],)
    else:
        parts = [(path, split, k, n) for path, split, rows_in in sources for n in [csv_parts(rows_in)]
                 for k in range(n)]
        read = p | "ListCsvs" >> beam.Create(parts) | "ReadCsv" >> ReadCsv(skip)
        folder = rows.dataset_folder(cfg.input_dir, sources[0][0]) if sources else ""
        parsed = read.rows | "ParseRows" >> ParseRows(cfg.holdout_fraction, valid_patients, folder)
        parsed_rows, early_rejects = parsed.rows, (read[REJECTED], parsed[REJECTED])
    unique = parsed_rows | "RejectDuplicates" >> RejectDuplicates(unique_paths and not cfg.external)
    batches = unique.rows | "BatchRows" >> beam.ParDo(BatchRowsFn())
    plan = batches | "PlanShards" >> PlanShards(cfg)
    labeller = None
    if cfg.labeller:
        labeller = unique.rows | "LabellerTargets" >> self_trained.LabellerTargets(
            cfg.input_dir, cfg.labeller, cfg.policy, cfg.labeller_batch_size)
    written = batches | "WriteShards" >> WriteShards(cfg, snapshot_dir, tag, plan, labeller)
    ((*early_rejects, unique[REJECTED], written[REJECTED])
     | "MergeRejects" >> beam.Flatten()
     | "WriteRejects" >> WriteJsonLines(posixpath.join(snapshot_dir, "rejects")))
    written.stats | "WriteStats" >> WriteJsonLines(posixpath.join(snapshot_dir, "stats"))
