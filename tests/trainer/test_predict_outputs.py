"""trainer.predict's outputs for CheXpert-named inputs: one overlay per input (never one
file for every ``view1_frontal.jpg``), overlays at the source's resolution with a colour
bar and a caption, the view of each input, the study-level CSV and the model's provenance."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

import tests
from core import imaging
from pipeline import make_sample
from tests import retuned_job, studies_folder
from trainer import predict

ROOT = tests.ROOT
TASK = "atelectasis"


@pytest.fixture(scope="module")
def predicted(trained_job, sample_dir, tmp_path_factory):
    """``python -m trainer.predict --heatmap`` once on ``tests.studies_folder``'s layout."""
    base = tmp_path_factory.mktemp("predict_studies")
    folder = studies_folder.build(sample_dir, str(base / "in"))
    out = base / "out"
    proc = subprocess.run([sys.executable, "-m", "trainer.predict", f"--job_dir={trained_job}", f"--heatmap={TASK}",
                           f"--out_dir={out}", folder], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "predictions.csv", newline="") as f:
        rows = {os.path.relpath(r["path"], folder): r for r in csv.DictReader(f)}
    return types.SimpleNamespace(folder=folder, out=out, proc=proc, rows=rows,
                                 doc=json.loads((out / "predictions.json").read_text()))


def test_frontals_that_share_a_file_name_get_one_overlay_each_named_by_their_path(predicted):
    assert sorted(predicted.rows) == sorted(studies_folder.ALL)
    names = [predicted.rows[rel]["overlay"] for rel in studies_folder.SAME_NAME_FRONTALS]
    assert names == [f"patient{i:05d}_study1_view1_frontal.gradcam_{TASK}.png" for i in range(1, 5)]
    every = [r["overlay"] for r in predicted.rows.values()]
    assert len(set(every)) == len(every) == len(studies_folder.ALL)
    assert sorted(f for f in os.listdir(predicted.out) if f.endswith(".png")) == sorted(every)
    # The JSON names the same files, and the console tells the inputs apart by their paths.
    assert {r["overlay"] for r in predicted.doc["results"]} == set(every)
    lines = predicted.proc.stdout.splitlines()
    for rel in studies_folder.SAME_NAME_FRONTALS:
        assert sum(line.startswith(rel + " ") for line in lines) == 1, predicted.proc.stdout
    assert predicted.doc["input_root"] == predicted.folder


def test_overlays_have_the_source_resolution_a_colour_bar_and_a_caption(predicted):
    for rel, row in predicted.rows.items():
        with Image.open(os.path.join(predicted.folder, rel)) as src:
            source_size = src.size
        with Image.open(predicted.out / row["overlay"]) as im:
            info, overlay = dict(im.text), np.asarray(im.convert("RGB"))
        left, top, right, bottom = map(int, info["film_box"].split(","))
        # The film sits at the top left, one overlay pixel per source pixel; the colour bar and
        # the caption are in margins, so they cover none of the film.
        assert (left, top) == (0, 0) and (right - left, bottom - top) == source_size
        assert overlay.shape[1] > right and overlay.shape[0] > bottom
        caption = info["caption"]
        p = float(row[f"p_{TASK}"])
        assert f"Atelectasis: P(positive) = {p:.3f}" in caption and "threshold 0.35" in caption
        assert ("POSITIVE" if p >= 0.35 else "negative") in caption
        assert "SYNTHETIC-TRAINED MODEL" in caption
        assert "squash" in caption  # the records' resize mode, and how the map went back
        # The colour bar's ends: jet's dark blue and dark red, right of the film.
        panel = overlay[:bottom, right:].reshape(-1, 3).astype(int)
        for end in ((0, 0, 127), (127, 0, 0)):
            assert (np.abs(panel - end).sum(axis=1) <= 12).any(), end


def test_study_csv_is_the_max_over_a_studys_frontals_and_leaves_out_files_in_no_study(predicted):
    with open(predicted.out / "predictions_studies.csv", newline="") as f:
        reader = csv.reader(f)
        header, body = next(reader), list(reader)
    assert header == ["Study", "Cardiomegaly", "Atelectasis"]  # the job's tasks, in CSV order
    got = {r[0]: dict(zip(header[1:], map(float, r[1:]))) for r in body}
    folder = predicted.folder
    assert sorted(got) == [f"{folder}/patient{i:05d}/study1" for i in range(1, 7)]
    p = lambda rel, task: float(predicted.rows[rel][f"p_{task}"])  # noqa: E731
    for task, name in (("atelectasis", "Atelectasis"), ("cardiomegaly", "Cardiomegaly")):
        two = got[f"{folder}/patient00005/study1"][name]
        assert two == pytest.approx(max(p(rel, task) for rel in studies_folder.TWO_FRONTALS), abs=1e-9)
        lateral = got[f"{folder}/patient00006/study1"][name]
        assert lateral == pytest.approx(p(studies_folder.LATERAL_ONLY, task), abs=1e-9)
    five = next(s for s in predicted.doc["studies"]["rows"] if s["study"].endswith("patient00005/study1"))
    assert five["basis"] == "frontal" and [os.path.relpath(x, folder) for x in five["left_out"]] == [
        studies_folder.ITS_LATERAL]
    assert predicted.doc["studies"]["outside"] == [os.path.join(folder, studies_folder.LOOSE)]
    assert "1 image(s) not in a .../patientNNNNN/studyM/ folder" in predicted.proc.stdout


def test_predictions_carry_the_view_and_say_the_model_was_trained_on_synthetic_data(predicted):
    views = {rel: r["view"] for rel, r in predicted.rows.items()}
    assert views[studies_folder.LOOSE] == "unknown" and views[studies_folder.LATERAL_ONLY] == "lateral"
    assert views[studies_folder.TWO_FRONTALS[1]] == "frontal"
    # The warning goes with a lateral view only, never with an unknown one.
    assert {rel for rel, r in predicted.rows.items() if r["warnings"]} == {
        studies_folder.ITS_LATERAL, studies_folder.LATERAL_ONLY}
    assert {r["model_data"] for r in predicted.rows.values()} == {"synthetic"}
    doc = predicted.doc
    assert doc["model_data"] == "synthetic" and doc["model_provenance"]["synthetic"] is True
    assert "SYNTHETIC" in doc["provenance"]
    assert "WARNING: the model was trained on SYNTHETIC data" in predicted.proc.stderr


@pytest.mark.parametrize("mode", imaging.RESIZE_MODES)
@pytest.mark.parametrize("source, decoded", [((90, 60), (90, 60)), ((60, 96), (15, 24))])
def test_a_map_on_the_model_input_goes_back_onto_the_source_where_it_came_from(mode, source, decoded):
    from serving import gradcam

    # A linear ramp survives resizing (down, then bilinear up) except at the borders, so the
    # map sent through resize and back must equal the ramp on the source, in the interior.
    (h, w), (hd, wd), size = source, decoded, 32
    yy, xx = np.mgrid[0:hd, 0:wd]
    ramp = ((yy + 0.5) / hd * 0.6 + (xx + 0.5) / wd * 0.4) * 250
    cam = imaging.resize(np.round(ramp).astype(np.uint8), size, mode).astype(np.float32) / 250
    back = gradcam.cam_on_source(cam, imaging.resize_frame(hd, wd, mode), (hd, wd), (h, w))
    assert back.shape == (h, w) and back.dtype == np.float32
    sy, sx = np.mgrid[0:h, 0:w]
    want = (sy + 0.5) / h * 0.6 + (sx + 0.5) / w * 0.4
    seen = ~np.isnan(back)
    if mode == "crop" and h != w:
        # Only the centre square was seen: the long axis' ends have no map, the square has.
        top, left, fh, fw = imaging.resize_frame(hd, wd, mode)
        cy, cx = (np.arange(h) + 0.5) * hd / h, (np.arange(w) + 0.5) * wd / w
        inside = ((cy >= top) & (cy < top + fh))[:, None] & ((cx >= left) & (cx < left + fw))[None, :]
        np.testing.assert_array_equal(seen, inside)
        assert seen.sum() == pytest.approx(min(h, w) ** 2, rel=0.05)
    else:
        assert seen.all()
    band = slice(h // 8, h - h // 8), slice(w // 8, w - w // 8)
    inner = seen[band]
    np.testing.assert_allclose(back[band][inner], want[band][inner], atol=0.03)


def test_overlay_names_are_unique_even_when_paths_flatten_alike():
    from trainer import predict

    paths = ["/d/a/b_c.jpg", "/d/a_b/c.jpg", "/d/x.jpg", "/d/x.png", "/d/X.jpg",
             "/d/p/patient00001/study1/view1_frontal.jpg", "/d/q/patient00001/study1/view1_frontal.jpg"]
    names = predict.overlay_names(paths, TASK)
    assert len({n.lower() for n in names.values()}) == len(paths)  # unique on case-blind disks too
    assert names["/d/a/b_c.jpg"] == f"a_b_c.gradcam_{TASK}.png"
    assert names["/d/p/patient00001/study1/view1_frontal.jpg"] == f"p_patient00001_study1_view1_frontal.gradcam_{TASK}.png"
    assert all(n.endswith(f".gradcam_{TASK}.png") and "/" not in n for n in names.values())
    # One file alone still keeps its CheXpert study in the name.
    one = predict.overlay_names(["/d/p/patient00001/study1/view1_frontal.jpg"], TASK)
    assert list(one.values()) == [f"patient00001_study1_view1_frontal.gradcam_{TASK}.png"]


def test_an_earlier_runs_predictions_are_refused_or_replaced_whole(trained_job, sample_dir, tmp_path):
    """Reusing an output folder must not mix two runs: without --overwrite it is refused;
    with it, the earlier run's overlays go too (none of another model left behind)."""
    from serving import job as job_lib

    job = job_lib.load_job(trained_job)
    valid = os.path.join(sample_dir, make_sample.DATASET_DIR, "valid")
    out = str(tmp_path / "p")
    first = predict.run(job, [valid], out, heatmap_task="atelectasis")
    drawn = {r["overlay"] for r in first["results"] if r["overlay"]}
    assert drawn and drawn <= set(os.listdir(out))
    before = {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)}
    with pytest.raises(predict.OutputExistsError, match="holds the predictions of an earlier run"):
        predict.run(job, [os.path.join(valid, sorted(os.listdir(valid))[0])], out, heatmap_task="atelectasis")
    assert {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)} == before
    one = os.path.join(valid, sorted(os.listdir(valid))[0])
    second = predict.run(job, [one], out, heatmap_task="atelectasis", overwrite=True)
    listed = {r["overlay"] for r in second["results"] if r["overlay"]}
    assert {n for n in os.listdir(out) if n.endswith(".png")} == listed


def test_predictions_are_called_at_the_jobs_own_threshold_unless_one_is_given(trained_job, sample_dir, tmp_path):
    """predictions.csv/.json call positives at the job's threshold (the fixture job's is the
    default 0.35, so a copy gets another); an explicit threshold still wins."""
    from serving import job as job_lib

    valid = os.path.join(sample_dir, make_sample.DATASET_DIR, "valid")
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(valid) for f in fs)[:12]
    results, _ = predict.predict_files(job_lib.load_job(trained_job), files, threshold=retuned_job.DEFAULT)
    t = retuned_job.separating(p for r in results for p in r["probs"].values())
    job = job_lib.load_job(retuned_job.copy(trained_job, str(tmp_path / "job"), t))
    assert job.spec.threshold == t
    calls = {}
    for out, given, want in (("own", None, t), ("given", retuned_job.DEFAULT, retuned_job.DEFAULT)):
        doc = predict.run(job, files, str(tmp_path / out), threshold=given)
        assert doc["threshold"] == want
        with open(tmp_path / out / "predictions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["path"] for r in rows] == [r["path"] for r in doc["results"]] == files
        for row, r in zip(rows, doc["results"]):
            assert set(r["positive"]) == {k for k, p in r["probs"].items() if p >= want}
            assert set(filter(None, row["positive"].split(";"))) == set(r["positive"])
        calls[out] = [set(r["positive"]) for r in doc["results"]]
    assert calls["own"] != calls["given"]  # the threshold chosen makes a difference


@pytest.mark.parametrize("p,want", [(0.349753, "0.3498"), (0.350326, "0.3503"), (0.35, "0.35"),
                                    (0.3449, "0.345"), (0.9, "0.900"), (0.34999999, "0.34999999")])
def test_a_probability_is_never_shown_on_the_wrong_side_of_the_threshold(p, want):
    from schemas import job_spec

    assert job_spec.format_probability(p, 0.35) == want
