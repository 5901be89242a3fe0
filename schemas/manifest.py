"""The records manifest (``OUTPUT/manifest.json``), typed: what ``pipeline.build_records``
commits and every reader of a records folder reads (the trainer, evaluate, distillation,
the teaching experiment, an incremental build). As TFDS's ``DatasetInfo``/``SplitInfo``.

    Manifest      the whole file: options, policy, per-CSV reconciliation, per-split totals,
                  every shard's stats, the files of the committed snapshot
    SplitInfo     one split's totals (``splits``)
    SourceInfo    one CSV's reconciliation: rows = written + rejected (``sources``)
    ShardStats    one shard's counts (``shard_stats``), as the records job writes it
    LabellerInfo  the U-SelfTrained labeller's model and what it relabelled (``teacher``)
    DatasetInfo   the dataset the records came from: format, files, the observations it
                  labels, per-observation and unmapped-finding counts (``datasets``)

Read tolerantly: a key this version does not know is kept (``extra``) and written back, a
key it expects but an older manifest lacks takes its default, so ``Manifest.from_json`` of
any manifest the job ever wrote works and ``to_json`` gives back the same keys and values.
``manifest_version`` is raised when a key changes meaning. No TensorFlow, no Beam: the file
is read through ``core.commit.read_records_manifest``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

# 1: the first typed manifest (schema of 2026-11: snapshot folders, ``teacher``, ``files``).
# Manifests written before it carry no manifest_version and read as version 1.
# ``datasets`` (issue 13: the source dataset, CheXpert, NIH or MIMIC) and a ``test`` split (an
# external dataset's official one) were added, not changed: a manifest without ``datasets`` is
# CheXpert's, so the version stays 1.
MANIFEST_VERSION = 1

Counts = dict[str, dict[str, int]]  # {observation slug: {label key: count}}


class ManifestError(ValueError):
    """manifest.json holds something that is not a records manifest."""


def empty_counts(slugs: tuple[str, ...] | list[str]) -> Counts:
    """{slug: {}} for every observation: the counts of no records."""
    return {slug: {} for slug in slugs}


def merge_counts(into: Counts, other: Counts) -> None:
    """Adds ``other``'s counts into ``into`` (in place)."""
    for slug, counts in other.items():
        bucket = into.setdefault(slug, {})
        for k, v in counts.items():
            bucket[k] = bucket.get(k, 0) + v


def _split_known(cls, d: dict) -> tuple[dict, dict]:
    """``d``'s keys that are fields of ``cls`` (less ``extra``), and the rest."""
    if not isinstance(d, dict):
        raise ManifestError(f"{cls.__name__}: a JSON object expected, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    return {k: v for k, v in d.items() if k in names}, {k: v for k, v in d.items() if k not in names}


def _plain_json(obj, omit_none: tuple[str, ...] = ()) -> dict:
    """A flat dataclass as its JSON object: the unknown keys it was read with, then its fields
    (None ones in ``omit_none`` left out, as the manifests that lack them)."""
    out = dict(obj.extra)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == "extra" or (value is None and f.name in omit_none):
            continue
        out[f.name] = value
    return out


class _FlatRecord:
    """``from_json``/``to_json`` for the flat records below: unknown keys are kept in
    ``extra`` and written back; the fields in ``OMIT_NONE`` are left out when None, as the
    manifests that lack them."""

    OMIT_NONE: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_json(cls, d: dict):
        known, extra = _split_known(cls, d)
        return cls(**known, extra=extra)

    def to_json(self) -> dict:
        return _plain_json(self, omit_none=self.OMIT_NONE)


@dataclasses.dataclass
class ShardStats(_FlatRecord):
    """One shard's counts.

    Attributes:
        shard: its path relative to the records folder (``snapshot-.../train-00000-of-00004.tfrecord``).
        split: ``train``, ``holdout`` or ``valid``.
        written: records in it.
        bytes: its size.
        views: {``frontal``/``lateral``: records}; frontal ones come first in the file.
        raw_counts: {slug: {``1``/``0``/``-1``/``blank``: records}} of the CSV's codes.
        target_counts: {slug: {``0``/``1``/``2``/``soft``/``masked``: records}} after the policy.
        relabelled: {slug: entries holding a labeller value}.
        index: its index among ``num_shards`` of its split; None for a shard an incremental
            run compacted (it keeps its original name's numbers).
        num_shards: see ``index``.
    """

    shard: str
    split: str
    written: int = 0
    bytes: int = 0
    views: dict[str, int] = dataclasses.field(default_factory=dict)
    raw_counts: Counts = dataclasses.field(default_factory=dict)
    target_counts: Counts = dataclasses.field(default_factory=dict)
    relabelled: dict[str, int] = dataclasses.field(default_factory=dict)
    index: int | None = None
    num_shards: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    OMIT_NONE: ClassVar[tuple[str, ...]] = ("index", "num_shards")


@dataclasses.dataclass
class SplitInfo(_FlatRecord):
    """One split's totals over its shards and dead letters.

    Attributes:
        shards: its shards' paths relative to the records folder, sorted (never a glob).
        views: None in a manifest from before views were counted (then every record counts).
    """

    rows: int = 0
    written: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
    shards: list[str] = dataclasses.field(default_factory=list)
    num_shards: int = 0
    bytes: int = 0
    views: dict[str, int] | None = None
    raw_counts: Counts = dataclasses.field(default_factory=dict)
    target_counts: Counts = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    OMIT_NONE: ClassVar[tuple[str, ...]] = ("views",)

    def add_shard(self, stats: ShardStats) -> None:
        """Counts one shard's records into the split."""
        self.shards.append(stats.shard)
        self.num_shards = len(self.shards)
        self.written += stats.written
        self.bytes += stats.bytes
        views = self.views if self.views is not None else {}
        for view, n in stats.views.items():
            views[view] = views.get(view, 0) + n
        self.views = views
        merge_counts(self.raw_counts, stats.raw_counts)
        merge_counts(self.target_counts, stats.target_counts)

    def add_reject(self, reason: str) -> None:
        self.rejected += 1
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1


@dataclasses.dataclass
class SourceInfo(_FlatRecord):
    """One input CSV's reconciliation: ``rows == written + rejected`` when committed.

    Attributes:
        path: the CSV's full path; sha256: of its bytes (None only for a source known from
            its dead letters alone).
    """

    path: str | None = None
    sha256: str | None = None
    rows: int = 0
    written: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    OMIT_NONE: ClassVar[tuple[str, ...]] = ("path", "sha256")

    def add_reject(self, reason: str) -> None:
        self.rejected += 1
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1


@dataclasses.dataclass
class LabellerInfo(_FlatRecord):
    """The U-SelfTrained labeller (``build_records --labeller JOB_DIR``): a trainer.task job
    whose P(positive) became the target of uncertain labels.

    Attributes:
        job_dir: its job folder (absolute); model_sha256: of its model.keras.
        tasks: what it predicts; trained_policy: {slug: the policy it was trained with}.
        observations: the slugs it relabelled (policy ``self_trained``).
        relabelled: {split: {slug: uncertain entries it relabelled}}.
    """

    job_dir: str = ""
    model_sha256: str = ""
    tasks: list[str] | None = None
    trained_policy: dict[str, str | None] = dataclasses.field(default_factory=dict)
    observations: list[str] = dataclasses.field(default_factory=list)
    relabelled: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DatasetInfo(_FlatRecord):
    """The dataset a records folder was built from (``build_records --format``).

    Attributes:
        format: ``chexpert``, ``nih`` or ``mimic`` (``schemas.sources.FORMATS``).
        folder: the dataset folder (external) or the folder CheXpert's CSV paths are
            relative to.
        files: {file name: {``sha256``, ``rows``}} of every file the rows depend on: the
            label file (also reconciled in ``sources``), NIH's split lists, MIMIC's labels and
            split CSVs.
        official_split: the dataset's own split files were there and decided the ``test`` /
            ``valid`` splits (NIH test list, MIMIC split CSV).
        labelled: the observations the dataset labels (``schemas.sources.labelled``);
            unlabelled: the rest, blank in every record and masked in training whatever
            ``blank`` says (never read as negative).
        counts: {labelled slug: {``positive``/``negative``/``uncertain``/``blank``: records}}
            over the written records.
        unmapped_findings: {source label: records} of the source's own labels that map to no
            observation (NIH's Infiltration, Mass, Nodule, ...), over the written records.
        notes: what the reader of the folder chose (a second label file not read, ...).
    """

    format: str = "chexpert"
    folder: str = ""
    files: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    official_split: bool = False
    labelled: list[str] = dataclasses.field(default_factory=list)
    unlabelled: list[str] = dataclasses.field(default_factory=list)
    counts: Counts = dataclasses.field(default_factory=dict)
    unmapped_findings: dict[str, int] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Manifest:
    """A committed records folder, as ``manifest.json`` describes it.

    Attributes:
        schema_version: ``schemas.chexpert.SCHEMA_VERSION`` of the records.
        record_order: ``schemas.example.RECORD_ORDER``: how records are ordered in a shard.
        created: ISO 8601 UTC time of the commit.
        observations: the 14 slugs in CSV order.
        policy: {slug: uncertainty policy}; blank: how blank labels were read.
        image_size: side of the stored images, pixels; encoding: raw, png or jpeg.
        options: the job's settings (``pipeline.build_config.BuildConfig.manifest_options``).
        sources: {CSV name: SourceInfo}; splits: {split: SplitInfo}.
        labeller: the U-SelfTrained labeller, or None (JSON key ``teacher``, its name when
            the flag was ``--teacher``; ``labeller`` is read as well).
        shard_stats: {shard path: ShardStats} of every shard of the snapshot.
        rows, written, rejected: totals over the sources.
        fingerprint: ``core.fingerprint`` of everything the records depend on.
        incremental: ``{tag, kept, processed}`` for an incremental run, else None.
        patient_overlap: ``{mode, valid_patients, rows_rejected}``.
        snapshot: the snapshot folder; rejected_files, index_file: its dead letters and index.
        files: {path: size} of every file the commit consists of (``core.commit``).
        datasets: {format: DatasetInfo} of the dataset(s) the records came from; None in a
            manifest from before the key (CheXpert's; see ``format``), and then left out.
        manifest_version: ``MANIFEST_VERSION`` of the writer.
        extra: keys this version does not know, kept as read.
    """

    schema_version: int | None = None
    record_order: str | None = None
    created: str = ""
    observations: list[str] = dataclasses.field(default_factory=list)
    policy: dict[str, str] = dataclasses.field(default_factory=dict)
    blank: str = "negative"
    image_size: int = 0
    encoding: str = "raw"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    sources: dict[str, SourceInfo] = dataclasses.field(default_factory=dict)
    splits: dict[str, SplitInfo] = dataclasses.field(default_factory=dict)
    labeller: LabellerInfo | None = None
    shard_stats: dict[str, ShardStats] = dataclasses.field(default_factory=dict)
    rows: int = 0
    written: int = 0
    rejected: int = 0
    fingerprint: str = ""
    incremental: dict[str, Any] | None = None
    patient_overlap: dict[str, Any] = dataclasses.field(default_factory=dict)
    snapshot: str = ""
    rejected_files: list[str] = dataclasses.field(default_factory=list)
    index_file: str = ""
    files: dict[str, int] = dataclasses.field(default_factory=dict)
    datasets: dict[str, DatasetInfo] | None = None
    manifest_version: int = MANIFEST_VERSION
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict) -> Manifest:
        """Reads a manifest.json object of any version (see the module docstring).

        Raises:
            ManifestError: ``d`` or one of its parts is not a JSON object.
        """
        d = dict(d) if isinstance(d, dict) else d
        if isinstance(d, dict) and "teacher" in d:  # the key's name while the flag was --teacher
            d.setdefault("labeller", d["teacher"])
            d.pop("teacher")
        known, extra = _split_known(cls, d)
        known.setdefault("manifest_version", 1)
        known["sources"] = {k: SourceInfo.from_json(v) for k, v in (known.get("sources") or {}).items()}
        known["splits"] = {k: SplitInfo.from_json(v) for k, v in (known.get("splits") or {}).items()}
        known["shard_stats"] = {k: ShardStats.from_json(v) for k, v in (known.get("shard_stats") or {}).items()}
        if known.get("labeller") is not None:
            known["labeller"] = LabellerInfo.from_json(known["labeller"])
        if known.get("datasets") is not None:
            known["datasets"] = {k: DatasetInfo.from_json(v) for k, v in known["datasets"].items()}
        return cls(**known, extra=extra)

    def to_json(self) -> dict:
        """The manifest.json object (every key a reader of the untyped file knew)."""
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        out["sources"] = {k: v.to_json() for k, v in self.sources.items()}
        out["splits"] = {k: v.to_json() for k, v in self.splits.items()}
        out["shard_stats"] = {k: v.to_json() for k, v in self.shard_stats.items()}
        out["teacher"] = out.pop("labeller").to_json() if self.labeller is not None else out.pop("labeller")
        if self.datasets is None:
            out.pop("datasets")  # as the manifests from before it
        else:
            out["datasets"] = {k: v.to_json() for k, v in self.datasets.items()}
        return out

    @property
    def format(self) -> str:
        """The source dataset's format: ``chexpert`` for a manifest without ``datasets``
        (from before the key), else its one dataset's (``mixed`` if ever several)."""
        if not self.datasets:
            return "chexpert"
        return next(iter(self.datasets)) if len(self.datasets) == 1 else "mixed"

    @property
    def synthetic(self) -> bool:
        """True when the records were built from pipeline.make_sample's synthetic set."""
        return bool(self.options.get("synthetic"))

