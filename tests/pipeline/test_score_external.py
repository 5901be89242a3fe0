"""pipeline.score --input_dir on NIH and MIMIC folders: the label file lists the inputs,
rows that do not fit are dead letters, views come from ViewPosition, studies.csv holds the
dataset's studies, and reruns are "nothing new"."""

from __future__ import annotations

import csv
import json
import os

import pytest

from core.errors import ConfigError
from pipeline import score
from tests import external_folders as ef


def _score(job, out, *extra):
    return score.run([f"--job_dir={job}", f"--output_dir={out}", "--runner=DirectRunner", *extra])


def _read(out, key):
    with open(os.path.join(out, "manifest.json")) as f:
        m = json.load(f)
    return os.path.join(out, m["outputs"][key])


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_nih_folder_rows_are_inputs_bad_rows_dead_letters_and_studies_its_follow_ups(trained_job, tmp_path, capsys):
    folder = ef.write_nih(str(tmp_path / "in"))
    out = str(tmp_path / "out")
    assert score.main([f"--job_dir={trained_job}", f"--output_dir={out}", "--runner=DirectRunner",
                       f"--input_dir={tmp_path / 'in'}", "--max_reject_fraction=0.5"]) == 0
    with open(os.path.join(out, "manifest.json")) as f:
        m = json.load(f)
    # 11 rows: the bad age is rejected by the listing, the missing image by the reader; the
    # printed numbers add up both ways (11 = 9 + 2 = 10 read + 0 carried + 1 unread).
    assert (m["inputs"], m["scored"], m["rejected"]) == (11, 9, 2)
    assert ("11 inputs: 9 scored, 2 rejected (bad_age=1, missing_file=1); of the inputs, 10 read this run, 0 carried "
            "over from the committed run, 1 label-file row rejected before any image was read") in capsys.readouterr().out
    assert m["rejected_by_reason"] == {"bad_age": 1, "missing_file": 1}
    rejects = _jsonl(_read(out, "rejected"))
    assert {(r["key"], r["reason"]) for r in rejects} == {(ef.NIH_BAD, "bad_age"),
                                                          ("images/" + ef.NIH_MISSING, "missing_file")}
    rows = _jsonl(_read(out, "scores_jsonl"))
    assert all(r["path"].startswith("images_001/images/") and r["view"] == "frontal" for r in rows)
    with open(_read(out, "studies_csv")) as f:
        studies = [r["Study"] for r in csv.DictReader(f)]
    # NIH names no study folder: its PATIENT/FOLLOWUP ids, one image each.
    assert studies == sorted(f"{r[3]:08d}/{r[2]:03d}" for r in ef.NIH_ROWS if r[0] not in (ef.NIH_BAD, ef.NIH_MISSING))
    assert m["studies"] == {"studies": 9, "without_frontal": 0, "outside": 0}
    again = _score(trained_job, out, f"--input_dir={folder}", "--format=nih", "--max_reject_fraction=0.5",
                   "--incremental")
    assert again["nothing_new"]


def test_mimic_views_from_view_position_and_studies_the_max_over_frontals(trained_job, tmp_path):
    folder = ef.write_mimic(str(tmp_path))
    out = str(tmp_path / "out")
    m = _score(trained_job, out, f"--input_dir={folder}")
    assert (m["inputs"], m["scored"], m["rejected"]) == (11, 11, 0)
    rows = {r["path"]: r for r in _jsonl(_read(out, "scores_jsonl"))}
    views = {os.path.basename(p)[:-4]: r["view"] for p, r in rows.items()}
    assert views == {"d1a": "frontal", "d1b": "frontal", "d1c": "lateral", "d2a": "frontal", "d3a": "frontal",
                     "d3b": "lateral", "d4a": "lateral", "d5a": "frontal", "d5b": "frontal", "d6a": "frontal",
                     "d7a": "frontal"}
    with open(_read(out, "studies_csv")) as f:
        table = {r["Study"]: r for r in csv.DictReader(f)}
    first = os.path.dirname(ef.mimic_image(10000001, 50000001, "x"))
    assert len(table) == 7 and first in table
    frontals = [rows[f"{first}/{d}.jpg"]["probabilities"]["atelectasis"] for d in ("d1a", "d1b")]
    assert float(table[first]["Atelectasis"]) == pytest.approx(max(frontals), abs=1e-6)
    assert m["studies"]["without_frontal"] == 1  # 50000004: a lateral only


def test_input_dir_is_one_of_three_sources(trained_job, tmp_path):
    with pytest.raises(ConfigError, match="exactly one of --input_pattern, --csv and --input_dir"):
        _score(trained_job, tmp_path / "o", f"--input_dir={tmp_path}", f"--input_pattern={tmp_path}/*.png")
    ef.write_nih(str(tmp_path))
    with pytest.raises(ConfigError, match="--format=mimic"):
        _score(trained_job, tmp_path / "o", f"--input_dir={tmp_path}", "--format=mimic")


def test_a_chexpert_input_dir_lists_what_its_csvs_list(sample_dir):
    from pipeline import make_sample

    inputs, rejected, study_ids = score.dataset_inputs(sample_dir, None)
    assert not rejected and not study_ids
    both = []
    for name in ("train.csv", "valid.csv"):
        more, _ = score.csv_inputs(os.path.join(sample_dir, make_sample.DATASET_DIR, name), sample_dir, set(), name)
        both += more
    assert inputs == both and all(i.stat != "missing" for i in inputs)
    assert {i.key.split("/")[1] for i in inputs} == {"train", "valid"}
