"""trainer.evaluate and trainer.predict on a tiny trained job."""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from sklearn import metrics as skm

import tests
from core import imaging, views
from core.inputs import list_inputs
from pipeline import make_sample
from serving import gradcam, heatmap
from serving import job as job_lib
from serving import predict as serving_predict
from trainer import config as config_lib
from trainer import evaluate, metrics, predict, report
from trainer import model as model_lib
from tests import images
from tests.images import dicom_with_view

ROOT = tests.ROOT


def test_study_level_metrics_match_sklearn_and_the_report_is_complete(trained_job, tmp_path):
    out = evaluate.run([trained_job], split="valid", n_boot=200, report_dir=str(tmp_path / "r"))
    assert out["tune_split"] == "holdout" and set(out["tuned_thresholds"]) == {"cardiomegaly", "atelectasis"}
    with open(tmp_path / "r" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    for task in ("atelectasis", "cardiomegaly"):
        studies = collections.defaultdict(list)
        for r in rows:
            studies[r["study"]].append((float(r[f"p_{task}"]), int(r[f"label_{task}"])))
        y = np.array([v[0][1] == 1 for v in studies.values()])
        p = np.array([max(x[0] for x in v) for v in studies.values()])
        t = out["tasks"][task]
        assert t["auroc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-9)
        assert t["auprc"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-9)
        # The CI resamples studies with the given seed: recomputed here from the saved predictions.
        # (A percentile interval need not contain the point estimate for a barely trained model.)
        assert t["auroc_ci95"] == list(metrics.bootstrap_auroc_ci(y, p, n=200, seed=0))
        assert 0.0 <= t["auroc_ci95"][0] <= t["auroc_ci95"][1] <= 1.0
        assert t["at_threshold"]["f1"] == pytest.approx(skm.f1_score(y, p >= 0.35))
        assert "at_tuned_threshold" in t and 0 <= t["calibration"]["ece"] <= 1
        assert t["paper_auroc"] == report.PAPER_AUROC[task]
    html = (tmp_path / "r" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # 2 curve figures + reliability, embedded
    assert "src=\"http" not in html and "0.858" in html
    assert (tmp_path / "r" / "report.md").read_text().startswith("# Evaluation")
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert saved["tasks"]["atelectasis"]["auroc"] == out["tasks"]["atelectasis"]["auroc"]
    # The tuned thresholds are the best-F1 ones on the holdout's study-level predictions, and
    # not those of the split reported (which would flatter the at_tuned_threshold numbers).
    member = evaluate.load_member(trained_job)
    for split, same in (("holdout", True), ("valid", False)):
        _, preds = evaluate.ensemble([evaluate.predict_records(member, split, "frontal", False)])
        for task, (y, p) in evaluate.aggregate(preds, ["atelectasis", "cardiomegaly"], "study").items():
            assert (out["tuned_thresholds"][task] == pytest.approx(metrics.best_f1_threshold(y, p), nan_ok=True)) == same


def test_ensemble_of_one_job_twice_and_tta_and_csv_mode(trained_job, sample_dir, tmp_path):
    single = evaluate.run([trained_job], split="valid", tune_split="", n_boot=50, report_dir=str(tmp_path / "a"))
    double = evaluate.run([trained_job, trained_job], split="valid", tune_split="", n_boot=50,
                          report_dir=str(tmp_path / "b"))
    assert double["tasks"]["atelectasis"]["auroc"] == pytest.approx(single["tasks"]["atelectasis"]["auroc"])
    tta = evaluate.run([trained_job], split="valid", tune_split="", tta=True, n_boot=50, report_dir=str(tmp_path / "c"))
    assert tta["images"] == single["images"]
    csv_path = os.path.join(sample_dir, make_sample.DATASET_DIR, "valid.csv")
    from_csv = evaluate.run([trained_job], csv_path=csv_path, image_root=sample_dir, tune_split="", n_boot=50,
                            report_dir=str(tmp_path / "d"))
    assert from_csv["images"] == single["images"]
    # Same preprocessing from JPEGs as through the records: the same AUROC within rounding.
    for task in ("atelectasis", "cardiomegaly"):
        assert from_csv["tasks"][task]["auroc"] == pytest.approx(single["tasks"][task]["auroc"], abs=0.02)
    # --views all on records scores every image of the split, laterals too (the header says so).
    every = evaluate.run([trained_job], split="valid", tune_split="", views="all", n_boot=20,
                         report_dir=str(tmp_path / "e"))
    with open(csv_path) as f:
        assert every["images"] == sum(1 for _ in f) - 1 > single["images"]


def test_predict_scores_batches_flags_laterals_and_reports_bad_files(trained_job, sample_dir, tmp_path):
    job = job_lib.load_job(trained_job)
    folder = tmp_path / "in"
    folder.mkdir()
    valid = os.path.join(sample_dir, make_sample.DATASET_DIR, "valid")
    frontal = sorted(p for p in (os.path.join(r, f) for r, _, fs in os.walk(valid) for f in fs) if "frontal" in p)
    shutil.copy(frontal[0], folder / "a_frontal.jpg")
    (folder / "b").mkdir()
    (folder / "b" / "view2_lateral.png").write_bytes(images.png_bytes(images.gradient(390, 320, np.uint16, 4095)))
    (folder / "c.dcm").write_bytes(images.dicom_bytes(images.gradient(64, 64, np.uint16, 4000)))
    (folder / "d.jpg").write_bytes(b"%PDF-1.4 not an image")
    (folder / "e.dcm").write_bytes(dicom_with_view("LL"))
    shutil.copy(frontal[1], folder / "lateral_scan.jpg")  # a frontal whose free name says "lateral"
    files = list_inputs([str(folder)])
    results, failures = predict.predict_files(job, files, threshold=0.35, batch_size=2)
    assert [os.path.relpath(r["path"], folder) for r in results] == [
        "a_frontal.jpg", "b/view2_lateral.png", "c.dcm", "e.dcm", "lateral_scan.jpg"]
    assert [f["reason"] for f in failures] == ["not_an_image"] and "d.jpg" in failures[0]["detail"]
    # Views come from what a file states (CheXpert name, DICOM ViewPosition), never from a word
    # in a free name; the lateral warning goes with stated laterals only.
    assert [r["view"] for r in results] == ["unknown", "lateral", "unknown", "lateral", "unknown"]
    assert [bool(r["warnings"]) for r in results] == [False, True, False, True, False]
    assert [views.view_of(r["path"], open(r["path"], "rb").read()) == views.LATERAL for r in results] == [
        False, True, False, True, False]
    for r in results:
        assert set(r["probs"]) == {"atelectasis", "cardiomegaly"}
        assert r["positive"] == [t for t, p in r["probs"].items() if p >= 0.35]
    # Batched and one-at-a-time scoring agree.
    one, _ = predict.predict_files(job, files[:1], threshold=0.35, batch_size=1)
    assert one[0]["probs"]["atelectasis"] == pytest.approx(results[0]["probs"]["atelectasis"], abs=1e-6)


def test_predict_batch_is_one_graph_called_on_bounded_chunks(trained_job, monkeypatch):
    job = job_lib.load_job(trained_job)
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 1), dtype=np.uint8)
    whole = serving_predict.predict_batch(job, x)
    assert whole.shape == (8, 2) and whole.dtype == np.float32
    out = job.model(x, training=False)  # the eager call predict_batch replaced
    np.testing.assert_allclose(whole, np.stack([np.asarray(out[t]) for t in job.tasks], axis=-1), atol=1e-6)

    job = job_lib.load_job(trained_job)
    graph, calls = serving_predict._probability_function(job), []

    def spy(images):
        calls.append(int(images.shape[0]))
        return graph(images)

    job.compiled("probabilities", lambda: spy)
    monkeypatch.setattr(serving_predict, "MAX_PIXELS_PER_CALL", 3 * 32 * 32)
    chunked = serving_predict.predict_batch(job, x)
    assert calls == [3, 3, 2]
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    # A fixed batch shape is cut the same way every time, so an image's score does not depend
    # on its neighbours (pipeline.score pads its batches for this), bit for bit.
    padded = np.zeros_like(x)
    padded[:4] = x[:4]
    np.testing.assert_array_equal(serving_predict.predict_batch(job, padded)[:4], chunked[:4])
    assert serving_predict.predict_batch(job, x[:0]).shape == (0, 2)
    assert graph.experimental_get_tracing_count() == 1  # chunks of every size share one trace
    with pytest.raises(ValueError, match=r"uint8 \(B, 32, 32, 1\)"):
        serving_predict.predict_batch(job, x.astype(np.float32))


def test_a_saved_model_folder_alone_scores_like_its_job(trained_job, sample_dir, tmp_path):
    # The export carries its config, so the folder works on its own (e.g. shipped to a hospital).
    alone = tmp_path / "shipped"
    shutil.copytree(os.path.join(trained_job, "saved_model"), alone)
    sm, job = job_lib.load_job(str(alone)), job_lib.load_job(trained_job)
    assert sm.tasks == job.tasks and not sm.is_keras and job.is_keras
    valid = os.path.join(sample_dir, make_sample.DATASET_DIR, "valid")
    files = list_inputs([valid])[:6]
    got, _ = predict.predict_files(sm, files, threshold=0.35)
    want, _ = predict.predict_files(job, files, threshold=0.35)
    for g, w in zip(got, want):
        for t in job.tasks:
            assert g["probs"][t] == pytest.approx(w["probs"][t], abs=1e-5)
    with pytest.raises(job_lib.JobError, match="Grad-CAM needs the job's model.keras"):
        gradcam.grad_cam(sm, np.zeros((32, 32, 1), np.uint8), "atelectasis")
    # It carries the training config too: evaluate finds the records it was trained on.
    member = evaluate.load_member(str(alone))
    assert member.cfg == config_lib.load_config(trained_job) and member.job.spec == job.spec
    # An export from before the spec carries config.json alone: the spec is read from that.
    os.remove(alone / "job_spec.json")
    assert job_lib.load_job(str(alone)).spec == job.spec
    os.remove(alone / "config.json")
    with pytest.raises(job_lib.JobError, match="a SavedModel without config.json or job_spec.json"):
        job_lib.load_job(str(alone))


def test_evaluate_calls_findings_at_the_threshold_the_job_spec_says(trained_job, tmp_path):
    # The spec is what every scorer reads (predict, score, the web demo): evaluate too.
    job = tmp_path / "job"
    shutil.copytree(trained_job, job)
    spec = json.loads((job / "job_spec.json").read_text())
    (job / "job_spec.json").write_text(json.dumps({**spec, "threshold": 0.9}))
    out = evaluate.run([str(job)], split="valid", tune_split="", n_boot=10, report_dir=str(tmp_path / "r"))
    assert out["threshold"] == 0.9 and out["threshold_from"] == "the job's --threshold"


def test_grad_cam_is_a_normalised_map_that_depends_on_the_image(trained_job):
    # At 32 px the tiny DenseNet's last feature map is 1x1; Grad-CAM needs a spatial map.
    cfg = dataclasses.replace(config_lib.load_config(trained_job), image_size=128)
    keras.utils.set_random_seed(0)
    job = job_lib.Job("unsaved", cfg.spec(), model_lib.probability_model(model_lib.build_model(cfg), cfg))
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (128, 128, 1)).astype(np.uint8)
    b = np.zeros((128, 128, 1), np.uint8)
    b[30:90, 10:50] = 200
    for task in ("atelectasis", "cardiomegaly"):
        cam = gradcam.grad_cam(job, a, task)
        assert cam.shape == (128, 128) and cam.min() >= 0 and cam.max() <= 1 + 1e-6
        assert cam.std() > 0.01  # a map, not a constant
    assert not np.allclose(gradcam.grad_cam(job, a, "atelectasis"), gradcam.grad_cam(job, b, "atelectasis"))
    img = heatmap.overlay(a, gradcam.grad_cam(job, a, "atelectasis"))
    assert img.size == (128, 128) and img.mode == "RGB"


@pytest.mark.parametrize("mode", ["crop", "pad"])  # squash has no offsets (its frame is the film)
def test_a_heatmap_is_drawn_where_the_model_saw_each_part_of_the_film(trained_job, tmp_path, mode):
    # A wide film (taller than wide would do too): a crop job saw its centre square, a pad
    # job all of it inside black bands, a squash job all of it stretched. The overlay's film
    # must be the film blended with the map placed by that job's own frame (top offset on
    # the short axis, left offset on the long one): a swapped or dropped offset moves the
    # map off the anatomy it was computed from.
    cfg = dataclasses.replace(config_lib.load_config(trained_job), image_size=128, records_image_size=128)
    keras.utils.set_random_seed(0)
    spec = dataclasses.replace(cfg.spec(), records_resize=mode)
    job = job_lib.Job("unsaved", spec, model_lib.probability_model(model_lib.build_model(cfg), cfg))
    film = images.gradient(90, 210)
    film[20:70, 150:190] = 255  # something off centre for the map to find
    path = str(tmp_path / "wide.png")
    with open(path, "wb") as f:
        f.write(images.png_bytes(film))
    picture, info = heatmap.heatmap(job, path, "atelectasis", 0.5, 0.35)
    from serving import preprocess as serving_preprocess

    cam = gradcam.grad_cam(job, serving_preprocess.model_input(open(path, "rb").read(), path, spec), "atelectasis")
    assert cam.max() > 0
    frame = imaging.resize_frame(90, 210, mode)
    assert (frame[0] != 0 or frame[1] != 0) == (mode != "squash")  # the offsets this test is about
    want = heatmap._blend(film, gradcam.cam_on_source(cam, frame, (90, 210), (90, 210)), 0.45)
    got = np.asarray(picture)[:90, :210]
    # Away from the white outline of the frame (drawn where it is not the whole film).
    left, right = max(frame[1], 0), min(frame[1] + frame[3], 210)
    away = np.ones((90, 210), bool)
    if mode != "squash":
        for band in (np.s_[:2], np.s_[-2:], np.s_[:, max(left - 2, 0):left + 2], np.s_[:, right - 2:right + 2]):
            away[band] = False
    np.testing.assert_array_equal(got[away], want[away])
    if mode == "crop":  # the cut-off sides are plain film, uncoloured
        sides = got[:, :left - 2]
        assert (sides[..., 0] == sides[..., 1]).all() and (sides[..., 1] == sides[..., 2]).all()
        assert (sides[..., 0] == film[:, :left - 2]).all()
    assert info["film_box"] == "0,0,210,90"


def test_predict_cli_end_to_end(trained_job, sample_dir, tmp_path):
    valid = os.path.join(sample_dir, make_sample.DATASET_DIR, "valid")
    out = subprocess.run([sys.executable, "-m", "trainer.predict", f"--job_dir={trained_job}",
                          "--heatmap=cardiomegaly", f"--out_dir={tmp_path}", valid],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads((tmp_path / "predictions.json").read_text())
    assert len(data["results"]) > 10 and not data["failures"]
    # One overlay per image: every valid frontal is a view1_frontal.jpg, once all drawn to one file.
    overlays = [f for f in os.listdir(tmp_path) if f.endswith(".gradcam_cardiomegaly.png")]
    assert sorted(overlays) == sorted(r["overlay"] for r in data["results"]) and len(overlays) == len(data["results"])
    assert "positive" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "trainer.predict", "--job_dir=/nonexistent", "x.jpg"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert bad.returncode == 2 and "/nonexistent: no config.json" in bad.stderr
