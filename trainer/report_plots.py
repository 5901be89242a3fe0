"""The evaluation report's figures: ROC and precision-recall per task, and reliability.

Each figure is drawn with matplotlib's Agg backend (files only: no display on servers and
CI) and returned as PNG bytes, which ``trainer.evaluate`` writes beside report.md and
``trainer.report`` inlines in report.html.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, no display

import matplotlib.lines  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from trainer import metrics as m  # noqa: E402
from trainer.report import PLURAL, threshold_text  # noqa: E402

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
        name = name.format(t=threshold_text(op["threshold"]))
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


def _separate(labels: list, fig) -> None:
    """Moves each annotation (in points, away from its marker: down when it hangs below it,
    else up) until its box overlaps none placed before it.

    Scores cluster near the bin edges, so the markers of neighbouring sparse bins can sit a
    few points apart and fixed offsets print their labels over each other.
    """
    renderer = fig.canvas.get_renderer()
    placed = []
    for label in labels:
        dx, dy = label.xyann
        step = -11 if dy < 0 else 11
        # A bounded search: with ten bins at most nine labels can stack.
        for _ in range(10):
            box = label.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(other) for other in placed):
                break
            dy += step
            label.xyann = (dx, dy)
        placed.append(label.get_window_extent(renderer))


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
        labels = []
        for b in curve:
            lo, hi = b["observed_ci95"]
            # Clipped at 0: float rounding must not make a negative error bar (matplotlib refuses one).
            yerr = [[max(0.0, b["observed"] - lo)], [max(0.0, hi - b["observed"])]]
            ax.errorbar(b["confidence"], b["observed"], yerr=yerr,
                        marker="o", ms=8, color="C1" if b["sparse"] else "C0", capsize=3,
                        mfc="white" if b["sparse"] else "C0", ls="none", zorder=3)
            if b["sparse"]:
                # Only the few-study bins are labelled here (every count is in the panel below):
                # labels on every point overlap. Kept inside the axes near the top and right edges.
                dx = -34 if b["confidence"] > 0.85 else 7
                dy = -13 if b["observed"] > 0.9 else 5
                labels.append(ax.annotate(f"n={b['count']}", (b["confidence"], b["observed"]), xytext=(dx, dy),
                                          textcoords="offset points", fontsize=9, color="C1"))
        _separate(labels, fig)
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
