"""trainer.evaluate's report: it names what was evaluated and what the model was trained on,
renders as real HTML, counts its reliability bins, and says why any number is missing."""

from __future__ import annotations

import collections
import csv
import html.parser
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline import make_sample
from schemas import job_spec
from trainer import config as config_lib
from trainer import evaluate, metrics, report, report_plots


class _Page(html.parser.HTMLParser):
    """Counts tags, checks that every element is closed by its own end tag, keeps the text
    a reader sees (not the stylesheet) and the tooltips."""

    VOID = {"meta", "img", "br", "wbr", "hr", "link", "input"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.counts: collections.Counter = collections.Counter()
        self.errors: list[str] = []
        self.text: list[str] = []
        self.titles: list[str] = []
        self.warnings = 0

    def handle_starttag(self, tag, attrs):
        self.counts[tag] += 1
        attrs = dict(attrs)
        if "title" in attrs:
            self.titles.append(attrs["title"])
        if "warning" in (attrs.get("class") or "").split():
            self.warnings += 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else ''}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if "style" not in self.stack:
            self.text.append(data)


def _seen(page: _Page) -> str:
    """The page's text as a reader sees it: whitespace runs collapsed."""
    return " ".join("".join(page.text).split())


def _page(path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    page.close()
    return page


@pytest.fixture(scope="module")
def records_report(trained_job, tmp_path_factory):
    """The default evaluation: split valid of the job's records, thresholds tuned on holdout."""
    out = tmp_path_factory.mktemp("report") / "records"
    evaluate.run([trained_job], split="valid", n_boot=50, report_dir=str(out))
    return out


@pytest.fixture(scope="module")
def csv_report(trained_job, sample_dir, tmp_path_factory):
    """A CSV evaluation with --tune_split '' (no thresholds tuned)."""
    out = tmp_path_factory.mktemp("report") / "csv"
    csv_path = os.path.join(sample_dir, make_sample.DATASET_DIR, "valid.csv")
    evaluate.run([trained_job], csv_path=csv_path, image_root=sample_dir, tune_split="", n_boot=50,
                 report_dir=str(out))
    return out


def test_report_html_is_built_html_with_no_markdown_left_in_it(records_report):
    text = (records_report / "report.html").read_text()
    for raw in ("`", "TTA False", "|---", "| ---", "![", "**", "\n# ", "\n## "):
        assert raw not in text, raw
    page = _page(records_report / "report.html")
    assert not page.errors and not page.stack, (page.errors, page.stack)
    # Model, results, confusion counts, studies per calibration bin; each with a header row.
    assert page.counts["table"] == 4 and page.counts["thead"] == 4 and page.counts["tbody"] == 4
    assert page.counts["h1"] == 1 and page.counts["img"] == 3 and page.counts["figcaption"] == 3
    seen = _seen(page)
    assert "Test-time augmentation: off" in seen and "|" not in seen
    # Plots big enough to read at the page's width.
    for name in ("curves_atelectasis.png", "curves_cardiomegaly.png", "reliability.png"):
        width, height = Image.open(io.BytesIO((records_report / name).read_bytes())).size
        assert width >= 900 and height >= 500, (name, width, height)


def test_header_names_the_records_split_or_the_csv_it_evaluated(records_report, csv_report, sample_dir,
                                                                 records_dir):
    md = (records_report / "report.md").read_text()
    assert "split `valid` of the records in `" + os.path.abspath(records_dir) + "`" in md
    saved = json.loads((records_report / "metrics.json").read_text())
    assert saved["source"]["kind"] == "records" and saved["source"]["split"] == "valid"

    csv_path = os.path.abspath(os.path.join(sample_dir, make_sample.DATASET_DIR, "valid.csv"))
    md = (csv_report / "report.md").read_text()
    header = md.split("## Results")[0]
    assert f"the CSV `{csv_path}`, image paths relative to `{os.path.abspath(sample_dir)}`" in header
    assert "split" not in header.replace("--tune_split", "").lower()
    seen = _seen(_page(csv_report / "report.html"))
    assert f"Data: the CSV {csv_path}, image paths relative to {os.path.abspath(sample_dir)}" in seen
    saved = json.loads((csv_report / "metrics.json").read_text())
    assert saved["source"] == {"kind": "csv", "csv": csv_path, "image_root": os.path.abspath(sample_dir),
                               "synthetic": True}
    assert saved["split"] is None


def test_synthetic_training_data_is_a_warning_in_every_output(records_report, trained_job):
    with open(os.path.join(trained_job, "config.json")) as f:
        cfg = config_lib.TrainConfig.from_json(f.read())
    assert cfg.synthetic is True  # conftest's job trains on make_sample's records

    md = (records_report / "report.md").read_text()
    before_results = md.split("## What was evaluated")[0]
    assert "> **WARNING:** Trained on SYNTHETIC data" in before_results
    assert job_spec.provenance_line(cfg.provenance) in md

    page = _page(records_report / "report.html")
    assert page.warnings >= 1
    assert "WARNING: Trained on SYNTHETIC data" in _seen(page)

    saved = json.loads((records_report / "metrics.json").read_text())
    assert saved["synthetic"] is True
    assert any("SYNTHETIC" in w for w in saved["warnings"])
    (member,) = saved["provenance"]
    assert member["job_dir"] == trained_job and member["synthetic"] is True
    assert member["summary"] == job_spec.provenance_line(cfg.provenance)
    assert member["records_snapshot"] == cfg.provenance["records_snapshot"]


def test_reliability_bins_carry_counts_that_sum_to_the_evaluated_studies(records_report):
    with open(records_report / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    saved = json.loads((records_report / "metrics.json").read_text())
    md = (records_report / "report.md").read_text().split("## Calibration")[1]
    for task, r in saved["tasks"].items():
        labels = {row["study"]: int(row[f"label_{task}"]) for row in rows}
        certain = sum(code != -1 for code in labels.values())  # uncertain labels are left out
        cal = r["calibration"]
        assert certain == r["positives"] + r["negatives"] == cal["n"] == sum(cal["counts"]) > 0
        assert sum(b["count"] for b in cal["curve"]) == certain
        assert all(b["sparse"] == (b["count"] < metrics.SPARSE_BIN) for b in cal["curve"])
        row = next(line for line in md.splitlines() if line.startswith(f"| {task} |"))
        assert [int(c) for c in row.strip("| ").split(" | ")[1:]] == cal["counts"] + [certain]


def test_a_sentence_says_why_tuned_thresholds_are_missing_without_a_holdout(trained_job, records_dir, csv_report,
                                                                          tmp_path):
    # Records built without a holdout split: the same folder, its manifest listing no holdout.
    records = tmp_path / "records"
    shutil.copytree(records_dir, records)
    manifest = json.loads((records / "manifest.json").read_text())
    del manifest["splits"]["holdout"]
    (records / "manifest.json").write_text(json.dumps(manifest))
    job = tmp_path / "job"
    shutil.copytree(trained_job, job)
    cfg = json.loads((job / "config.json").read_text())
    cfg["records_dir"] = str(records)
    (job / "config.json").write_text(json.dumps(cfg))

    out = evaluate.run([str(job)], split="valid", n_boot=20, report_dir=str(tmp_path / "r"))
    assert out["tune_split"] is None and out["tuned_thresholds"] == {}
    why = f"there was no 'holdout' split to tune on: the records in {records} have only train, valid"
    assert out["tune_note"].startswith(why)
    assert f"F1-tuned threshold columns are empty: {why}" in out["missing"][0]
    assert why in (tmp_path / "r" / "report.md").read_text()
    page = _page(tmp_path / "r" / "report.html")
    assert why in _seen(page)
    assert any(t.startswith(why) for t in page.titles)  # the empty cells' tooltip
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["missing"] == out["missing"]

    saved = json.loads((csv_report / "metrics.json").read_text())
    no_tuning = "F1-tuned threshold columns are empty: --tune_split was empty, so no threshold was tuned."
    assert saved["missing"][0] == no_tuning
    assert saved["missing"][0] in (csv_report / "report.md").read_text()


def _meta(**kw) -> dict:
    """What ``evaluate.run`` describes a run with, for report functions called directly."""
    provenance = [{"job_dir": "/jobs/a", "tasks": ["edema", "fracture"], "synthetic": False,
                   "records_snapshot": "snapshot-1", "summary": "trained 2026-01-01 on records of /data (9 images)"}]
    meta = {"jobs": ["/jobs/a"], "split": "valid", "level": "study", "views": "frontal", "tta": False,
            "threshold": 0.35, "threshold_from": "the job's --threshold", "tune_split": None,
            "tune_note": "--tune_split was empty, so no threshold was tuned", "policy": {}, "images": 40,
            "studies": 40, "unreadable": [], "skipped_shards": {}, "tuned_thresholds": {}, "bootstrap": 20, "seed": 0,
            "source": {"kind": "records", "split": "valid",
                       "records": [{"records_dir": "/data/records", "snapshot": "snapshot-1",
                                    "created": "2026-01-01", "synthetic": False}]},
            "provenance": provenance, "synthetic": False, "warnings": [], "notes": []}
    meta.update(kw)
    return meta


def test_undefined_metrics_each_get_a_sentence_and_a_tooltip():
    rng = np.random.default_rng(0)
    p = rng.random(40)
    scored = {"edema": ((p > 0.5).astype(int), p), "fracture": (np.zeros(40, int), p)}  # fracture: no positives
    results = report.compute(scored, {}, 0.35, 20, 0)
    meta = _meta()
    meta["missing"] = report.missing_notes(results, meta)
    assert np.isnan(results["tasks"]["fracture"]["auroc"])
    assert ("fracture: no positive studies in the evaluated set, so AUROC, its CI and AUPRC are undefined and there "
            "are no ROC or precision-recall curves.") in meta["missing"]
    assert "fracture: at the threshold 0.35, sensitivity is undefined: no positive studies." in meta["missing"]
    assert any(n.startswith("Paper AUROC is empty for fracture:") for n in meta["missing"])
    pngs = report_plots.plots(scored, results, meta)
    assert sorted(pngs) == ["curves_edema.png", "reliability.png"]
    md = report.report_markdown(results, meta, list(pngs))
    assert all(n in md for n in meta["missing"])
    page = _Page()
    page.feed(report.report_html(results, meta, pngs))
    assert not page.errors and not page.stack
    assert any("no positive studies" in t for t in page.titles)


# Irvin et al., "CheXpert", AAAI 2019, Table 2: validation AUROC of each competition task
# under its best uncertainty policy (trainer/report.py cites this table for PAPER_AUROC).
# Written out here, not read from the code: the test is what a changed number fails.
PUBLISHED_AUROC = {"atelectasis": 0.858, "cardiomegaly": 0.854, "consolidation": 0.939, "edema": 0.941,
                   "pleural_effusion": 0.936}
PUBLISHED_POLICY = {"atelectasis": "ones", "cardiomegaly": "multiclass", "consolidation": "self_trained",
                    "edema": "ones", "pleural_effusion": "multiclass"}


def _row_cells(html_text: str, first: str) -> list[str]:
    """The text of each cell of the table row whose first cell is ``first``."""
    for row in re.findall(r"<tr>(.*?)</tr>", html_text, re.S):
        cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no table row starts with {first!r}")


def test_the_paper_column_shows_the_published_auroc_beside_each_task():
    assert report.PAPER_AUROC == PUBLISHED_AUROC and report.PAPER_POLICY == PUBLISHED_POLICY
    rng = np.random.default_rng(1)
    scored = {t: (rng.integers(0, 2, 40), rng.random(40)) for t in PUBLISHED_AUROC}
    results = report.compute(scored, {}, 0.35, 20, 0)
    meta = _meta(policy=dict(PUBLISHED_POLICY))
    meta["missing"] = report.missing_notes(results, meta)
    md = report.report_markdown(results, meta, [])
    table = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| ")]
    header = next(r for r in table if "paper AUROC" in r)
    column = header.index("paper AUROC")
    html_text = report.report_html(results, meta, {})
    for task, auroc in PUBLISHED_AUROC.items():
        assert results["tasks"][task]["paper_auroc"] == auroc
        md_row = next(r for r in table if r[0] == task and len(r) == len(header))
        assert md_row[column] == f"{auroc:.3f}", task
        assert _row_cells(html_text, task)[column] == f"{auroc:.3f}", task


def test_calibration_counts_every_bin_and_gives_a_wilson_interval():
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 1, 1])
    p = np.array([0.05, 0.05, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.97])
    cal = metrics.calibration(y, p)
    assert cal["counts"] == [2, 0, 0, 0, 0, 9, 0, 0, 0, 1] and cal["n"] == 12
    assert [b["sparse"] for b in cal["curve"]] == [True, True, True]
    lo, hi = metrics.wilson_interval(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    for n in range(1, 400):  # the observed frequency always inside its own interval, bounds exact at 0 and n
        assert metrics.wilson_interval(0, n)[0] == 0.0 and metrics.wilson_interval(n, n)[1] == 1.0
        for k in (1, n // 3, n - 1):
            lo, hi = metrics.wilson_interval(k, n)
            assert lo <= k / n <= hi


def test_an_ensemble_lists_each_member_with_its_training_data(trained_job, tmp_path):
    # A member from before provenance was recorded: its config.json has no "provenance".
    old = tmp_path / "old_job"
    shutil.copytree(trained_job, old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["provenance"]
    (old / "config.json").write_text(json.dumps(cfg))

    out = evaluate.run([trained_job, str(old)], split="valid", tune_split="", n_boot=10,
                       report_dir=str(tmp_path / "r"))
    assert [p["synthetic"] for p in out["provenance"]] == [True, None] and out["synthetic"] is True
    assert out["warnings"][0].startswith(f"Trained on SYNTHETIC data: 1 of the 2 ensemble members ({trained_job}) "
                                         "was trained on synthetic records")
    assert out["warnings"][1].startswith(f"Training data unknown for {old}")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Ensemble members" in md and "an ensemble of 2 jobs" in md
    members = md.split("## Ensemble members")[1].split("## Results")[0]
    assert f"| `{trained_job}` |" in members and f"| `{old}` |" in members
    assert job_spec.provenance_line({}) in members


def test_default_report_folders_never_replace_another_evaluations_report(tmp_path):
    from trainer import evaluate as ev

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    names = {ev.default_report_dir([a], "valid", None, False, "frontal", "study"),
             ev.default_report_dir([a], "valid", None, True, "frontal", "study"),
             ev.default_report_dir([a], "valid", None, False, "all", "study"),
             ev.default_report_dir([a], "valid", None, False, "frontal", "image"),
             ev.default_report_dir([a], "holdout", None, False, "frontal", "study"),
             ev.default_report_dir([a, b], "valid", None, False, "frontal", "study"),
             ev.default_report_dir([a], "valid", "/x/valid.csv", False, "frontal", "study")}
    assert len(names) == 7
    assert ev.default_report_dir([a], "valid", None, False, "frontal", "study") == os.path.join(a, "eval-valid")


def test_a_split_that_also_chose_the_models_epoch_is_said_to_flatter_it(records_report, trained_job):
    md = (records_report / "report.md").read_text()
    assert "chose its best epoch (and when to stop) by mean AUROC on split valid" in md
    assert "optimistically biased" in json.dumps(json.loads((records_report / "metrics.json").read_text())["notes"])


def test_labels_of_neighbouring_sparse_bins_do_not_overlap():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.4, 4))
    # Two markers a few points apart (scores on either side of a bin edge), two near the top.
    points = [(0.195, 0.0, 5), (0.205, 0.02, 5), (0.89, 1.0, -13), (0.91, 1.0, -13)]
    labels = [ax.annotate(f"n={i}", (x, y), xytext=(7, dy), textcoords="offset points", fontsize=9)
              for i, (x, y, dy) in enumerate(points)]
    report_plots._separate(labels, fig)
    renderer = fig.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert labels[3].xyann[1] < -13  # a label hanging below its marker moves further down
    plt.close(fig)


def test_metrics_json_is_strict_json_with_null_where_a_metric_is_undefined(tmp_path):
    # Python writes NaN bare, which jq and JavaScript refuse: every writer of metrics.json
    # (trainer.train, trainer.evaluate) says null there, and numpy numbers as plain ones.
    content = {"auroc": float("nan"), "tasks": {"edema": {"auroc": np.float32(0.75), "ci": [np.nan, np.float64(1.0)],
                                                        "n": np.int64(3), "ok": np.bool_(True)}},
               "inf": float("inf"), "curve": np.array([0.5, np.nan]), "none": None, "name": "x"}
    path = str(tmp_path / "metrics.json")
    report.write_metrics(path, content)

    def refuse(constant):
        raise ValueError(constant)

    assert json.loads(open(path).read(), parse_constant=refuse) == {
        "auroc": None, "tasks": {"edema": {"auroc": 0.75, "ci": [None, 1.0], "n": 3, "ok": True}}, "inf": None,
        "curve": [0.5, None], "none": None, "name": "x"}
