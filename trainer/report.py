"""The evaluation report: per-task results, why any number is missing, and the report itself.

``compute`` turns ``{task: (y, p)}`` into the numbers of metrics.json, each task with a
sentence for every metric that could not be computed. The report is one list of blocks
(``report_blocks``) that ``render_markdown`` writes as report.md and ``render_html`` as one
self-contained report.html; the figures they show come from ``trainer.report_plots``.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import itertools
import json
import math
import re

import numpy as np

from schemas import chexpert
from trainer import metrics as m

# CheXpert paper (Irvin et al. 2019), validation AUROC of the best policy per task.
PAPER_AUROC = {"atelectasis": 0.858, "cardiomegaly": 0.854, "consolidation": 0.939, "edema": 0.941,
               "pleural_effusion": 0.936}
PAPER_POLICY = {"atelectasis": "ones", "cardiomegaly": "multiclass", "consolidation": "self_trained",
                "edema": "ones", "pleural_effusion": "multiclass"}

# --- Results ---------------------------------------------------------------------------------


PLURAL = {"study": "studies", "image": "images"}
# What the report calls each dataset format (``schemas.sources.FORMATS``).
DATASET_NAMES = {"chexpert": "CheXpert", "nih": "NIH ChestX-ray14", "mimic": "MIMIC-CXR-JPG"}


def threshold_text(t: float) -> str:
    """A threshold as people write it: 0.35, 0.412."""
    return f"{t:.3g}"


def _undefined_at(op: dict, name: str, unit: str) -> str | None:
    """One sentence naming each NaN rate at an operating point and why it is undefined."""
    t, units = threshold_text(op["threshold"]), PLURAL[unit]
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
    external = meta.get("external")
    if external:
        notes += [f"{task}: not in the results table: {reason}." for task, reason in external["unscored"].items()
                  if task not in results["tasks"]]
        if not results["tasks"]:
            notes.append("No task could be scored: the evaluated data labels none of the model's tasks.")
    return notes


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
    if src["kind"] == "dataset":
        label = src["files"][0]
        parts: list = [f"{src['name']} images read directly from the folder ", Code(src["folder"]), " (label file ",
                       Code(label["name"]), f", {label['rows']} rows, sha256 {label['sha256'][:12]}…"]
        if len(src["files"]) > 1:
            parts.append("; also " + ", ".join(f["name"] for f in src["files"][1:]))
        return tuple(parts) + (")",)
    parts = ["split ", Code(src["split"]), " of the records in "]
    for i, r in enumerate(src["records"]):
        parts += [" and in " if i else "", Code(r["records_dir"]),
                  f" (snapshot {r['snapshot']}, built {str(r['created'])[:10]})"]
    if not src.get("own", True):
        parts.append(", not the records the job was trained on")
    return tuple(p for p in parts if p)


def _rows_parts(src: dict) -> tuple:
    """Which rows of a dataset folder were scored, and what was left out before scoring."""
    c = src["counts"]
    text = f"{c['selected']} of the label file's {c['rows']} rows selected: {src['rule']}"
    left = []
    def are(n: int) -> str:
        return f"{n} {'is' if n == 1 else 'are'}"

    if c["rows"] - c["readable"]:
        left.append(f"{c['rows'] - c['readable']} could not be read or repeat an image already listed (dead "
                    "letters, below)")
    if c["other_split"]:
        left.append(f"{c['other_split']} belong{'s' if c['other_split'] == 1 else ''} to another official split")
    if c["on_no_list"]:
        left.append(f"{are(c['on_no_list'])} on no official list")
    if c["view"]:
        left.append(f"{are(c['view'])} lateral or of unknown view (--views all scores them)")
    return (text + ("; of the rest, " + ", ".join(left) if left else "") + ".",)


def _title(meta: dict) -> str:
    jobs = meta["jobs"]
    model = f"job {jobs[0]}" if len(jobs) == 1 else f"an ensemble of {len(jobs)} jobs"
    src = meta["source"]
    data = f"the CSV {src['csv']}" if src["kind"] == "csv" else f"split {src['split']} of its records"
    if src["kind"] == "records" and len(jobs) > 1:
        data = f"split {src['split']} of their records"
    if src["kind"] == "records" and not src.get("own", True):
        data = f"split {src['split']} of the records in {src['records'][0]['records_dir']}"
    if src["kind"] == "dataset":
        rows = f"official {src['split']} split" if src["split"] else "all rows"
        data = f"{src['name']} ({rows})"
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
                 + {"csv": " (not the evaluated CSV)", "dataset": " (not the evaluated dataset)"}.get(
                     meta["source"]["kind"], " (not the evaluated split)"))
    else:
        tuned = (f"; no F1-tuned thresholds: {meta['tune_note']}",)
    items = [
        (Strong("Data: "),) + _source_parts(meta),
    ]
    if meta["source"]["kind"] == "dataset":
        items.append((Strong("Rows: "),) + _rows_parts(meta["source"]))
    items += [
        (Strong("Scored: "), scored),
        (Strong("Views: "), "frontal only" if meta["views"] == "frontal" else "frontal and lateral"),
        (Strong("Test-time augmentation: "), tta),
        (Strong("Model: "),) + model,
        (Strong("Thresholds: "), f"fixed {threshold_text(meta['threshold'])} ({meta['threshold_from']})") + tuned,
    ]
    left_out = []
    if meta["unreadable"]:
        left_out.append(f"{len(meta['unreadable'])} rows or images that could not be read (listed under External "
                        "validation and in metrics.json)" if meta.get("external") and meta["source"]["kind"] != "csv"
                        else f"{len(meta['unreadable'])} CSV rows that could not be read (listed in metrics.json)")
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


DEAD_LETTERS_SHOWN = 50


def external_blocks(results: dict, meta: dict) -> list:
    """The "External validation" part: the dataset, which of the model's tasks it labels,
    AUROC with its 95% CI for those, why every other task has none, the rows that could not
    be read, and the warning that thresholds may not transfer. Empty when only CheXpert data
    was evaluated; titled "Labels of the evaluated dataset" when the model was trained on
    the evaluated dataset itself."""
    ext = meta.get("external")
    if not ext:
        return []
    names = " and ".join(ext["dataset_names"])
    labelled, tasks = ext["labelled_tasks"], ext["tasks"]
    unlabelled = [t for t, v in tasks.items() if not v["labelled"]]
    trained = " and ".join(DATASET_NAMES.get(d, d) for d in ext.get("trained_on") or ())
    if not ext.get("external", True):
        where = f"Evaluated on {names}, the dataset the model was trained on: not an external validation."
    elif trained:
        where = f"Evaluated on {names}; the model was trained on {trained}."
    else:
        where = f"Evaluated on {names}; what the model was trained on is unknown (its records are not here)."
    text = (f"{where} Of the model's {len(tasks)} "
            f"task{'s' if len(tasks) != 1 else ''}, it labels {len(labelled)}"
            + (f" ({', '.join(labelled)})" if labelled else "") + ".")
    if unlabelled:
        text += (f" It does not label {', '.join(unlabelled)}: those are left out, never counted as negative "
                 "(a blank there means 'not labelled').")
    rows = []
    for task, v in tasks.items():
        if v["scored"]:
            lo, hi = v["auroc_ci95"]
            auroc = (f"{v['auroc']:.3f} [{lo:.3f}–{hi:.3f}]" if not np.isnan(lo) else _num(v["auroc"]))
        else:
            auroc = Missing(v["reason"])
        counts = f"{v['positives']} / {v['negatives']}" if v["labelled"] else Missing(v["reason"])
        rows.append((task, "yes" if v["labelled"] else "no", auroc, counts, "" if v["scored"] else v["reason"]))
    unit, external = PLURAL[meta["level"]], ext.get("external", True)
    blocks = [Heading(2, "External validation" if external else "Labels of the evaluated dataset"), Para((text,)),
              Table(("task", "labelled", "AUROC [95% CI]", f"pos / neg {unit}", "why not scored"), tuple(rows),
                    numeric_from=99)]
    if external:
        blocks.append(Para((Strong("Thresholds: "), ext["threshold_warning"])))
    dead = ext["dead_letters"]
    if meta["source"]["kind"] == "records":
        blocks.append(Para(("Rows the records job could not read never became records: they are its dead letters "
                            "(rejected-*.jsonl in the records' snapshot folder).",)))
    elif dead["count"]:
        by = ", ".join(f"{reason} {n}" for reason, n in dead["by_reason"].items())
        shown = dead["rows"][:DEAD_LETTERS_SHOWN]
        more = (f" The first {len(shown)} are listed; all {dead['count']} are in metrics.json (external.dead_letters)."
                if dead["count"] > len(shown) else "")
        blocks += [Heading(3, "Rows that could not be read"),
                   Para((f"{dead['count']} label-file rows or images were not scored ({by}).{more}",)),
                   Items(tuple((Code(f"{d['source']}:{d['row']}"), " ", Code(d["path"] or "(no path)"),
                                f": {d['reason']}: {d['detail']}") for d in shown))]
    else:
        blocks.append(Para(("Every selected row was read and scored (no dead letters).",)))
    return blocks


def results_blocks(results: dict, meta: dict) -> list:
    """The per-task metrics table, the means, and why any number is missing."""
    t, units = threshold_text(meta["threshold"]), PLURAL[meta["level"]]
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
    # On another site's data the paper's numbers are still CheXpert's: the header says so.
    elsewhere = bool(meta.get("external")) and meta["external"].get("external", True)
    header = ("task", "policy", "AUROC [95% CI]", "paper AUROC on CheXpert" if elsewhere else "paper AUROC", "AUPRC",
              "F1", "accuracy", "sensitivity", "specificity", "PPV", "NPV", "threshold", "F1", "ECE", "pos / neg")
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
                    f"that task" + (f", and so are the {units} of a dataset that does not label it; a blank label "
                                    "counts as negative only where the dataset labels the task (CheXpert and MIMIC: "
                                    "'not mentioned' by the CheXpert labeler)" if meta.get("external") else "")
                    + f". AUROC 95% CI: percentile bootstrap over {units} ({meta['bootstrap']} resamples, "
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
        tuned = ((threshold_text(tt["threshold"]), str(tt["tp"]), str(tt["fp"]), str(tt["fn"]), str(tt["tn"])) if tt else
                 (Missing(no_tuned),) * 5)
        rows.append((task, threshold_text(a["threshold"]), str(a["tp"]), str(a["fp"]), str(a["fn"]), str(a["tn"])) + tuned)
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
    return (header_blocks(meta) + external_blocks(results, meta) + results_blocks(results, meta)
            + detail_blocks(results, meta, images))


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


def strict_json(value):
    """``value`` with every NaN or infinity as None and numpy numbers as Python ones.

    An AUROC is undefined (NaN) where a split has one class only; Python writes that as a
    bare ``NaN``, which is not JSON: jq, JavaScript's ``JSON.parse`` and most other parsers
    refuse the whole file. metrics.json says ``null`` there instead.
    """
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def write_metrics(path: str, content: dict) -> None:
    """Writes metrics.json as strict JSON (``strict_json``), keys sorted."""
    with open(path, "w") as f:
        json.dump(strict_json(content), f, indent=2, sort_keys=True, default=float, allow_nan=False)
