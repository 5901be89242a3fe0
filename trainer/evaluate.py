r"""Evaluates one model or an ensemble the way the CheXpert paper did, with a report.

    python -m trainer.evaluate --job_dir jobs/atelectasis
    python -m trainer.evaluate --job_dir jobs/a --job_dir jobs/b --tta     # ensemble + TTA
    python -m trainer.evaluate --job_dir jobs/a --csv /data/CheXpert-v1.0-small/valid.csv \
        --image_root /data

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
"""

from __future__ import annotations

import base64
import collections
import csv
import dataclasses
import hashlib
import html
import io
import itertools
import json
import logging
import os
import re
import sys

from absl import app, flags

from core import cli
from trainer import startup

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Declares the command-line flags; called only when run as a program, so importing this
    module as a library (tests, other entry points) declares nothing."""
    flags.DEFINE_multi_string("job_dir", None, "A trainer.task job folder; repeat for an ensemble (probabilities averaged).")
    flags.DEFINE_string("split", "valid", "Split of the job's records to evaluate.")
    flags.DEFINE_string("csv", None, "Evaluate a CheXpert-format CSV instead of records (with --image_root).")
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


if __name__ == "__main__":  # flags first, then TensorFlow, quietly (trainer/startup.py)
    define_flags()
    startup.begin(sys.argv)

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.lines  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from core import csv_reader  # noqa: E402
from pipeline import make_sample  # noqa: E402
from schemas import chexpert  # noqa: E402
from trainer import inference  # noqa: E402
from trainer import input as input_lib  # noqa: E402
from trainer import metrics as m  # noqa: E402
from trainer.config import ConfigError, provenance_line, read_manifest  # noqa: E402

log = logging.getLogger(__name__)

# CheXpert paper (Irvin et al. 2019), validation AUROC of the best policy per task.
PAPER_AUROC = {"atelectasis": 0.858, "cardiomegaly": 0.854, "consolidation": 0.939, "edema": 0.941,
               "pleural_effusion": 0.936}
PAPER_POLICY = {"atelectasis": "ones", "cardiomegaly": "multiclass", "consolidation": "self_trained",
                "edema": "ones", "pleural_effusion": "multiclass"}

# --- Predictions ---------------------------------------------------------------------------


def _tta_transforms(size: int) -> np.ndarray:
    """Projective transforms (4, 8): identity, shift right/left 3%, zoom 1.05 about the centre."""
    s = 0.03 * size
    c = (size - 1) / 2.0
    z = 1 / 1.05
    return np.array([[1, 0, 0, 0, 1, 0, 0, 0], [1, 0, -s, 0, 1, 0, 0, 0], [1, 0, s, 0, 1, 0, 0, 0],
                     [z, 0, c - z * c, 0, z, c - z * c, 0, 0]], np.float32)


def _predict_images(job, images: np.ndarray, tta: bool) -> np.ndarray:
    if not tta:
        return inference.predict_batch(job, images)
    outs = []
    x = tf.cast(images, tf.float32)
    for t in _tta_transforms(job.cfg.image_size):
        moved = tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=tf.tile(t[None], [len(images), 1]), output_shape=tf.shape(x)[1:3], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="CONSTANT")
        outs.append(inference.predict_batch(job, tf.cast(tf.clip_by_value(tf.round(moved), 0, 255), tf.uint8)))
    return np.mean(outs, axis=0)


def predict_records(job, split: str, views: str, tta: bool, skip_corrupt: bool = False,
                    skipped: dict | None = None) -> dict:
    """Predictions of one job on a split of its own records, keyed by source path.

    A corrupt shard raises ``input.CorruptShardError`` naming it; with ``skip_corrupt`` it is
    left out and recorded in ``skipped``.
    """
    cfg = dataclasses.replace(job.cfg, views=views)
    manifest = read_manifest(cfg.records_dir)
    files = input_lib.shard_files(cfg.records_dir, split, manifest)
    if skip_corrupt:
        files, bad = input_lib.drop_corrupt(files)
        if skipped is not None:
            skipped.update(bad)
    out = {}
    dataset = input_lib.make_dataset(files, cfg, training=False, batch_size=64)
    for batch in input_lib.checked(dataset, files):
        probs = _predict_images(job, batch["image"].numpy(), tta)
        for path, study, raw, p in zip(batch["path"].numpy(), batch["study"].numpy(), batch["raw"].numpy(), probs):
            out[path.decode()] = {"study": study.decode(), "raw": dict(zip(job.tasks, raw.tolist())),
                                  "probs": dict(zip(job.tasks, p.tolist()))}
    return out


def predict_csv(job, csv_path: str, image_root: str, views: str, tta: bool) -> tuple[dict, list[dict]]:
    """Predictions of one job on a CheXpert-format CSV; unreadable rows are returned apart."""
    out, failed, batch = {}, [], []

    def flush():
        if not batch:
            return
        probs = _predict_images(job, np.stack([b[2] for b in batch]), tta)
        for (row, _, _), p in zip(batch, probs):
            raw = {t: row.codes[chexpert.OBSERVATION_INDEX[t]] for t in job.tasks}
            out[row.path] = {"study": row.study_id, "raw": raw, "probs": dict(zip(job.tasks, p.tolist()))}
        batch.clear()

    with open(csv_path, "rb") as f:
        for item in csv_reader.read_csv_rows(f, os.path.basename(csv_path)):
            if isinstance(item, csv_reader.Reject):
                failed.append(item.to_dict())
                continue
            try:
                row = chexpert.parse_row(item.cells)
                if views == "frontal" and row.view != "frontal":
                    continue
                with open(os.path.join(image_root, row.path), "rb") as img:
                    data = img.read()
                batch.append((row, item.line, inference.model_input(data, row.path, job.cfg)))
            except chexpert.RowError as e:
                failed.append({"row": item.line, "path": item.cells.get("Path"), "reason": e.reason,
                               "detail": e.detail})
            except OSError as e:
                failed.append({"row": item.line, "path": item.cells.get("Path"), "reason": "missing_file",
                               "detail": str(e)})
            if len(batch) == 64:
                flush()
    flush()
    return out, failed


def ensemble(per_job: list[dict]) -> tuple[list[str], dict]:
    """Averages the jobs' probabilities over the images and tasks they all have."""
    tasks = [t for t in chexpert.OBSERVATIONS if all(t in next(iter(p.values()))["probs"] for p in per_job if p)]
    paths = sorted(set.intersection(*(set(p) for p in per_job)))
    merged = {}
    for path in paths:
        first = per_job[0][path]
        merged[path] = {"study": first["study"], "raw": {t: first["raw"][t] for t in tasks},
                        "probs": {t: float(np.mean([p[path]["probs"][t] for p in per_job])) for t in tasks}}
    return tasks, merged


def aggregate(preds: dict, tasks: list[str], level: str) -> dict:
    """{task: (y (n,), p (n,))} over studies (max probability) or images; uncertain labels
    are left out, blank counts as negative."""
    groups = collections.defaultdict(list)
    for path, r in preds.items():
        groups[r["study"] if level == "study" else path].append(r)
    out = {}
    for task in tasks:
        ys, ps = [], []
        for items in groups.values():
            code = items[0]["raw"][task]
            if code == int(chexpert.Code.UNCERTAIN):
                continue
            ys.append(int(code == int(chexpert.Code.POSITIVE)))
            ps.append(max(r["probs"][task] for r in items))
        out[task] = (np.array(ys), np.array(ps))
    return out


# --- What was evaluated, by what -------------------------------------------------------------


def describe_source(jobs: list, split: str, csv_path: str | None, image_root: str | None) -> dict:
    """What the predictions were made on, for the report header and metrics.json.

    Args:
        jobs: the loaded jobs (``inference.Job``).
        split: the records split evaluated (ignored with ``csv_path``).
        csv_path: the CSV evaluated instead of records, or None.
        image_root: the folder the CSV's paths are relative to (default: the CSV's folder).

    Returns:
        For records: ``{"kind": "records", "split", "records": [{"records_dir", "snapshot",
        "created", "synthetic"}]}``, one entry per distinct records folder of the jobs (each
        member of an ensemble reads its own). For a CSV: ``{"kind": "csv", "csv",
        "image_root", "synthetic"}``; ``synthetic`` is True when ``pipeline.make_sample``'s
        answer key lies beside the images, as build_records decides it.
    """
    if csv_path:
        root = os.path.abspath(image_root or os.path.dirname(csv_path))
        return {"kind": "csv", "csv": os.path.abspath(csv_path), "image_root": root,
                "synthetic": os.path.exists(os.path.join(root, make_sample.TRUTH_FILE))}
    folders = []
    for records_dir in dict.fromkeys(j.cfg.records_dir for j in jobs):
        manifest = read_manifest(records_dir)
        folders.append({"records_dir": os.path.abspath(records_dir), "snapshot": manifest.snapshot or None,
                        "created": manifest.created or None, "synthetic": manifest.synthetic})
    return {"kind": "records", "split": split, "records": folders}


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
        out.append(f"Trained on SYNTHETIC data: {who} trained on synthetic records made by pipeline.make_sample. "
                   "These numbers say nothing about how a model reads real radiographs.")
    unknown = [p["job_dir"] for p in provenance if p["synthetic"] is None]
    if unknown:
        out.append(f"Training data unknown for {', '.join(unknown)} (a job from before provenance was recorded): "
                   "it may have been trained on synthetic data; check before trusting these numbers.")
    evaluated_synthetic = (source["synthetic"] if source["kind"] == "csv"
                           else any(r["synthetic"] for r in source["records"]))
    if evaluated_synthetic:
        out.append("Evaluated on SYNTHETIC data: the images and labels scored here were made by "
                   "pipeline.make_sample, not taken from patients.")
    return out


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
    if source["kind"] == "records":
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
        if source["kind"] == "records" and source["split"] == j.cfg.eval_split:
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


# --- Metrics ---------------------------------------------------------------------------------


PLURAL = {"study": "studies", "image": "images"}


def _thr(t: float) -> str:
    """A threshold as people write it: 0.35, 0.412."""
    return f"{t:.3g}"


def _undefined_at(op: dict, name: str, unit: str) -> str | None:
    """One sentence naming each NaN rate at an operating point and why it is undefined."""
    t, units = _thr(op["threshold"]), PLURAL[unit]
    why = {"F1": ("f1", f"no positive {units} and none called positive"),
           "accuracy": ("accuracy", f"no {units}"),
           "sensitivity": ("sensitivity", f"no positive {units}"),
           "specificity": ("specificity", f"no negative {units}"),
           "PPV": ("ppv", f"no {unit} scored at or above {t}"),
           "NPV": ("npv", f"no {unit} scored below {t}")}
    undefined = [(label, reason) for label, (key, reason) in why.items() if np.isnan(op[key])]
    if not undefined:
        return None
    if len(undefined) == 1:
        return f"at {name} {t}, {undefined[0][0]} is undefined: {undefined[0][1]}"
    return f"at {name} {t}, these are undefined: " + "; ".join(f"{label} ({reason})" for label, reason in undefined)


def _missing(r: dict, n_boot: int, tuned: float | None, tune_split: str | None, unit: str) -> dict[str, str]:
    """{metric: sentence} for the metrics of one task that could not be computed.

    The tuned-threshold entry appears only for a task-specific reason; when nothing was
    tuned at all the report gives the run's reason once (``meta["tune_note"]``).
    """
    pos, neg, why, units = r["positives"], r["negatives"], {}, PLURAL[unit]
    if pos + neg == 0:
        return {"auroc": f"no evaluated {unit} has a certain label for it (all uncertain), so nothing was scored"}
    if pos == 0:
        why["auroc"] = (f"no positive {units} in the evaluated set, so AUROC, its CI and AUPRC are undefined and "
                        "there are no ROC or precision-recall curves")
    elif neg == 0:
        why["auroc"] = (f"no negative {units} in the evaluated set, so AUROC and its CI are undefined and there are "
                        "no ROC or precision-recall curves")
    elif any(np.isnan(v) for v in r["auroc_ci95"]):
        why["auroc_ci95"] = ("--bootstrap 0, so no CI was computed" if n_boot == 0 else
                             "every bootstrap resample held one class only, so there is no CI")
    for key, name in (("at_threshold", "the threshold"), ("at_tuned_threshold", "the F1-tuned threshold")):
        sentence = _undefined_at(r[key], name, unit) if key in r else None
        if sentence:
            why[key] = sentence
    if tuned is not None and np.isnan(tuned):
        why["at_tuned_threshold"] = (f"the '{tune_split}' split has no positive {units} for it, so no "
                                     "F1-maximising threshold exists")
    return why


def compute(scored: dict, tuned: dict, threshold: float, n_boot: int, seed: int, *,
            tune_split: str | None = None, level: str = "study") -> dict:
    """Per-task metrics, with the reason for each one that could not be computed.

    Args:
        scored: ``{task: (y, p)}`` from ``aggregate``.
        tuned: ``{task: threshold}`` tuned on ``tune_split``; NaN where it could not be.
        threshold: the fixed operating threshold.
        n_boot: bootstrap resamples of the AUROC CI.
        seed: bootstrap seed.
        tune_split: the split ``tuned`` came from, named in the reasons.
        level: ``study`` or ``image``, what ``scored`` counts (named in the reasons).

    Returns:
        ``{"tasks": {task: {"auroc", "auroc_ci95", "auprc", "positives", "negatives",
        "at_threshold", "at_tuned_threshold" (when tuned), "calibration", "paper_auroc",
        "missing": {metric: reason}}}, "mean_auroc", "mean_auroc_competition"}``.
    """
    tasks = {}
    for task, (y, p) in scored.items():
        lo, hi = m.bootstrap_auroc_ci(y, p, n=n_boot, seed=seed)
        r = {"auroc": m.auroc(y, p), "auroc_ci95": [lo, hi], "auprc": m.auprc(y, p), "positives": int(y.sum()),
             "negatives": int(len(y) - y.sum()), "at_threshold": m.at_threshold(y, p, threshold),
             "calibration": m.calibration(y, p), "paper_auroc": PAPER_AUROC.get(task)}
        if task in tuned and not np.isnan(tuned[task]):
            r["at_tuned_threshold"] = m.at_threshold(y, p, tuned[task])
        r["missing"] = _missing(r, n_boot, tuned.get(task), tune_split, level)
        tasks[task] = r
    competition = [tasks[t]["auroc"] for t in chexpert.COMPETITION_TASKS if t in tasks]
    return {"tasks": tasks, "mean_auroc": m.nanmean(r["auroc"] for r in tasks.values()),
            "mean_auroc_competition": m.nanmean(competition) if competition else None}


def missing_notes(results: dict, meta: dict) -> list[str]:
    """One sentence for every number the report leaves empty, saying why."""
    notes = []
    if meta["tune_note"]:
        notes.append(f"F1-tuned threshold columns are empty: {meta['tune_note']}.")
    for task, r in results["tasks"].items():
        notes += [f"{task}: {reason}." for reason in r["missing"].values()]
    unreported = [t for t, r in results["tasks"].items() if r["paper_auroc"] is None]
    if unreported:
        notes.append(f"Paper AUROC is empty for {', '.join(unreported)}: the CheXpert paper reports AUROC for its "
                     f"five competition tasks only ({', '.join(chexpert.COMPETITION_TASKS)}).")
    if results["tasks"] and results["mean_auroc_competition"] is None:
        notes.append("No mean AUROC over the competition tasks: none of them was evaluated.")
    return notes


# --- Plots -----------------------------------------------------------------------------------

# Big enough to read at a report's full width without zooming; the same in every figure.
_PLOT_STYLE = {"font.size": 11, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 10,
               "xtick.labelsize": 10, "ytick.labelsize": 10, "figure.titlesize": 15}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _curves_figure(task: str, y: np.ndarray, p: np.ndarray, r: dict, meta: dict) -> bytes:
    """ROC and precision-recall of one task with both operating points."""
    unit = meta["level"]
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(13, 6.4))
    c = m.curves(y, p)
    lo, hi = r["auroc_ci95"]
    ci = "" if np.isnan(lo) else f" [95% CI {lo:.2f}–{hi:.2f}]"
    roc.plot(c["fpr"], c["tpr"], lw=2, color="C0", label=f"AUROC {r['auroc']:.2f}{ci}")
    roc.plot([0, 1], [0, 1], ls=":", color="gray", label="chance (AUROC 0.50)")
    # Average precision sums (R_n - R_{n-1}) P_n: only thresholds that add a positive count, and
    # P_n holds over recall (R_{n-1}, R_n]. Drawn so, the area under the step line is exactly the
    # AUPRC in the legend, without the saw-teeth of thresholds that only add false positives.
    gain = np.diff(np.r_[0.0, c["recall"]]) > 0
    recall, precision = c["recall"][gain], c["precision"][gain]
    pr.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="pre", lw=2, color="C0",
            label=f"AUPRC {r['auprc']:.2f} (area under the step line)")
    prevalence = float(np.mean(y))
    pr.axhline(prevalence, ls=":", color="gray", label=f"chance (prevalence {prevalence:.2f})")
    points = (("at_threshold", "o", "C3", "threshold {t}"),
              ("at_tuned_threshold", "s", "C2", "F1-tuned threshold {t} (" + str(meta["tune_split"]) + ")"))
    for key, marker, colour, name in points:
        op = r.get(key)
        if not op:
            continue
        name = name.format(t=_thr(op["threshold"]))
        style = dict(marker=marker, color=colour, ms=11, ls="none", mec="black", zorder=3)
        if not np.isnan(op["specificity"]):
            roc.plot(1 - op["specificity"], op["sensitivity"], **style,
                     label=f"{name}: sensitivity {op['sensitivity']:.2f}, specificity {op['specificity']:.2f}")
        if not np.isnan(op["ppv"]):
            pr.plot(op["sensitivity"], op["ppv"], **style,
                    label=f"{name}: recall {op['sensitivity']:.2f}, precision {op['ppv']:.2f}")
    roc.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal", title="ROC",
            xlabel="1 − specificity (false positive rate)", ylabel="sensitivity (true positive rate)")
    pr.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal", title="Precision–recall",
           xlabel="recall (sensitivity)", ylabel="precision (PPV)")
    for ax in (roc, pr):
        ax.grid(alpha=0.3)
        # Below the axes: a legend inside can hide the very part of the curve that matters.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    fig.suptitle(f"{task}: {len(y)} {PLURAL[unit]} ({r['positives']} positive, {r['negatives']} negative)")
    out = _png(fig)
    plt.close(fig)
    return out


def _reliability_figure(results: dict, meta: dict) -> bytes:
    """One panel per task: observed frequency per probability bin with its Wilson 95% CI and
    count, bins under ``metrics.SPARSE_BIN`` hollow; below it the count of every bin."""
    unit = meta["level"]
    tasks = list(results["tasks"])
    ncols = min(3, len(tasks))
    nrows = -(-len(tasks) // ncols)
    height = 6.6 * nrows
    fig = plt.figure(figsize=(5.4 * ncols, height))
    # Margins in inches, not fractions, so one row and five rows leave the same room for the
    # title above and the legend below.
    outer = fig.add_gridspec(nrows, ncols, hspace=0.25, wspace=0.3, top=1 - 0.8 / height, bottom=1.4 / height)
    for i, task in enumerate(tasks):
        # Each task's count panel sits right under its curve, sharing the probability axis.
        inner = outer[divmod(i, ncols)].subgridspec(2, 1, height_ratios=[3, 1.1], hspace=0.08)
        ax = fig.add_subplot(inner[0])
        hist = fig.add_subplot(inner[1], sharex=ax)
        cal = results["tasks"][task]["calibration"]
        ax.plot([0, 1], [0, 1], ls=":", color="gray")
        curve = cal["curve"]
        if curve:
            ax.plot([b["confidence"] for b in curve], [b["observed"] for b in curve], color="C0", alpha=0.4)
        for j, b in enumerate(curve):
            lo, hi = b["observed_ci95"]
            # Clipped at 0: float rounding must not make a negative error bar (matplotlib refuses one).
            yerr = [[max(0.0, b["observed"] - lo)], [max(0.0, hi - b["observed"])]]
            ax.errorbar(b["confidence"], b["observed"], yerr=yerr,
                        marker="o", ms=8, color="C1" if b["sparse"] else "C0", capsize=3,
                        mfc="white" if b["sparse"] else "C0", ls="none", zorder=3)
            if b["sparse"]:
                # Only the few-study bins are labelled here (every count is in the panel below):
                # labels on every point overlap. Kept inside the axes near the top and right
                # edges, and staggered so neighbouring sparse bins do not print over each other.
                dx = -34 if b["confidence"] > 0.85 else 7
                dy = -13 if b["observed"] > 0.9 or (j % 2 and b["observed"] >= 0.1) else 5
                ax.annotate(f"n={b['count']}", (b["confidence"], b["observed"]), xytext=(dx, dy),
                            textcoords="offset points", fontsize=9, color="C1")
        ax.set(xlim=(0, 1), ylim=(-0.03, 1.03), ylabel="observed fraction positive",
               title=f"{task}: ECE {cal['ece']:.3f}, {cal['n']} {PLURAL[unit]}")
        ax.grid(alpha=0.3)
        ax.tick_params(labelbottom=False)
        edges = np.linspace(0, 1, cal["bins"] + 1)
        colours = ["C1" if 0 < n < m.SPARSE_BIN else "C0" for n in cal["counts"]]
        bars = hist.bar((edges[:-1] + edges[1:]) / 2, cal["counts"], width=0.9 / cal["bins"], color=colours)
        hist.bar_label(bars, labels=[str(n) if n else "" for n in cal["counts"]], fontsize=9, padding=1)
        hist.axhline(m.SPARSE_BIN, ls="--", lw=1, color="gray")
        hist.set(xlabel="predicted probability", ylabel=PLURAL[unit],
                 ylim=(0, max(max(cal["counts"]), m.SPARSE_BIN) * 1.3))
    handles = [
        matplotlib.lines.Line2D([], [], ls=":", color="gray", label="perfect calibration"),
        matplotlib.lines.Line2D([], [], marker="o", color="C0", ls="none", ms=8,
                                label=f"bin with {m.SPARSE_BIN} or more {PLURAL[unit]} (bar: Wilson 95% CI)"),
        matplotlib.lines.Line2D([], [], marker="o", color="C1", mfc="white", ls="none", ms=8,
                                label=f"bin with fewer than {m.SPARSE_BIN} {PLURAL[unit]}: unreliable (n = count)"),
        matplotlib.lines.Line2D([], [], ls="--", color="gray", label=f"{m.SPARSE_BIN} {PLURAL[unit]} (count panels)"),
    ]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False)
    fig.suptitle(f"Reliability: fraction positive against predicted probability, {cal['bins']} equal-width bins",
                 y=1 - 0.2 / height)
    out = _png(fig)
    plt.close(fig)
    return out


def plots(scored: dict, results: dict, meta: dict) -> dict[str, bytes]:
    """The report's figures.

    Args:
        scored: ``{task: (y, p)}`` from ``aggregate``.
        results: ``compute``'s output for the same tasks.
        meta: the run's description (``level`` and ``tune_split`` label the figures).

    Returns:
        PNG bytes by file name: ``curves_TASK.png`` (ROC and precision-recall with the
        operating points) for each task with both classes present, and ``reliability.png``.
    """
    out = {}
    with plt.rc_context(_PLOT_STYLE):
        for task, (y, p) in scored.items():
            if len(y) and y.min() != y.max():
                out[f"curves_{task}.png"] = _curves_figure(task, y, p, results["tasks"][task], meta)
        if results["tasks"]:
            out["reliability.png"] = _reliability_figure(results, meta)
    return out


# --- The report: one list of blocks, rendered to markdown and to HTML -------------------------
#
# Both files are made from the same blocks; the HTML is never parsed back out of the markdown
# (which left backticks and table syntax on the page). Inline text is a tuple of parts.


@dataclasses.dataclass(frozen=True)
class Code:
    """A path, flag or split name: ``code`` in markdown, <code> in HTML."""

    text: str


@dataclasses.dataclass(frozen=True)
class Strong:
    """Emphasised text (a label before its value)."""

    text: str


@dataclasses.dataclass(frozen=True)
class Missing:
    """A number that could not be computed: an em dash, with the reason as the HTML tooltip
    (every reason is also written out under the table)."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Heading:
    """A heading, ``level`` 1 (the title) to 3."""

    level: int
    text: str


@dataclasses.dataclass(frozen=True)
class Para:
    """A paragraph of inline parts; ``warning`` makes it the boxed alert at the top."""

    parts: tuple
    warning: bool = False


@dataclasses.dataclass(frozen=True)
class Items:
    """A bulleted list; each item a tuple of inline parts."""

    items: tuple


@dataclasses.dataclass(frozen=True)
class Table:
    """A table; ``rows`` hold one cell (a part or a tuple of parts) per ``header`` column.

    Columns from ``numeric_from`` on are numbers (right-aligned in HTML). ``groups``, when
    given, is one label per column (``""`` for none) spanning the columns that share it: a
    header row above ``header`` in HTML. Markdown has no such row; it takes
    ``long_header``, names that say the group themselves.
    """

    header: tuple
    rows: tuple
    numeric_from: int = 1
    groups: tuple = ()
    long_header: tuple = ()

    def html_group_row(self) -> str:
        """``<tr>`` of the column groups, each label once over its run of columns."""
        cells = []
        for label, run in itertools.groupby(self.groups):
            span = len(list(run))
            cells.append(f'<th scope="colgroup" colspan="{span}">{html.escape(label)}</th>' if label else
                         f'<td colspan="{span}" class="blank"></td>')
        return f"<tr>{''.join(cells)}</tr>"


@dataclasses.dataclass(frozen=True)
class Figure:
    """A PNG by file name (beside report.md; inlined in report.html) with its caption."""

    name: str
    caption: str


def _parts(cell) -> tuple:
    return cell if isinstance(cell, tuple) else (cell,)


def _num(v, reason: str | None = None):
    """A number with 3 decimals, or a Missing part carrying why it is absent."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return Missing(reason or "not computed")
    return f"{v:.3f}"


def _source_parts(meta: dict) -> tuple:
    src = meta["source"]
    if src["kind"] == "csv":
        return ("the CSV ", Code(src["csv"]), ", image paths relative to ", Code(src["image_root"]))
    parts: list = ["split ", Code(src["split"]), " of the records in "]
    for i, r in enumerate(src["records"]):
        parts += [" and in " if i else "", Code(r["records_dir"]),
                  f" (snapshot {r['snapshot']}, built {str(r['created'])[:10]})"]
    return tuple(p for p in parts if p)


def _title(meta: dict) -> str:
    jobs = meta["jobs"]
    model = f"job {jobs[0]}" if len(jobs) == 1 else f"an ensemble of {len(jobs)} jobs"
    src = meta["source"]
    data = f"the CSV {src['csv']}" if src["kind"] == "csv" else f"split {src['split']} of its records"
    if src["kind"] == "records" and len(jobs) > 1:
        data = f"split {src['split']} of their records"
    return f"Evaluation of {model} on {data}"


def header_blocks(meta: dict) -> list:
    """Title, warnings, what was evaluated and the models with their training data."""
    blocks: list = [Heading(1, _title(meta))]
    blocks += [Para((Strong("WARNING: "), w), warning=True) for w in meta["warnings"]]
    unit = meta["level"]
    views = "frontal" if meta["views"] == "frontal" else "frontal and lateral"
    if unit == "study":
        scored = (f"per study, as in the CheXpert paper: a study's probability is the highest of its {views} "
                  f"images'; {meta['studies']} studies from {meta['images']} images")
    else:
        scored = f"per image; {meta['images']} images"
    tta = ("on: each image's probability is the mean over 4 transforms (identity, shifts of 3% left and right, "
           "1.05 zoom about the centre)" if meta["tta"] else "off")
    jobs = meta["jobs"]
    model = (("one job, ", Code(jobs[0])) if len(jobs) == 1 else
             (f"an ensemble of {len(jobs)} jobs, probabilities averaged per image (members listed below)",))
    if meta["tune_split"]:
        where = "the job's records" if len(jobs) == 1 else "the members' records"
        tuned = ("; per task, the threshold maximising F1 on split ", Code(meta["tune_split"]), f" of {where}"
                 + (" (not the evaluated CSV)" if meta["source"]["kind"] == "csv" else " (not the evaluated split)"))
    else:
        tuned = (f"; no F1-tuned thresholds: {meta['tune_note']}",)
    items = [
        (Strong("Data: "),) + _source_parts(meta),
        (Strong("Scored: "), scored),
        (Strong("Views: "), "frontal only" if meta["views"] == "frontal" else "frontal and lateral"),
        (Strong("Test-time augmentation: "), tta),
        (Strong("Model: "),) + model,
        (Strong("Thresholds: "), f"fixed {_thr(meta['threshold'])} ({meta['threshold_from']})") + tuned,
    ]
    left_out = []
    if meta["unreadable"]:
        left_out.append(f"{len(meta['unreadable'])} CSV rows that could not be read (listed in metrics.json)")
    if meta["skipped_shards"]:
        left_out.append(f"{len(meta['skipped_shards'])} corrupt shards skipped with --skip_corrupt (listed in "
                        "metrics.json)")
    if left_out:
        items.append((Strong("Left out: "), "; ".join(left_out)))
    items += [(Strong("Note: "), n) for n in meta["notes"]]
    blocks += [Heading(2, "What was evaluated"), Items(tuple(items))]
    rows = []
    for p in meta["provenance"]:
        snapshot = p.get("records_snapshot") or Missing("not recorded: a job from before provenance was recorded")
        training = Strong(p["summary"]) if p["synthetic"] else p["summary"]
        rows.append((Code(p["job_dir"]), ", ".join(p["tasks"]), training, snapshot))
    blocks += [Heading(2, "Model" if len(jobs) == 1 else "Ensemble members"),
               Table(("job", "tasks", "training data", "records snapshot"), tuple(rows), numeric_from=99)]
    return blocks


def results_blocks(results: dict, meta: dict) -> list:
    """The per-task metrics table, the means, and why any number is missing."""
    t, units = _thr(meta["threshold"]), PLURAL[meta["level"]]
    rows = []
    for task, r in results["tasks"].items():
        why, a, tt = r["missing"], r["at_threshold"], r.get("at_tuned_threshold", {})
        no_auroc = why.get("auroc")
        no_tuned = why.get("at_tuned_threshold", meta["tune_note"] or "")
        lo, hi = r["auroc_ci95"]
        auroc = (_num(r["auroc"], no_auroc) if np.isnan(lo) else
                 f"{r['auroc']:.3f} [{lo:.3f}–{hi:.3f}]")
        paper = _num(r["paper_auroc"], "the paper reports the five competition tasks only")
        if r["paper_auroc"] is not None and meta["policy"].get(task) != PAPER_POLICY.get(task):
            paper = f"{paper} ({PAPER_POLICY[task]})"
        at = why.get("at_threshold")
        rows.append((task, meta["policy"].get(task, ""), auroc, paper, _num(r["auprc"], no_auroc),
                     _num(a["f1"], at), _num(a["accuracy"], at), _num(a["sensitivity"], at),
                     _num(a["specificity"], at), _num(a["ppv"], at), _num(a["npv"], at),
                     _num(tt.get("threshold"), no_tuned), _num(tt.get("f1"), no_tuned),
                     _num(r["calibration"]["ece"]), f"{r['positives']} / {r['negatives']}"))
    header = ("task", "policy", "AUROC [95% CI]", "paper AUROC", "AUPRC", "F1", "accuracy", "sensitivity",
              "specificity", "PPV", "NPV", "threshold", "F1", "ECE", "pos / neg")
    groups = ("",) * 5 + (f"at threshold {t}",) * 6 + ("at the F1-tuned threshold",) * 2 + ("",) * 2
    long_header = header[:5] + tuple(f"{h} at {t}" for h in header[5:11]) + (
        "F1-tuned threshold", "F1 at tuned threshold") + header[13:]
    defined = sum(not np.isnan(r["auroc"]) for r in results["tasks"].values())
    means = (f"Mean AUROC over the {defined} task{'s' if defined != 1 else ''} with an AUROC: "
             f"{_fmt(results['mean_auroc'])}.")
    if defined < len(results["tasks"]):
        means = means[:-1] + f" ({len(results['tasks']) - defined} without one, see below)."
    present = [x for x in chexpert.COMPETITION_TASKS if x in results["tasks"]]
    if results.get("mean_auroc_competition") is not None:
        means += (f" Over the competition tasks present ({len(present)} of {len(chexpert.COMPETITION_TASKS)}): "
                  f"{_fmt(results['mean_auroc_competition'])}.")
    blocks = [Heading(2, "Results"), Table(header, tuple(rows), numeric_from=2, groups=groups, long_header=long_header),
              Para((means,)),
              Para((f"Counted per {meta['level']}; {units} with an uncertain label for a task are left out of "
                    f"that task. AUROC 95% CI: percentile bootstrap over {units} ({meta['bootstrap']} resamples, "
                    f"seed {meta['seed']}). Paper AUROC: CheXpert validation, Irvin et al. 2019, with the paper's "
                    "best policy in brackets where it differs from this model's. ECE: expected calibration error "
                    "over 10 equal-width bins.",))]
    if meta["missing"]:
        blocks += [Heading(3, "Why some numbers are missing"), Items(tuple((n,) for n in meta["missing"]))]
    return blocks


def detail_blocks(results: dict, meta: dict, images: list[str]) -> list:
    """Confusion counts, studies per probability bin, and the plots."""
    unit = meta["level"]
    rows = []
    for task, r in results["tasks"].items():
        a, tt = r["at_threshold"], r.get("at_tuned_threshold")
        no_tuned = r["missing"].get("at_tuned_threshold", meta["tune_note"] or "")
        tuned = ((_thr(tt["threshold"]), str(tt["tp"]), str(tt["fp"]), str(tt["fn"]), str(tt["tn"])) if tt else
                 (Missing(no_tuned),) * 5)
        rows.append((task, _thr(a["threshold"]), str(a["tp"]), str(a["fp"]), str(a["fn"]), str(a["tn"])) + tuned)
    blocks = [Heading(2, "Confusion counts"),
              Table(("task",) + ("threshold", "TP", "FP", "FN", "TN") * 2, tuple(rows),
                    groups=("",) + ("at the fixed threshold",) * 5 + ("at the F1-tuned threshold",) * 5,
                    long_header=("task", "threshold", "TP", "FP", "FN", "TN", "F1-tuned threshold", "TP (tuned)",
                                 "FP (tuned)", "FN (tuned)", "TN (tuned)"))]
    bins = next(iter(results["tasks"].values()))["calibration"]["bins"] if results["tasks"] else 10
    edges = np.linspace(0, 1, bins + 1)
    rows = [(task,) + tuple(str(n) for n in r["calibration"]["counts"]) + (str(r["calibration"]["n"]),)
            for task, r in results["tasks"].items()]
    blocks += [Heading(2, "Calibration"),
               Para((f"{PLURAL[unit].capitalize()} per bin of predicted probability, the counts behind the "
                     f"reliability diagram and the ECE. A bin with fewer than {m.SPARSE_BIN} {PLURAL[unit]} says "
                     "little about calibration; the diagram draws those hollow.",)),
               Table(("task",) + tuple(f"{lo:.1f}–{hi:.1f}" for lo, hi in zip(edges[:-1], edges[1:])) + ("total",),
                     tuple(rows))]
    blocks.append(Heading(2, "Plots"))
    for name in images:
        if name == "reliability.png":
            caption = (f"Reliability per task: fraction of positive {PLURAL[unit]} against mean predicted "
                       f"probability in each bin, with its Wilson 95% interval and count (n); hollow markers: fewer "
                       f"than {m.SPARSE_BIN} {PLURAL[unit]}. Below each panel, the count of every bin.")
        else:
            task = name[len("curves_"):-len(".png")]
            caption = f"{task}: ROC and precision-recall curves with the operating points."
        blocks.append(Figure(name, caption))
    return blocks


def report_blocks(results: dict, meta: dict, images: list[str]) -> list:
    """The whole report, as blocks both renderers share."""
    return header_blocks(meta) + results_blocks(results, meta) + detail_blocks(results, meta, images)


def _fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


# Escaped in markdown text: what would start code, emphasis, a table cell or an HTML tag. Square
# brackets and underscores stay as they are (a bracket only links before "(", and GitHub
# does not emphasise inside words such as pleural_effusion), so the file stays readable raw.
_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*|<"})


def _md_inline(parts: tuple) -> str:
    out = []
    for p in parts:
        if isinstance(p, Code):
            # A code span must be fenced by more backticks than it contains in a row.
            longest = max((len(run) for run in re.findall(r"`+", p.text)), default=0)
            fence = "`" * (longest + 1)
            out.append(f"{fence}{p.text}{fence}")
        elif isinstance(p, Strong):
            out.append(f"**{p.text.strip().translate(_MD_SPECIAL)}**" + (" " if p.text.endswith(" ") else ""))
        elif isinstance(p, Missing):
            out.append("—")
        else:
            out.append(str(p).translate(_MD_SPECIAL))
    return "".join(out)


def render_markdown(blocks: list) -> str:
    """Markdown (GitHub tables) of report blocks; figures link the PNGs beside the file."""
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text.translate(_MD_SPECIAL), ""]
        elif isinstance(b, Para):
            lines += [("> " if b.warning else "") + _md_inline(b.parts), ""]
        elif isinstance(b, Items):
            lines += ["- " + _md_inline(item) for item in b.items] + [""]
        elif isinstance(b, Table):
            lines.append("| " + " | ".join(h.translate(_MD_SPECIAL) for h in b.long_header or b.header) + " |")
            lines.append("|" + "|".join("---:" if i >= b.numeric_from else "---" for i in range(len(b.header))) + "|")
            lines += ["| " + " | ".join(_md_inline(_parts(c)) for c in row) + " |" for row in b.rows]
            lines.append("")
        elif isinstance(b, Figure):
            lines += [f"![{b.caption.translate(_MD_SPECIAL)}]({b.name})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _html_inline(parts: tuple) -> str:
    out = []
    for p in parts:
        if isinstance(p, Code):
            # A long path may wrap after a slash, never inside a folder name.
            out.append(f"<code>{html.escape(p.text).replace('/', '/<wbr>')}</code>")
        elif isinstance(p, Strong):
            out.append(f"<strong>{html.escape(p.text.strip())}</strong>" + (" " if p.text.endswith(" ") else ""))
        elif isinstance(p, Missing):
            out.append(f'<span class="na" title="{html.escape(p.reason)}">—</span>')
        else:
            out.append(html.escape(str(p)))
    return "".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1500px;
     padding:0 1.5em;color:#1a1a1a;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.4em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.warning{background:#fdecea;border:2px solid #c62828;border-radius:6px;padding:.7em 1em;color:#7f1010;
         font-size:1.08em}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px;font-size:.92em}
.wide{overflow-x:auto}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:4px 7px;vertical-align:top}
th{background:#f5f5f5;text-align:center}td.blank{border:none;background:none}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tbody tr:nth-child(even){background:#fafafa}
.na{color:#888;cursor:help;border-bottom:1px dotted #888}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#444;font-size:.92em;margin-top:.3em}
"""


NUM_TD = '<td class="num">'


def render_html(blocks: list, pngs: dict[str, bytes], title: str = "Evaluation") -> str:
    """One self-contained HTML page of report blocks: text escaped, PNGs inlined as base64."""
    body = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            cls = ' class="warning" role="alert"' if b.warning else ""
            body.append(f"<p{cls}>{_html_inline(b.parts)}</p>")
        elif isinstance(b, Items):
            body.append("<ul>" + "".join(f"<li>{_html_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "<tr>" + "".join(f'<th scope="col">{html.escape(h)}</th>' for h in b.header) + "</tr>"
            if b.groups:
                head = b.html_group_row() + head
            rows = []
            for row in b.rows:
                cells = "".join((NUM_TD if i >= b.numeric_from else "<td>") + _html_inline(_parts(c)) + "</td>"
                                for i, c in enumerate(row))
                rows.append(f"<tr>{cells}</tr>")
            # Wrapped so that a table wider than the window scrolls on its own, not the page.
            body.append(f'<div class="wide"><table><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>')
        elif isinstance(b, Figure):
            data = base64.b64encode(pngs[b.name]).decode()
            body.append(f'<figure><img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def report_markdown(results: dict, meta: dict, images: list[str]) -> str:
    """report.md: the report's blocks as markdown."""
    return render_markdown(report_blocks(results, meta, images))


def report_html(results: dict, meta: dict, pngs: dict[str, bytes]) -> str:
    """report.html: the same blocks as report.md, as one self-contained page."""
    return render_html(report_blocks(results, meta, list(pngs)), pngs, title=_title(meta))


# --- The job ---------------------------------------------------------------------------------


def default_report_dir(job_dirs: list[str], split: str, csv_path: str | None, tta: bool, views: str,
                       level: str) -> str:
    """``JOB_DIR/eval-...`` named by everything that changes the numbers, so that one
    evaluation never replaces another's report: the split (or ``csv-<name>``), and any of
    image level, all views, TTA, and an ensemble (a digest of its member folders)."""
    parts = ["eval", f"csv-{os.path.splitext(os.path.basename(csv_path))[0]}" if csv_path else split]
    parts += ["image"] * (level == "image") + ["allviews"] * (views == "all") + ["tta"] * bool(tta)
    if len(job_dirs) > 1:
        members = "\n".join(sorted(os.path.abspath(d) for d in job_dirs)).encode()
        parts.append(f"ensemble{len(job_dirs)}-{hashlib.sha1(members).hexdigest()[:8]}")
    return os.path.join(job_dirs[0], "-".join(parts))


def run(job_dirs: list[str], *, split: str = "valid", csv_path: str | None = None, image_root: str | None = None,
        tune_split: str = "holdout", tta: bool = False, views: str = "frontal", level: str = "study",
        n_boot: int = 1000, seed: int = 0, threshold: float | None = None, report_dir: str | None = None,
        skip_corrupt: bool = False) -> dict:
    """Evaluates and writes the report.

    Args:
        job_dirs: one job folder, or several for an ensemble (probabilities averaged).
        split: split of the jobs' records to evaluate; unused when ``csv_path`` is given.
        csv_path: a CheXpert-format CSV to evaluate instead of records.
        image_root: folder the CSV's Path column is relative to (default: the CSV's folder).
        tune_split: split of the jobs' records the F1 thresholds are tuned on ('' for none).
        tta, views, level, n_boot, seed, threshold, skip_corrupt: as the flags of the same names.
        report_dir: where the report goes (default: ``default_report_dir``).

    Returns:
        metrics.json's content: the run's description (``source``, ``provenance``,
        ``synthetic``, ``warnings``, ``notes``, ``missing``: why any number is absent, ...)
        and the results (``tasks``, ``mean_auroc``, ...).
    """
    jobs = [inference.load_job(d) for d in job_dirs]
    threshold_from = "--threshold" if threshold is not None else (
        "the job's --threshold" if len(jobs) == 1 else "the first member's --threshold")
    threshold = threshold if threshold is not None else jobs[0].cfg.threshold
    failed: list[dict] = []
    skipped: dict[str, str] = {}
    if csv_path:
        image_root = image_root or os.path.dirname(csv_path)
        per_job = []
        for j in jobs:
            preds, failed = predict_csv(j, csv_path, image_root, views, tta)
            per_job.append(preds)
    else:
        per_job = [predict_records(j, split, views, tta, skip_corrupt, skipped) for j in jobs]
    source = describe_source(jobs, split, csv_path, image_root)
    tasks, preds = ensemble(per_job)
    scored = aggregate(preds, tasks, level)
    tune_note = tuning_plan(jobs, None if csv_path else split, tune_split)
    tuned = {}
    if tune_note is None:
        _, tune_preds = ensemble([predict_records(j, tune_split, views, tta, skip_corrupt, skipped) for j in jobs])
        for task, (y, p) in aggregate(tune_preds, tasks, level).items():
            tuned[task] = m.best_f1_threshold(y, p)
    results = compute(scored, tuned, threshold, n_boot, seed, tune_split=tune_split if tune_note is None else None,
                      level=level)
    provenance = job_provenance(jobs)
    meta = {"jobs": job_dirs, "split": None if csv_path else split, "source": source, "level": level,
            "views": views, "tta": tta, "threshold": threshold, "threshold_from": threshold_from,
            "tune_split": tune_split if tune_note is None else None, "tune_note": tune_note,
            "policy": dict(jobs[0].cfg.policy), "images": len(preds),
            "studies": len({r["study"] for r in preds.values()}), "unreadable": failed, "skipped_shards": skipped,
            "tuned_thresholds": tuned, "bootstrap": n_boot, "seed": seed, "provenance": provenance,
            "synthetic": any_synthetic(provenance), "warnings": warnings_for(source, provenance),
            "notes": context_notes(jobs, source, tasks, per_job, preds)}
    meta["missing"] = missing_notes(results, meta)
    for w in meta["warnings"]:
        log.warning("%s", w)
    report_dir = report_dir or default_report_dir(job_dirs, split, csv_path, tta, views, level)
    os.makedirs(report_dir, exist_ok=True)
    pngs = plots(scored, results, meta)
    for name, data in pngs.items():
        with open(os.path.join(report_dir, name), "wb") as f:
            f.write(data)
    with open(os.path.join(report_dir, "report.md"), "w") as f:
        f.write(report_markdown(results, meta, list(pngs)))
    with open(os.path.join(report_dir, "report.html"), "w") as f:
        f.write(report_html(results, meta, pngs))
    out = {**meta, **results, "report_dir": report_dir}
    with open(os.path.join(report_dir, "metrics.json"), "w") as f:
        json.dump(out, f, indent=2, sort_keys=True, default=float)
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
    try:
        out = run(FLAGS.job_dir, split=FLAGS.split, csv_path=FLAGS.csv, image_root=FLAGS.image_root,
                  tune_split=FLAGS.tune_split, tta=FLAGS.tta, views=FLAGS.views, level=FLAGS.level,
                  n_boot=FLAGS.bootstrap, seed=FLAGS.seed, threshold=FLAGS.threshold, report_dir=FLAGS.report_dir,
                  skip_corrupt=FLAGS.skip_corrupt)
    except (inference.JobError, input_lib.CorruptShardError, ValueError) as e:
        print(f"trainer.evaluate: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # one line, not a traceback (--verbose shows it)
        print(f"trainer.evaluate: error: {cli.one_line(e)}", file=sys.stderr)
        if FLAGS.verbose:
            raise
        return 1
    # The terminal gets the header and the results (markdown reads well as plain text); the
    # confusion counts, bins and plots are in the files.
    print(render_markdown(header_blocks(out) + results_blocks(out, out)))
    print(f"report in {out['report_dir']}/report.html")
    return 0


if __name__ == "__main__":
    app.run(main)
