r"""Evaluates one model or an ensemble the way the CheXpert paper did, with a report.

    python -m trainer.evaluate --job_dir jobs/atelectasis
    python -m trainer.evaluate --job_dir jobs/a --job_dir jobs/b --tta     # ensemble + TTA
    python -m trainer.evaluate --job_dir jobs/a --csv /data/CheXpert-v1.0-small/valid.csv \
        --image_root /data
    python -m trainer.evaluate --job_dir jobs/a --input_dir /data/ChestX-ray14     # NIH: its test list
    python -m trainer.evaluate --job_dir jobs/a --input_dir /data/mimic-cxr-jpg --split validate
    python -m trainer.evaluate --job_dir jobs/a --records_dir data/records-nih --split test

External validation: ``--input_dir`` reads a CheXpert, NIH ChestX-ray14 or MIMIC-CXR-JPG
folder's images directly (``core.datasets``; ``--format`` when detection cannot tell), its
official test split by default (every row where it ships none; ``--split all`` for every
row), and ``--records_dir`` reads records build_records made of any of them. A task the
dataset does not label (``schemas.sources.labelled``: NIH has no support devices, fracture,
...) is left out of the results, never scored as negative, and the report's "External
validation" part says which tasks the dataset labels, their AUROC with its 95% CI, why each
other task has none, the rows that could not be read, and that thresholds tuned on the
job's own records may not transfer. Thresholds are still tuned on the job's own holdout.

Study level (default, as the paper): a study's probability is the max over its frontal
images (``--views all`` adds laterals); ``--level image`` scores images. Per task: AUROC
with a 95% bootstrap CI over studies, AUPRC, and at 0.35 and at the F1-maximising threshold
tuned on a *different* split (``--tune_split``, default holdout; never the reported split):
F1, accuracy, sensitivity, specificity, PPV, NPV, confusion counts; expected calibration
error. Writes ``report.md``, ``report.html`` (one file, images embedded), ROC, PR and
reliability plots, and ``metrics.json`` to ``--report_dir`` (default JOB_DIR/eval-SPLIT, with
-tta, -allviews, -image, -ensembleN-<digest> or csv-NAME as they apply: one evaluation never
replaces another's report).

The report opens with what was evaluated (records split and folder, or the CSV and image
root; level, views, TTA, ensemble members) and what each model was trained on, with a
warning above everything else when that was synthetic data; every number it leaves empty
comes with a sentence saying why. metrics.json carries the same (``source``,
``provenance``, ``synthetic``, ``warnings``, ``missing``).

This module predicts, aggregates and writes the files; the numbers with their reasons and
the report's text are ``trainer.report``'s, its figures ``trainer.report_plots``'.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import logging
import os
import posixpath
import sys

from core import cli

cli.require_extra("train", "trainer.evaluate")  # before absl: a Beam-only install says what is missing

from absl import app, flags  # noqa: E402

from serving import startup

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Declares the command-line flags; called only when run as a program, so importing this
    module as a library (tests, other entry points) declares nothing."""
    flags.DEFINE_multi_string("job_dir", None, "A trainer.task job folder; repeat for an ensemble (probabilities averaged).")
    flags.DEFINE_string("split", "valid", "Split of the records to evaluate (validate = valid); with --input_dir, the "
                                          "dataset's official split (default there: its test split, else every row).")
    flags.DEFINE_string("csv", None, "Evaluate a CheXpert-format CSV instead of records (with --image_root); an NIH "
                                     "or MIMIC label file is read as its dataset folder (--input_dir).")
    flags.DEFINE_string("input_dir", None, "Evaluate a dataset folder's images directly: CheXpert, NIH ChestX-ray14 or "
                                           "MIMIC-CXR-JPG (detected, or --format). Rows scored: --split where the "
                                           "dataset has an official split (NIH train_val|test, MIMIC "
                                           "train|validate|test; 'all' for every row); default its test split, or "
                                           "every row when it ships none (CheXpert: valid.csv).")
    flags.DEFINE_enum("format", None, ["chexpert", "nih", "mimic"], "The --input_dir's dataset (default: detected).")
    flags.DEFINE_string("records_dir", None, "Evaluate records built by pipeline.build_records from any dataset "
                                             "(default: the job's own records).")
    flags.DEFINE_string("image_root", None, "Folder the CSV's Path column is relative to.")
    flags.DEFINE_string("tune_split", "holdout", "Split on which thresholds are tuned ('' to skip).")
    flags.DEFINE_boolean("tta", False, "Average 4 deterministic test-time transforms (identity, +-3% shifts, 1.05 zoom).")
    flags.DEFINE_enum("views", "frontal", ["frontal", "all"], "Views that enter a study's max.")
    flags.DEFINE_enum("level", "study", ["study", "image"], "Score studies (max over views) or images.")
    flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the AUROC CI.")
    flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
    flags.DEFINE_float("threshold", None, "Fixed threshold (default: the jobs' --threshold, 0.35).")
    flags.DEFINE_string("report_dir", None, "Where the report goes (default JOB_DIR/eval-SPLIT[-tta][-allviews]"
                                            "[-image][-ensembleN-DIGEST], or eval-csv-NAME).")
    flags.DEFINE_boolean("skip_corrupt", False, "Skip (and report) corrupt shards instead of stopping.")
    flags.DEFINE_boolean("verbose", False, "Show TensorFlow's own start-up lines (hidden by default).")


if __name__ == "__main__":  # flags first, then TensorFlow, quietly (serving/startup.py)
    define_flags()
    startup.begin(sys.argv)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from core import csv_reader  # noqa: E402
from core.errors import ConfigError  # noqa: E402
from pipeline import make_sample  # noqa: E402
from core import datasets, storage  # noqa: E402
from schemas import chexpert, mimic, nih, sources  # noqa: E402
from schemas.job_spec import generator_of, provenance_line  # noqa: E402
from serving import job as job_lib  # noqa: E402
from serving import preprocess  # noqa: E402
from serving.predict import predict_batch, score_in_batches  # noqa: E402
from trainer import config as config_lib  # noqa: E402
from trainer import input as input_lib  # noqa: E402
from trainer import metrics as m  # noqa: E402
from trainer import report, report_plots  # noqa: E402
from trainer.config import TrainConfig, read_manifest  # noqa: E402

log = logging.getLogger(__name__)

# --- Predictions ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Member:
    """One evaluated model: the serving job that scores images, and its training config,
    which names the records it was trained and selected on (read here with the trainer's
    own input pipeline, ``trainer.input``)."""

    job: job_lib.Job
    cfg: TrainConfig

    @property
    def job_dir(self) -> str:
        return self.job.job_dir

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.job.tasks


def load_member(job_dir: str) -> Member:
    """The job in ``job_dir`` and its config (a SavedModel export's is in the folder above).

    Raises:
        serving.job.JobError: no usable model or spec.
        ConfigError: no config.json.
    """
    return Member(job_lib.load_job(job_dir), config_lib.load_config(job_dir))


def _tta_transforms(size: int) -> np.ndarray:
    """Projective transforms (4, 8): identity, shift right/left 3%, zoom 1.05 about the centre."""
    s = 0.03 * size
    c = (size - 1) / 2.0
    z = 1 / 1.05
    return np.array([[1, 0, 0, 0, 1, 0, 0, 0], [1, 0, -s, 0, 1, 0, 0, 0], [1, 0, s, 0, 1, 0, 0, 0],
                     [z, 0, c - z * c, 0, z, c - z * c, 0, 0]], np.float32)


def _predict_images(job: job_lib.Job, images: np.ndarray, tta: bool) -> np.ndarray:
    """uint8 (B, S, S, 1) -> P(positive) float32 (B, T); with ``tta`` the mean over
    ``_tta_transforms`` (each applied with ``serving.preprocess``'s transform and rounding)."""
    if not tta:
        return predict_batch(job, images)
    x = tf.cast(images, tf.float32)
    outs = [predict_batch(job, preprocess.to_pixels(preprocess.transform(x, tf.tile(t[None], [len(images), 1]))))
            for t in _tta_transforms(job.spec.image_size)]
    return np.mean(outs, axis=0)


def predict_records(member: Member, split: str, views: str, tta: bool, skip_corrupt: bool = False,
                    skipped: dict | None = None, records_dir: str | None = None) -> dict:
    """Predictions of one job on a split of records, keyed by source path: its own records,
    or ``records_dir``'s (built by build_records from any dataset, at any stored size: they
    are resized to the model's as its own are).

    Each prediction holds ``study``, ``dataset`` (the record's ``source/dataset``), ``raw``
    (codes per task) and ``probs``. A corrupt shard raises ``input.CorruptShardError``
    naming it; with ``skip_corrupt`` it is left out and recorded in ``skipped``.
    """
    cfg = dataclasses.replace(member.cfg, views=views)
    if records_dir:
        other = read_manifest(records_dir)
        cfg = dataclasses.replace(cfg, records_dir=records_dir, records_image_size=int(other.image_size),
                                  records_encoding=other.encoding)
    manifest = read_manifest(cfg.records_dir)
    files = input_lib.shard_files(cfg.records_dir, split, manifest)
    if skip_corrupt:
        files, bad = input_lib.drop_corrupt(files)
        if skipped is not None:
            skipped.update(bad)
    out = {}
    dataset = input_lib.make_dataset(files, cfg, training=False, batch_size=64)
    for batch in input_lib.checked(dataset, files):
        probs = _predict_images(member.job, batch["image"].numpy(), tta)
        for path, study, dataset, raw, p in zip(batch["path"].numpy(), batch["study"].numpy(),
                                                batch["dataset"].numpy(), batch["raw"].numpy(), probs):
            out[path.decode()] = {"study": study.decode(), "dataset": dataset.decode(),
                                  "raw": dict(zip(member.tasks, raw.tolist())),
                                  "probs": dict(zip(member.tasks, p.tolist()))}
    return out


def predict_csv(job: job_lib.Job, csv_path: str, image_root: str, views: str, tta: bool
                ) -> tuple[dict, list[dict]]:
    """Predictions of one job on a CheXpert-format CSV; unreadable rows are returned apart."""
    failed = []

    def readable():
        with open(csv_path, "rb") as f:
            for item in csv_reader.read_csv_rows(f, os.path.basename(csv_path)):
                if isinstance(item, csv_reader.Reject):
                    failed.append(item.to_dict())
                    continue
                try:
                    row = chexpert.parse_row(item.cells)
                    if views == "frontal" and row.view != "frontal":
                        continue
                    path = os.path.join(image_root, row.path)
                    with open(path, "rb") as img:
                        data = img.read()
                    yield row, preprocess.model_input(data, row.path, job.spec)
                except chexpert.RowError as e:
                    failed.append({"row": item.line, "path": item.cells.get("Path"), "reason": e.reason,
                                   "detail": e.detail})
                except OSError as e:
                    failed.append({"row": item.line, "path": item.cells.get("Path"),
                                   "reason": chexpert.unreadable_reason(os.path.exists(path)), "detail": str(e)})

    out = {}
    for row, p in score_in_batches(readable(), lambda images: _predict_images(job, images, tta), 64):
        raw = {t: row.codes[chexpert.OBSERVATION_INDEX[t]] for t in job.tasks}
        out[row.path] = {"study": row.study_id, "dataset": sources.CHEXPERT, "raw": raw,
                         "probs": dict(zip(job.tasks, p.tolist()))}
    return out, failed


def ensemble(per_job: list[dict]) -> tuple[list[str], dict]:
    """Averages the jobs' probabilities over the images and tasks they all have."""
    tasks = [t for t in chexpert.OBSERVATIONS if all(t in next(iter(p.values()))["probs"] for p in per_job if p)]
    paths = sorted(set.intersection(*(set(p) for p in per_job)))
    merged = {}
    for path in paths:
        first = per_job[0][path]
        merged[path] = {"study": first["study"], "dataset": first.get("dataset", sources.CHEXPERT),
                        "raw": {t: first["raw"][t] for t in tasks},
                        "probs": {t: float(np.mean([p[path]["probs"][t] for p in per_job])) for t in tasks}}
    return tasks, merged


def _dataset_of(r: dict) -> str:
    return r.get("dataset") or sources.CHEXPERT


def aggregate(preds: dict, tasks: list[str], level: str) -> dict:
    """{task: (y (n,), p (n,))} over studies (max probability) or images.

    A study (image) of a dataset that does not label a task (``schemas.sources.labelled``:
    NIH has no fracture, no support devices, ...) is left out of that task, never counted
    negative; a task no evaluated dataset labels is absent (``not_labelled`` says why).
    Uncertain labels are left out; blank counts as negative where the dataset labels the
    task (CheXpert and MIMIC: "not mentioned" by the same labeler; NIH's labelled findings
    are never blank). Studies are keyed by dataset and study id, so two datasets' ids never
    merge.
    """
    groups = collections.defaultdict(list)
    for path, r in preds.items():
        groups[(_dataset_of(r), r["study"]) if level == "study" else path].append(r)
    out = {}
    for task in tasks:
        ys, ps = [], []
        for items in groups.values():
            if task not in sources.labelled(_dataset_of(items[0])):
                continue
            code = items[0]["raw"][task]
            if code == int(chexpert.Code.UNCERTAIN):
                continue
            ys.append(int(code == int(chexpert.Code.POSITIVE)))
            ps.append(max(r["probs"][task] for r in items))
        if any(task in sources.labelled(_dataset_of(items[0])) for items in groups.values()):
            out[task] = (np.array(ys), np.array(ps))
    return out


DATASET_NAMES = report.DATASET_NAMES


def not_labelled(preds: dict, tasks: list[str], level: str) -> tuple[dict[str, str], list[str]]:
    """Tasks the evaluated datasets do not label (``schemas.sources.labelled``).

    Returns:
        ``(absent, partly)``: ``{task: why it was not scored}`` for each task no evaluated
        dataset labels (``aggregate`` leaves it out), and one sentence per task that only
        some of them label (a mixed records folder), saying how many studies were left out.
    """
    seen = {}
    for path, r in preds.items():
        seen[(_dataset_of(r), r["study"]) if level == "study" else path] = _dataset_of(r)
    counts = collections.Counter(seen.values())
    absent, partly = {}, []
    for task in tasks:
        without = sorted(d for d in counts if task not in sources.labelled(d))
        if not without:
            continue
        names = " and ".join(DATASET_NAMES.get(d, d) for d in without)
        if len(without) == len(counts):
            absent[task] = (f"{names} does not label it (its rows are blank there, which means 'not labelled', "
                            "never 'negative'), so it was not scored")
        else:
            n = sum(counts[d] for d in without)
            partly.append(f"{task}: {n} {report.PLURAL[level]} of {names} left out (that dataset does not label it).")
    return absent, partly


# --- External dataset folders (core.datasets) --------------------------------------------------

# The official splits each external dataset ships, by the names its split files use.
DATASET_SPLITS = {sources.NIH: ("train_val", "test"), sources.MIMIC: ("train", "validate", "test")}
SPLIT_ALIASES = {"valid": "validate"}  # the records' name for MIMIC's validate
RECORDS_SPLIT_ALIASES = {"validate": "valid"}  # and MIMIC's name for the records' (and CheXpert's) valid
ALL_ROWS = "all"


@dataclasses.dataclass(frozen=True)
class Selection:
    """The rows of a dataset folder an evaluation scores.

    Attributes:
        rows: the ``core.datasets.DatasetRow`` s scored (their images are read next).
        rejects: the label file's rows that could not be read, and later rows of an image
            already listed (``duplicate_path``), as dead letters (``{"source", "row", "path",
            "reason", "detail"}``).
        split: the official split scored, or None for every row.
        rule: a sentence saying which rows were scored and why.
        counts: ``rows`` (data rows of the label file), ``readable``, ``other_split`` (rows
            of another official split), ``on_no_list`` (rows on no official list: left out
            when a split is scored), ``view`` (rows left out for their view), ``selected``.
    """

    rows: list
    rejects: list
    split: str | None
    rule: str
    counts: dict


def _split_files(ds) -> str:
    """The official split files a dataset folder holds, by name."""
    split_files = (nih.TRAIN_VAL_LIST, nih.TEST_LIST) + mimic.SPLIT_FILES
    return ", ".join(f.name for f in ds.files if f.name in split_files) or "none"


def select_rows(ds, split: str | None, views: str) -> Selection:
    """Which rows of a dataset folder to score.

    Args:
        ds: a ``core.datasets.Dataset``.
        split: an official split (NIH ``train_val``/``test``, MIMIC ``train``/``validate``
            (or ``valid``)/``test``), ``all`` for every row, or None: the test split when the
            folder ships one, else every row.
        views: ``frontal`` leaves out lateral and unknown-view images (as records are
            read); ``all`` keeps them.

    Raises:
        ConfigError: a split the format does not have, or one asked of a folder without
            split files.
    """
    names = DATASET_SPLITS[ds.format]
    if split is not None and split != ALL_ROWS:
        split = SPLIT_ALIASES.get(split, split) if ds.format == sources.MIMIC else split
        if split not in names:
            raise ConfigError(f"--split={split}: {DATASET_NAMES[ds.format]}'s official splits are {', '.join(names)} "
                              f"(or {ALL_ROWS} for every row of {ds.label_file.name})")
        if not ds.official_split:
            raise ConfigError(f"--split={split}: {ds.folder} has no official split file, so there is no '{split}' "
                              f"split; leave --split out (or --split {ALL_ROWS}) to score every row")
    rows, rejects, first = [], [], {}
    for item in ds.rows():
        if isinstance(item, csv_reader.Reject):
            rejects.append({"source": item.source, "row": item.row, "path": item.path, "reason": item.reason,
                            "detail": item.detail})
        elif item.image in first:
            # The first row of an image is scored, as build_records and score keep it; a later
            # one is a dead letter, not a silent second prediction of the same key.
            seen = first[item.image]
            rejects.append({"source": item.source, "row": item.line, "path": item.image, "reason": "duplicate_path",
                            "detail": f"Path {item.image!r} already appears at {seen.source} line {seen.line}"})
        else:
            first[item.image] = item
            rows.append(item)
    if split is None:
        has_test = ds.official_split and any(r.split == "test" for r in rows)
        split = "test" if has_test else None
        rule = (f"the official test split ({_split_files(ds)})" if has_test else
                f"every row: {ds.folder} ships no official split file" if not ds.official_split else
                f"every row: the official split files ({_split_files(ds)}) list no test image")
    elif split == ALL_ROWS:
        split, rule = None, f"every row (--split {ALL_ROWS})"
    else:
        rule = f"the official {split} split (--split {split}; {_split_files(ds)})"
    counts = {"rows": ds.label_file.rows, "readable": len(rows),
              "other_split": sum(split is not None and r.split is not None and r.split != split for r in rows),
              "on_no_list": sum(split is not None and r.split is None for r in rows)}
    chosen = [r for r in rows if split is None or r.split == split]
    kept = [r for r in chosen if views == "all" or r.row.view == "frontal"]
    counts["view"] = len(chosen) - len(kept)
    counts["selected"] = len(kept)
    return Selection(kept, rejects, split, rule, counts)


def predict_dataset(job: job_lib.Job, ds, selection: Selection, tta: bool) -> tuple[dict, list[dict]]:
    """Predictions of one job on the selected rows of a dataset folder, keyed by the image
    path relative to the folder (the records' key); images that cannot be read are returned
    apart as dead letters (``missing_file``, ``not_an_image``, ... with the row)."""
    failed = []
    index = [chexpert.OBSERVATION_INDEX[t] for t in job.tasks]

    def readable():
        for dr in selection.rows:
            full = storage.join(ds.folder, dr.image)
            try:
                data = storage.read_bytes(full)
                yield dr, preprocess.model_input(data, dr.image, job.spec)
            except chexpert.RowError as e:
                failed.append({"source": dr.source, "row": dr.line, "path": dr.image, "reason": e.reason,
                               "detail": e.detail})
            except OSError as e:
                failed.append({"source": dr.source, "row": dr.line, "path": dr.image,
                               "reason": chexpert.unreadable_reason(storage.exists(full)), "detail": str(e)})

    out = {}
    for dr, p in score_in_batches(readable(), lambda images: _predict_images(job, images, tta), 64):
        out[dr.image] = {"study": dr.row.study_id, "dataset": ds.format,
                         "raw": {t: int(dr.row.codes[i]) for t, i in zip(job.tasks, index)},
                         "probs": dict(zip(job.tasks, p.tolist()))}
    return out, failed


def chexpert_csv(folder: str, split: str | None) -> tuple[str, str]:
    """``(csv, image_root)`` of a CheXpert folder given as ``--input_dir``: the folder holding
    ``CheXpert-v1.0-small/`` or that folder itself; ``valid.csv`` unless ``split`` names
    another of its CSVs.

    Raises:
        ConfigError: no such CSV there.
    """
    name = f"{RECORDS_SPLIT_ALIASES.get(split, split) or 'valid'}.csv"
    for root in [folder] + [os.path.join(folder, d) for d in (make_sample.DATASET_DIR, make_sample.DATASET_DIR_FULL)]:
        if os.path.isfile(os.path.join(root, name)):
            # The CSV's Path column starts with the dataset folder's own name.
            return os.path.join(root, name), os.path.dirname(os.path.abspath(root))
    raise ConfigError(f"--input_dir={folder}: no {name} in it or in {make_sample.DATASET_DIR}/ under it")


def label_file_folder(csv_path: str) -> str | None:
    """The dataset folder of an NIH or MIMIC label file named by ``--csv``, else None."""
    name = os.path.basename(csv_path)
    external = nih.LABEL_FILES + mimic.METADATA_FILES + mimic.LABEL_FILES + mimic.SPLIT_FILES
    return os.path.dirname(os.path.abspath(csv_path)) if name in external else None


# --- What was evaluated, by what -------------------------------------------------------------


def describe_source(jobs: list, split: str, csv_path: str | None, image_root: str | None,
                    records_dir: str | None = None, dataset=None, selection: Selection | None = None) -> dict:
    """What the predictions were made on, for the report header and metrics.json.

    Args:
        jobs: the loaded jobs (``Member``).
        split: the records split evaluated (ignored with ``csv_path``).
        csv_path: the CSV evaluated instead of records, or None.
        image_root: the folder the CSV's paths are relative to (default: the CSV's folder).
        records_dir: records evaluated instead of the jobs' own, or None.
        dataset: the ``core.datasets.Dataset`` evaluated instead, with its ``selection``.

    Returns:
        For records: ``{"kind": "records", "split", "own": bool, "records": [{"records_dir", "format",
        "snapshot", "created", "synthetic"}]}``, one entry per distinct records folder of the
        jobs (each member of an ensemble reads its own), or ``records_dir``'s. For a CSV:
        ``{"kind": "csv", "csv", "image_root", "synthetic"}``; ``synthetic`` is True when
        ``pipeline.make_sample``'s answer key lies beside the images, as build_records
        decides it (for a dataset folder: in it or beside it, where
        ``pipeline.make_external`` writes it). For a dataset folder: ``{"kind": "dataset", "format", "name", "folder",
        "files": [{"name", "sha256", "rows"}], "split", "rule", "counts", "synthetic"}``.
    """
    if dataset is not None:
        return {"kind": "dataset", "format": dataset.format, "name": DATASET_NAMES[dataset.format],
                "folder": os.path.abspath(dataset.folder) if not storage.is_remote(dataset.folder) else dataset.folder,
                "files": [{"name": f.name, "sha256": f.sha256, "rows": f.rows} for f in dataset.files],
                "split": selection.split, "rule": selection.rule, "counts": dict(selection.counts),
                "synthetic": any(storage.exists(storage.join(d, make_sample.TRUTH_FILE))
                                 for d in (dataset.folder, posixpath.dirname(dataset.folder.rstrip("/"))))}
    if records_dir:
        manifest = read_manifest(records_dir)
        own = all(os.path.abspath(records_dir) == os.path.abspath(j.cfg.records_dir) for j in jobs)
        return {"kind": "records", "split": split, "own": own,
                "records": [{"records_dir": os.path.abspath(records_dir), "snapshot": manifest.snapshot or None,
                             "created": manifest.created or None, "synthetic": manifest.synthetic,
                             "format": manifest.options.get("format", sources.CHEXPERT)}]}
    if csv_path:
        root = os.path.abspath(image_root or os.path.dirname(csv_path))
        return {"kind": "csv", "csv": os.path.abspath(csv_path), "image_root": root,
                "synthetic": os.path.exists(os.path.join(root, make_sample.TRUTH_FILE))}
    folders = []
    for records_dir in dict.fromkeys(j.cfg.records_dir for j in jobs):
        manifest = read_manifest(records_dir)
        folders.append({"records_dir": os.path.abspath(records_dir), "snapshot": manifest.snapshot or None,
                        "created": manifest.created or None, "synthetic": manifest.synthetic,
                        "format": manifest.options.get("format", sources.CHEXPERT)})
    return {"kind": "records", "split": split, "own": True, "records": folders}


def job_provenance(jobs: list) -> list[dict]:
    """Per job: its folder, tasks, what it was trained on (config.json's ``provenance``) and
    ``summary``, the one sentence ``config.provenance_line`` makes of it. ``synthetic`` is
    None for a job from before provenance was recorded."""
    return [{**dict(j.cfg.provenance), "job_dir": j.job_dir, "tasks": list(j.tasks), "synthetic": j.cfg.synthetic,
             "summary": provenance_line(j.cfg.provenance)} for j in jobs]


def any_synthetic(provenance: list[dict]) -> bool | None:
    """True if any job was trained on synthetic data, None if none was but some are unknown."""
    flags_ = [p["synthetic"] for p in provenance]
    if any(flags_):
        return True
    return None if any(f is None for f in flags_) else False


def warnings_for(source: dict, provenance: list[dict]) -> list[str]:
    """The sentences a reader must see before any number.

    Args:
        source: ``describe_source``'s description of the evaluated data.
        provenance: ``job_provenance`` of the jobs.

    Returns:
        One sentence each for: models trained on synthetic data, models whose training data
        is unknown, synthetic evaluation data; empty when none applies.
    """
    out = []
    synthetic = [p["job_dir"] for p in provenance if p["synthetic"]]
    if synthetic:
        if len(provenance) == 1:
            who = f"the model ({synthetic[0]}) was"
        elif len(synthetic) == len(provenance):
            who = f"{'both' if len(provenance) == 2 else 'all'} ensemble members ({', '.join(synthetic)}) were"
        else:
            verb = "was" if len(synthetic) == 1 else "were"
            who = f"{len(synthetic)} of the {len(provenance)} ensemble members ({', '.join(synthetic)}) {verb}"
        made = " and ".join(sorted({generator_of(p) for p in provenance if p["synthetic"]}))
        out.append(f"Trained on SYNTHETIC data: {who} trained on synthetic records made by {made}. "
                   "These numbers say nothing about how a model reads real radiographs.")
    unknown = [p["job_dir"] for p in provenance if p["synthetic"] is None]
    if unknown:
        out.append(f"Training data unknown for {', '.join(unknown)} (a job from before provenance was recorded): "
                   "it may have been trained on synthetic data; check before trusting these numbers.")
    generators = synthetic_generators(source)
    if generators:
        out.append(f"Evaluated on SYNTHETIC data: the images and labels scored here were made by "
                   f"{' and '.join(generators)}, not taken from patients.")
    return out


def synthetic_generators(source: dict) -> list[str]:
    """The generators of the evaluated data that is synthetic, by its format:
    ``pipeline.make_sample`` for CheXpert (a CSV, a CheXpert folder or its records),
    ``pipeline.make_external`` for NIH/MIMIC (a dataset folder or its records); empty when
    none of it is synthetic. ``source``: ``describe_source``'s description."""
    if source["kind"] == "csv":
        formats = [sources.CHEXPERT] if source["synthetic"] else []
    elif source["kind"] == "dataset":
        formats = [source["format"]] if source["synthetic"] else []
    else:  # only the records folders that are synthetic name their generator
        formats = [r.get("format", sources.CHEXPERT) for r in source["records"] if r["synthetic"]]
    names = ["pipeline.make_sample" if f == sources.CHEXPERT else "pipeline.make_external" for f in formats]
    return sorted(set(names), key=names.index)


def context_notes(jobs: list, source: dict, tasks: list[str], per_job: list[dict], merged: dict) -> list[str]:
    """Facts about the evaluated set a reader could otherwise get wrong.

    Args:
        jobs: the loaded jobs.
        source: ``describe_source``'s description of the evaluated data.
        tasks: the tasks evaluated (those every member predicts).
        per_job: each job's predictions, keyed by image path.
        merged: the ensemble's predictions (the paths all members scored).

    Returns:
        Sentences on records rebuilt since training, on a split that also chose the model's
        epoch, and on tasks or images an ensemble left out.
    """
    notes = []
    if source["kind"] == "records" and source.get("own", True):
        snapshots = {r["records_dir"]: r["snapshot"] for r in source["records"]}
        for j in jobs:
            trained = j.cfg.provenance.get("records_snapshot")
            now = snapshots.get(os.path.abspath(j.cfg.records_dir))
            if trained and now and trained != now:
                notes.append(f"{j.job_dir} was trained on records snapshot {trained}; the evaluated split comes from "
                             f"snapshot {now} of the same folder (rebuilt since training).")
    # The trainer keeps the epoch with the best mean AUROC on its eval split (and stops on
    # it): numbers reported on that same split are optimistically biased.
    for j in jobs:
        chosen_on = None
        if source["kind"] == "records" and source.get("own", True) and source["split"] == j.cfg.eval_split:
            chosen_on = f"split {j.cfg.eval_split} of its records"
        elif source["kind"] == "csv" and j.cfg.eval_split == "valid" and os.path.basename(source["csv"]) == "valid.csv" \
                and j.cfg.provenance.get("input_dir") \
                and source["csv"].startswith(os.path.abspath(j.cfg.provenance["input_dir"]) + os.sep):
            chosen_on = "the records built from this very CSV"
        if chosen_on:
            notes.append(f"{j.job_dir} chose its best epoch (and when to stop) by mean AUROC on {chosen_on}: the numbers "
                         "here are optimistically biased. For an unbiased estimate, evaluate images the trainer never "
                         "saw (e.g. --csv of a held-out site or test set).")
    dropped = sorted({t for j in jobs for t in j.tasks} - set(tasks))
    if dropped:
        notes.append(f"Tasks not predicted by every ensemble member are left out: {', '.join(dropped)}.")
    sizes = [len(p) for p in per_job]
    if len(set(sizes)) > 1:
        notes.append(f"The ensemble members scored {', '.join(map(str, sizes))} images; only the {len(merged)} "
                     "that all of them scored are evaluated.")
    return notes


def tuning_plan(jobs: list, split: str | None, tune_split: str) -> str | None:
    """Whether thresholds can be tuned on ``tune_split``, and if not, why.

    Args:
        jobs: the loaded jobs; each one's records must hold ``tune_split``.
        split: the evaluated records split, or None when a CSV is evaluated.
        tune_split: the ``--tune_split`` value.

    Returns:
        None when every job's records have ``tune_split`` and it is not the evaluated split
        (a threshold tuned on the data it is reported on would flatter it); else the reason,
        a clause the report puts after "no F1-tuned thresholds:".
    """
    if not tune_split:
        return "--tune_split was empty, so no threshold was tuned"
    if split is not None and tune_split == split:
        return (f"--tune_split={tune_split} is the evaluated split; a threshold tuned on the data it is reported "
                "on would flatter it, so none was tuned")
    for j in jobs:
        try:
            manifest = read_manifest(j.cfg.records_dir)
        except ConfigError:
            return (f"the records of {j.job_dir} ({j.cfg.records_dir}) are not on this machine, so there was no "
                    f"'{tune_split}' split to tune on")
        if tune_split not in manifest.splits:
            hint = " (build_records --holdout_fraction makes one)" if tune_split == "holdout" else ""
            return (f"there was no '{tune_split}' split to tune on: the records in {j.cfg.records_dir} have only "
                    f"{', '.join(sorted(manifest.splits))}{hint}")
    return None


# --- The job ---------------------------------------------------------------------------------


def _folder_tag(folder: str) -> str:
    """``NAME-DIGEST``: a folder's name and 8 hex digits of its absolute path, so two
    folders of the same name never share a report folder."""
    full = folder if storage.is_remote(folder) else os.path.abspath(folder)
    return f"{os.path.basename(full.rstrip('/')) or 'root'}-{hashlib.sha1(full.encode()).hexdigest()[:8]}"


def default_report_dir(job_dirs: list[str], split: str | None, csv_path: str | None, tta: bool, views: str,
                       level: str, records_dir: str | None = None, dataset_format: str | None = None,
                       dataset_folder: str | None = None) -> str:
    """``JOB_DIR/eval-...`` named by everything that changes the numbers, so that one
    evaluation never replaces another's report: the split (or ``csv-<name>``, or
    ``<format>-<folder>-<split|all>`` for a dataset folder, ``records-<folder>-<split>`` for
    another records folder), and any of image level, all views, TTA, and an ensemble (a
    digest of its member folders)."""
    if dataset_format:
        what = f"{dataset_format}-{_folder_tag(dataset_folder)}-{split or ALL_ROWS}"
    elif csv_path:
        what = f"csv-{os.path.splitext(os.path.basename(csv_path))[0]}"
    elif records_dir:
        what = f"records-{_folder_tag(records_dir)}-{split}"
    else:
        what = split
    parts = ["eval", what]
    parts += ["image"] * (level == "image") + ["allviews"] * (views == "all") + ["tta"] * bool(tta)
    if len(job_dirs) > 1:
        members = "\n".join(sorted(os.path.abspath(d) for d in job_dirs)).encode()
        parts.append(f"ensemble{len(job_dirs)}-{hashlib.sha1(members).hexdigest()[:8]}")
    return os.path.join(job_dirs[0], "-".join(parts))


def threshold_warning(datasets: list[str], tune_split: str | None) -> str:
    """The sentence that thresholds chosen on the job's own data may not carry over."""
    names = " and ".join(DATASET_NAMES.get(d, d) for d in datasets)
    tuned = (f"the F1-tuned ones on split {tune_split} of the job's own records" if tune_split
             else "no threshold was tuned")
    return (f"Thresholds were not chosen on {names}: the fixed one is the job's, {tuned}. A threshold that suits "
            "one site's images, scanners, prevalence and label source often does not suit another's, so read F1, "
            "sensitivity, specificity, PPV and NPV here as what those thresholds would do on this data, not as "
            "tuned results; AUROC does not depend on a threshold.")


def trained_formats(jobs: list) -> list[str] | None:
    """The datasets the jobs' records were built from (``chexpert``, ``nih``, ``mimic``:
    their manifest's ``format`` option; CheXpert where absent), sorted; None when some job's
    records are not on this machine."""
    out = set()
    for j in jobs:
        try:
            out.add(read_manifest(j.cfg.records_dir).options.get("format", sources.CHEXPERT))
        except ConfigError:
            return None
    return sorted(out)


def external_summary(tasks: list[str], results: dict, absent: dict[str, str], source: dict, datasets: list[str],
                     dead: list[dict], tune_split: str | None, trained: list[str] | None = None) -> dict:
    """metrics.json's ``external`` part: which of the model's tasks the dataset labels, the
    AUROC with its CI for those, why each other one has none, the dead letters, and the
    warning on thresholds.

    Args:
        tasks: the evaluated model tasks.
        results: ``report.compute``'s output (the scored tasks only).
        absent: ``not_labelled``'s tasks no evaluated dataset labels, with the reason.
        source: ``describe_source``'s description.
        datasets: the datasets of the evaluated rows, sorted.
        dead: rows and images that could not be read (``{"source", "row", "path", "reason",
            "detail"}``).
        tune_split: the split thresholds were tuned on, or None.
        trained: ``trained_formats`` of the jobs (None: unknown).

    Returns:
        ``datasets`` and their ``dataset_names``, ``trained_on`` (the training datasets, or
        None), ``external`` (False only when every evaluated dataset is one the model was
        trained on), ``labelled_tasks``, ``scored_tasks``, ``unscored`` ({task: reason}),
        ``tasks`` (per task: ``labelled``, ``scored``, AUROC with CI and counts, ``reason``),
        ``rows`` (a dataset folder's selection), ``dead_letters`` (``count``,
        ``by_reason``, ``rows``) and ``threshold_warning``.
    """
    per_task = {}
    for task in tasks:
        if task in absent:
            per_task[task] = {"labelled": False, "scored": False, "reason": absent[task]}
            continue
        r = results["tasks"][task]
        reason = r["missing"].get("auroc")
        per_task[task] = {"labelled": True, "scored": reason is None, "auroc": r["auroc"],
                          "auroc_ci95": r["auroc_ci95"], "positives": r["positives"], "negatives": r["negatives"]}
        if reason:
            per_task[task]["reason"] = reason
    by_reason = collections.Counter(d["reason"] for d in dead)
    return {"datasets": datasets, "dataset_names": [DATASET_NAMES.get(d, d) for d in datasets],
            "trained_on": trained, "external": trained is None or not set(datasets) <= set(trained),
            "labelled_tasks": [t for t in tasks if t not in absent],
            "scored_tasks": [t for t in tasks if per_task[t]["scored"]],
            "unscored": {t: v["reason"] for t, v in per_task.items() if not v["scored"]},
            "tasks": per_task,
            "rows": ({"rule": source["rule"], "split": source["split"], **source["counts"]}
                     if source["kind"] == "dataset" else None),
            "dead_letters": {"count": len(dead), "by_reason": dict(sorted(by_reason.items())), "rows": dead},
            "threshold_warning": threshold_warning(datasets, tune_split)}


def run(job_dirs: list[str], *, split: str | None = None, csv_path: str | None = None,
        image_root: str | None = None, input_dir: str | None = None, dataset_format: str | None = None,
        records_dir: str | None = None, tune_split: str = "holdout", tta: bool = False, views: str = "frontal",
        level: str = "study", n_boot: int = 1000, seed: int = 0, threshold: float | None = None,
        report_dir: str | None = None, skip_corrupt: bool = False) -> dict:
    """Evaluates and writes the report.

    Args:
        job_dirs: one job folder, or several for an ensemble (probabilities averaged).
        split: the records split to evaluate (default ``valid``); with ``input_dir``, the
            dataset's official split (``select_rows``; default its test split, else every row).
        csv_path: a CheXpert-format CSV to evaluate instead of records; an NIH or MIMIC label
            file stands for its folder (``input_dir``).
        image_root: folder the CSV's Path column is relative to (default: the CSV's folder).
        input_dir: a dataset folder (CheXpert, NIH, MIMIC) whose images are evaluated directly.
        dataset_format: ``chexpert``, ``nih`` or ``mimic`` for ``input_dir`` (default: detected).
        records_dir: records (build_records' output, any dataset) to evaluate instead of the
            jobs' own.
        tune_split: split of the jobs' own records the F1 thresholds are tuned on ('' for none).
        tta, views, level, n_boot, seed, threshold, skip_corrupt: as the flags of the same names.
        report_dir: where the report goes (default: ``default_report_dir``).

    Returns:
        metrics.json's content: the run's description (``source``, ``provenance``,
        ``synthetic``, ``warnings``, ``notes``, ``missing``: why any number is absent, ...),
        the results (``tasks``, ``mean_auroc``, ...) and, when any evaluated row comes from
        another dataset than CheXpert, ``external`` (``external_summary``).

    Raises:
        ConfigError: more than one source given, or a dataset folder or split that cannot be read.
    """
    if sum(bool(x) for x in (csv_path, input_dir, records_dir)) > 1:
        raise ConfigError("give at most one of --csv, --input_dir and --records_dir")
    if csv_path and label_file_folder(csv_path):
        csv_path, input_dir = None, label_file_folder(csv_path)
    dataset = None
    if input_dir:
        dataset = datasets.find_dataset(input_dir, dataset_format)
        if dataset is None:  # a CheXpert folder: its CSV, read as --csv reads one
            if dataset_format not in (None, sources.CHEXPERT):
                raise ConfigError(f"--input_dir={input_dir}: a CheXpert folder, not --format {dataset_format}")
            csv_path, image_root = chexpert_csv(input_dir, split)
    asked_split, split = split, split or "valid"
    if dataset is None:  # records or a CheXpert CSV: --split validate is their valid, as a MIMIC folder's is
        split = RECORDS_SPLIT_ALIASES.get(split, split)
    jobs = [load_member(d) for d in job_dirs]
    threshold_from = "--threshold" if threshold is not None else (
        "the job's --threshold" if len(jobs) == 1 else "the first member's --threshold")
    threshold = threshold if threshold is not None else jobs[0].job.spec.threshold  # what every scorer reads
    failed: list[dict] = []
    skipped: dict[str, str] = {}
    selection = None
    if dataset is not None:
        selection = select_rows(dataset, asked_split, views)
        per_job = []
        for j in jobs:
            preds, failed = predict_dataset(j.job, dataset, selection, tta)
            per_job.append(preds)
        failed = selection.rejects + failed
    elif csv_path:
        image_root = image_root or os.path.dirname(csv_path)
        per_job = []
        for j in jobs:
            preds, failed = predict_csv(j.job, csv_path, image_root, views, tta)
            per_job.append(preds)
    else:
        per_job = [predict_records(j, split, views, tta, skip_corrupt, skipped, records_dir) for j in jobs]
    source = describe_source(jobs, split, csv_path, image_root, records_dir, dataset, selection)
    tasks, preds = ensemble(per_job)
    scored = aggregate(preds, tasks, level)
    absent, partly = not_labelled(preds, tasks, level)
    own_split = None if (csv_path or dataset is not None or not source.get("own", True)) else split
    tune_note = tuning_plan(jobs, own_split, tune_split)
    tuned = {}
    if tune_note is None:
        _, tune_preds = ensemble([predict_records(j, tune_split, views, tta, skip_corrupt, skipped) for j in jobs])
        for task, (y, p) in aggregate(tune_preds, tasks, level).items():
            tuned[task] = m.best_f1_threshold(y, p)
    results = report.compute(scored, tuned, threshold, n_boot, seed, tune_split=tune_split if tune_note is None else None,
                      level=level)
    provenance = job_provenance(jobs)
    evaluated = sorted({_dataset_of(r) for r in preds.values()}) or (
        [dataset.format] if dataset is not None else [sources.CHEXPERT])
    meta = {"jobs": job_dirs, "split": None if (csv_path or dataset is not None) else split, "source": source,
            "level": level, "views": views, "tta": tta, "threshold": threshold, "threshold_from": threshold_from,
            "tune_split": tune_split if tune_note is None else None, "tune_note": tune_note,
            "policy": dict(jobs[0].cfg.policy), "images": len(preds),
            "studies": len({(_dataset_of(r), r["study"]) for r in preds.values()}), "unreadable": failed,
            "skipped_shards": skipped, "tuned_thresholds": tuned, "bootstrap": n_boot, "seed": seed,
            "provenance": provenance, "synthetic": any_synthetic(provenance),
            "warnings": warnings_for(source, provenance),
            "notes": context_notes(jobs, source, tasks, per_job, preds) + partly}
    if dataset is not None or evaluated != [sources.CHEXPERT]:
        meta["external"] = external_summary(tasks, results, absent, source, evaluated, failed, meta["tune_split"],
                                            trained_formats(jobs))
    meta["missing"] = report.missing_notes(results, meta)
    for w in meta["warnings"]:
        log.warning("%s", w)
    report_dir = report_dir or default_report_dir(
        job_dirs, selection.split if selection else split, csv_path, tta, views, level, records_dir,
        dataset.format if dataset is not None else None, dataset.folder if dataset is not None else None)
    os.makedirs(report_dir, exist_ok=True)
    pngs = report_plots.plots(scored, results, meta)
    for name, data in pngs.items():
        with open(os.path.join(report_dir, name), "wb") as f:
            f.write(data)
    with open(os.path.join(report_dir, "report.md"), "w") as f:
        f.write(report.report_markdown(results, meta, list(pngs)))
    with open(os.path.join(report_dir, "report.html"), "w") as f:
        f.write(report.report_html(results, meta, pngs))
    out = {**meta, **results, "report_dir": report_dir}
    report.write_metrics(os.path.join(report_dir, "metrics.json"), out)
    with open(os.path.join(report_dir, "predictions.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "study"] + [f"p_{t}" for t in tasks] + [f"label_{t}" for t in tasks])
        for path, r in sorted(preds.items()):
            w.writerow([path, r["study"]] + [repr(float(r["probs"][t])) for t in tasks] + [r["raw"][t] for t in tasks])
    return out


def main(argv) -> int:
    del argv
    logging.getLogger("trainer").setLevel(logging.INFO)
    if not FLAGS.job_dir:
        print("trainer.evaluate: error: --job_dir is required", file=sys.stderr)
        return 2
    if FLAGS.csv and not os.path.exists(FLAGS.csv):
        print(f"trainer.evaluate: error: --csv={FLAGS.csv}: no such file", file=sys.stderr)
        return 2
    for name in ("input_dir", "records_dir"):
        if FLAGS[name].value and not storage.is_remote(FLAGS[name].value) and not os.path.isdir(FLAGS[name].value):
            print(f"trainer.evaluate: error: --{name}={FLAGS[name].value}: no such folder", file=sys.stderr)
            return 2
    try:
        # --split's default (valid) is the records'; a dataset folder's default is its test split.
        out = run(FLAGS.job_dir, split=FLAGS.split if FLAGS["split"].present else None, csv_path=FLAGS.csv,
                  image_root=FLAGS.image_root, input_dir=FLAGS.input_dir, dataset_format=FLAGS.format,
                  records_dir=FLAGS.records_dir, tune_split=FLAGS.tune_split, tta=FLAGS.tta, views=FLAGS.views,
                  level=FLAGS.level, n_boot=FLAGS.bootstrap, seed=FLAGS.seed, threshold=FLAGS.threshold,
                  report_dir=FLAGS.report_dir, skip_corrupt=FLAGS.skip_corrupt)
    except (job_lib.JobError, input_lib.CorruptShardError, ValueError) as e:
        print(f"trainer.evaluate: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # one line, not a traceback (--verbose shows it)
        return cli.unexpected("trainer.evaluate", e, FLAGS.verbose)
    # The terminal gets the header and the results (markdown reads well as plain text); the
    # confusion counts, bins and plots are in the files.
    print(report.render_markdown(report.header_blocks(out) + report.external_blocks(out, out)
                                 + report.results_blocks(out, out)))
    print(f"report in {out['report_dir']}/report.html")
    return 0


if __name__ == "__main__":
    app.run(main)
