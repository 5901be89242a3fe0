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


if __name__ == "__main__":  # flags first, then TensorFlow, quietly (serving/startup.py)
    define_flags()
    startup.begin(sys.argv)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from core import csv_reader  # noqa: E402
from core.errors import ConfigError  # noqa: E402
from pipeline import make_sample  # noqa: E402
from schemas import chexpert  # noqa: E402
from schemas.job_spec import provenance_line  # noqa: E402
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
                    skipped: dict | None = None) -> dict:
    """Predictions of one job on a split of its own records, keyed by source path.

    A corrupt shard raises ``input.CorruptShardError`` naming it; with ``skip_corrupt`` it is
    left out and recorded in ``skipped``.
    """
    cfg = dataclasses.replace(member.cfg, views=views)
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
        for path, study, raw, p in zip(batch["path"].numpy(), batch["study"].numpy(), batch["raw"].numpy(), probs):
            out[path.decode()] = {"study": study.decode(), "raw": dict(zip(member.tasks, raw.tolist())),
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
        out[row.path] = {"study": row.study_id, "raw": raw, "probs": dict(zip(job.tasks, p.tolist()))}
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
        jobs: the loaded jobs (``Member``).
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
    jobs = [load_member(d) for d in job_dirs]
    threshold_from = "--threshold" if threshold is not None else (
        "the job's --threshold" if len(jobs) == 1 else "the first member's --threshold")
    threshold = threshold if threshold is not None else jobs[0].job.spec.threshold  # what every scorer reads
    failed: list[dict] = []
    skipped: dict[str, str] = {}
    if csv_path:
        image_root = image_root or os.path.dirname(csv_path)
        per_job = []
        for j in jobs:
            preds, failed = predict_csv(j.job, csv_path, image_root, views, tta)
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
    results = report.compute(scored, tuned, threshold, n_boot, seed, tune_split=tune_split if tune_note is None else None,
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
    meta["missing"] = report.missing_notes(results, meta)
    for w in meta["warnings"]:
        log.warning("%s", w)
    report_dir = report_dir or default_report_dir(job_dirs, split, csv_path, tta, views, level)
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
    except (job_lib.JobError, input_lib.CorruptShardError, ValueError) as e:
        print(f"trainer.evaluate: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # one line, not a traceback (--verbose shows it)
        return cli.unexpected("trainer.evaluate", e, FLAGS.verbose)
    # The terminal gets the header and the results (markdown reads well as plain text); the
    # confusion counts, bins and plots are in the files.
    print(report.render_markdown(report.header_blocks(out) + report.results_blocks(out, out)))
    print(f"report in {out['report_dir']}/report.html")
    return 0


if __name__ == "__main__":
    app.run(main)
