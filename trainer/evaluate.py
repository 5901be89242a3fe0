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
reliability plots, and ``metrics.json`` to ``--report_dir`` (default JOB_DIR/eval-SPLIT).
"""

from __future__ import annotations

import base64
import collections
import csv
import dataclasses
import html
import io
import json
import logging
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from pipeline import records  # noqa: E402
from schemas import chexpert  # noqa: E402
from trainer import inference  # noqa: E402
from trainer import input as input_lib  # noqa: E402
from trainer import metrics as m  # noqa: E402
from trainer.config import read_manifest  # noqa: E402

log = logging.getLogger(__name__)

# CheXpert paper (Irvin et al. 2019), validation AUROC of the best policy per task.
PAPER_AUROC = {"atelectasis": 0.858, "cardiomegaly": 0.854, "consolidation": 0.939, "edema": 0.941,
               "pleural_effusion": 0.936}
PAPER_POLICY = {"atelectasis": "ones", "cardiomegaly": "multiclass", "consolidation": "self_trained",
                "edema": "ones", "pleural_effusion": "multiclass"}

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
    flags.DEFINE_string("report_dir", None, "Where the report goes (default JOB_DIR/eval-SPLIT).")
    flags.DEFINE_boolean("skip_corrupt", False, "Skip (and report) corrupt shards instead of stopping.")



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
        for item in records.read_csv_rows(f, os.path.basename(csv_path)):
            if isinstance(item, records.Reject):
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


# --- Metrics and report ----------------------------------------------------------------------


def compute(scored: dict, tuned: dict, threshold: float, n_boot: int, seed: int) -> dict:
    tasks = {}
    for task, (y, p) in scored.items():
        lo, hi = m.bootstrap_auroc_ci(y, p, n=n_boot, seed=seed)
        r = {"auroc": m.auroc(y, p), "auroc_ci95": [lo, hi], "auprc": m.auprc(y, p), "positives": int(y.sum()),
             "negatives": int(len(y) - y.sum()), "at_threshold": m.at_threshold(y, p, threshold),
             "calibration": m.calibration(y, p), "paper_auroc": PAPER_AUROC.get(task)}
        if task in tuned and not np.isnan(tuned[task]):
            r["at_tuned_threshold"] = m.at_threshold(y, p, tuned[task])
        tasks[task] = r
    competition = [tasks[t]["auroc"] for t in chexpert.COMPETITION_TASKS if t in tasks]
    return {"tasks": tasks, "mean_auroc": m.nanmean(r["auroc"] for r in tasks.values()),
            "mean_auroc_competition": m.nanmean(competition) if competition else None}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def plots(scored: dict, results: dict, threshold: float) -> dict[str, bytes]:
    """ROC and PR per task with operating points, and one reliability diagram."""
    out = {}
    for task, (y, p) in scored.items():
        if y.min() == y.max():
            continue
        r = results["tasks"][task]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 4))
        c = m.curves(y, p)
        ax1.plot(c["fpr"], c["tpr"], label=f"AUROC {r['auroc']:.3f}")
        ax1.plot([0, 1], [0, 1], ls=":", c="gray")
        ax2.step(c["recall"], c["precision"], where="post", label=f"AUPRC {r['auprc']:.3f}")
        for key, marker, label in (("at_threshold", "o", f"t={threshold}"), ("at_tuned_threshold", "s", "tuned")):
            if key in r:
                op = r[key]
                ax1.plot(1 - op["specificity"], op["sensitivity"], marker, label=f"{label} ({op['threshold']:.2f})")
                ax2.plot(op["sensitivity"], op["ppv"], marker, label=label)
        ax1.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"{task}: ROC")
        ax2.set(xlabel="recall", ylabel="precision", title=f"{task}: precision-recall")
        ax1.legend(loc="lower right", fontsize=8)
        ax2.legend(loc="lower left", fontsize=8)
        out[f"curves_{task}.png"] = _png(fig)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ls=":", c="gray")
    for task, r in results["tasks"].items():
        curve = r["calibration"]["curve"]
        ax.plot([c["confidence"] for c in curve], [c["observed"] for c in curve], "o-",
                label=f"{task} (ECE {r['calibration']['ece']:.3f})")
    ax.set(xlabel="predicted probability", ylabel="observed frequency", title="reliability")
    ax.legend(fontsize=8)
    out["reliability.png"] = _png(fig)
    plt.close(fig)
    return out


def _fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def report_markdown(results: dict, meta: dict, images: list[str]) -> str:
    lines = [f"# Evaluation: {', '.join(meta['jobs'])}", "",
             f"Split `{meta['split']}`, {meta['level']}-level, views {meta['views']}, TTA {meta['tta']}; "
             f"threshold {meta['threshold']}, tuned thresholds from `{meta['tune_split'] or 'none'}`.", "",
             "| task | policy | AUROC (95% CI) | paper AUROC | AUPRC | F1 | acc | sens | spec | PPV | NPV | "
             "tuned t | F1 (tuned) | ECE | pos/neg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for task, r in results["tasks"].items():
        a, tt = r["at_threshold"], r.get("at_tuned_threshold", {})
        paper = _fmt(r["paper_auroc"])
        if r["paper_auroc"] is not None and meta["policy"].get(task) != PAPER_POLICY.get(task):
            paper += f" ({PAPER_POLICY[task]})"
        lines.append(f"| {task} | {meta['policy'].get(task, '')} | {_fmt(r['auroc'])} ({_fmt(r['auroc_ci95'][0])}–"
                     f"{_fmt(r['auroc_ci95'][1])}) | {paper} | {_fmt(r['auprc'])} | {_fmt(a['f1'])} | "
                     f"{_fmt(a['accuracy'])} | {_fmt(a['sensitivity'])} | {_fmt(a['specificity'])} | {_fmt(a['ppv'])} | "
                     f"{_fmt(a['npv'])} | {_fmt(tt.get('threshold'))} | {_fmt(tt.get('f1'))} | "
                     f"{_fmt(r['calibration']['ece'])} | {r['positives']}/{r['negatives']} |")
    lines += ["", f"Mean AUROC: {_fmt(results['mean_auroc'])}"]
    if results.get("mean_auroc_competition") is not None:
        lines.append(f"Mean AUROC over the competition tasks present: {_fmt(results['mean_auroc_competition'])}")
    lines += ["", "Confusion counts at the threshold: "
              + "; ".join(f"{t}: TP {r['at_threshold']['tp']} FP {r['at_threshold']['fp']} "
                          f"FN {r['at_threshold']['fn']} TN {r['at_threshold']['tn']}"
                          for t, r in results["tasks"].items()), ""]
    lines += [f"![{name}]({name})" for name in images]
    return "\n".join(lines) + "\n"


def report_html(markdown: str, pngs: dict[str, bytes]) -> str:
    """One self-contained HTML file: the markdown table rendered, images inlined."""
    body = []
    for line in markdown.splitlines():
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("|---"):
            continue
        elif line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            tag = "th" if not body or not body[-1].startswith("<tr") else "td"
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
        elif line.startswith("!["):
            name = line[line.index("(") + 1:-1]
            data = base64.b64encode(pngs[name]).decode()
            body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    out, in_table = [], False
    for b in body:
        if b.startswith("<tr") and not in_table:
            out.append("<table>")
            in_table = True
        elif not b.startswith("<tr") and in_table:
            out.append("</table>")
            in_table = False
        out.append(b)
    if in_table:
        out.append("</table>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:48%;margin:4px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>{''.join(out)}</body></html>"


def run(job_dirs: list[str], *, split: str = "valid", csv_path: str | None = None, image_root: str | None = None,
        tune_split: str = "holdout", tta: bool = False, views: str = "frontal", level: str = "study",
        n_boot: int = 1000, seed: int = 0, threshold: float | None = None, report_dir: str | None = None,
        skip_corrupt: bool = False) -> dict:
    """Evaluates and writes the report; returns metrics.json's content."""
    jobs = [inference.load_job(d) for d in job_dirs]
    threshold = threshold if threshold is not None else jobs[0].cfg.threshold
    failed: list[dict] = []
    skipped: dict[str, str] = {}
    if csv_path:
        per_job = []
        for j in jobs:
            preds, failed = predict_csv(j, csv_path, image_root or os.path.dirname(csv_path), views, tta)
            per_job.append(preds)
        source = csv_path
    else:
        per_job = [predict_records(j, split, views, tta, skip_corrupt, skipped) for j in jobs]
        source = f"{jobs[0].cfg.records_dir}:{split}"
    tasks, preds = ensemble(per_job)
    scored = aggregate(preds, tasks, level)
    tuned = {}
    have_tune = tune_split and tune_split != split and all(
        tune_split in read_manifest(j.cfg.records_dir)["splits"] for j in jobs)
    if have_tune:
        _, tune_preds = ensemble([predict_records(j, tune_split, views, tta, skip_corrupt, skipped) for j in jobs])
        for task, (y, p) in aggregate(tune_preds, tasks, level).items():
            tuned[task] = m.best_f1_threshold(y, p)
    results = compute(scored, tuned, threshold, n_boot, seed)
    meta = {"jobs": job_dirs, "split": split, "source": source, "level": level, "views": views, "tta": tta,
            "threshold": threshold, "tune_split": tune_split if have_tune else None,
            "policy": dict(jobs[0].cfg.policy), "images": len(preds), "unreadable": failed, "skipped_shards": skipped,
            "tuned_thresholds": tuned}
    report_dir = report_dir or os.path.join(job_dirs[0], f"eval-{'csv' if csv_path else split}")
    os.makedirs(report_dir, exist_ok=True)
    pngs = plots(scored, results, threshold)
    for name, data in pngs.items():
        with open(os.path.join(report_dir, name), "wb") as f:
            f.write(data)
    md = report_markdown(results, meta, list(pngs))
    with open(os.path.join(report_dir, "report.md"), "w") as f:
        f.write(md)
    with open(os.path.join(report_dir, "report.html"), "w") as f:
        f.write(report_html(md, pngs))
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
    with open(os.path.join(out["report_dir"], "report.md")) as f:
        print("".join(line for line in f if line.startswith(("|", "Mean"))))
    print(f"report in {out['report_dir']}/report.html")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
