"""U-SelfTrained as a records-job stage: `build_records --labeller JOB_DIR`."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf

from core import commit
from pipeline import build_records
from schemas import chexpert
from schemas import example as example_lib
from schemas import example_tf

CONS = chexpert.OBSERVATION_INDEX["consolidation"]
UNC = int(chexpert.Code.UNCERTAIN)


@pytest.fixture(scope="module")
def labeller_job(records_dir, tmp_path_factory) -> str:
    """A tiny consolidation labeller trained with consolidation=ignore (the records' default)."""
    from trainer import config as config_lib
    from trainer import train

    job = str(tmp_path_factory.mktemp("labeller"))
    cfg = config_lib.make_config(pathology="consolidation,edema", records_dir=records_dir, job_dir=job, image_size=32,
                                 backbone="tiny", epochs=1, steps_per_epoch=4, batch_size=8, learning_rate=1e-3,
                                 jit_compile=False)  # XLA's compile: ~10 s, for nothing this module tests
    assert cfg.policy["consolidation"] == "ignore"
    train.run(cfg)
    return job


@pytest.fixture(scope="module")
def taught(sample_dir, labeller_job, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("records_taught"))
    manifest = build_records.run([f"--input_dir={sample_dir}", f"--output_dir={out}", "--image_size=32",
                                  "--num_shards=2", "--holdout_fraction=0.2", f"--labeller={labeller_job}",
                                  "--labeller_batch_size=8", "--runner=DirectRunner"])
    return out, manifest


def _records(out, manifest):
    files = [os.path.join(out, n) for sp in manifest["splits"].values() for n in sp["shards"]]
    return {r[example_lib.SOURCE_PATH].decode(): r
            for r in tf.data.TFRecordDataset(files).map(example_tf.parse).as_numpy_iterator()}


def test_labeller_relabels_only_uncertain_entries_with_its_probability(taught, records_dir, labeller_job, sample_dir):
    from serving import job as job_lib
    from serving import preprocess
    from serving.predict import predict_batch

    out, manifest = taught
    assert manifest["policy"]["consolidation"] == "self_trained"
    plain = commit.read_manifest(records_dir)
    got, before = _records(out, manifest), _records(records_dir, plain)
    assert set(got) == set(before)
    uncertain = [p for p, r in got.items() if r[example_lib.LABELS_RAW][CONS] == UNC]
    assert 5 <= len(uncertain) < len(got)
    job = job_lib.load_job(labeller_job)
    for path, rec in got.items():
        labeller = rec[example_lib.LABELS_LABELLER]
        old = before[path]
        # Known labels and every other observation: exactly the records built without a labeller.
        np.testing.assert_array_equal(rec[example_lib.LABELS_RAW], old[example_lib.LABELS_RAW])
        np.testing.assert_array_equal(rec["image"], old["image"])
        others = np.arange(14) != CONS
        np.testing.assert_array_equal(rec[example_lib.LABELS_TARGET][others], old[example_lib.LABELS_TARGET][others])
        np.testing.assert_array_equal(rec[example_lib.LABELS_MASK][others], old[example_lib.LABELS_MASK][others])
        np.testing.assert_array_equal(labeller[others], chexpert.NO_LABELLER_VALUE)
        if path not in uncertain:
            assert labeller[CONS] == chexpert.NO_LABELLER_VALUE
            assert rec[example_lib.LABELS_TARGET][CONS] == old[example_lib.LABELS_TARGET][CONS]
            assert rec[example_lib.LABELS_MASK][CONS] == old[example_lib.LABELS_MASK][CONS]
            continue
        # Uncertain: was masked (ignore); now the labeller's P(positive), in the loss.
        assert old[example_lib.LABELS_MASK][CONS] == 0 and rec[example_lib.LABELS_MASK][CONS] == 1
        assert rec[example_lib.LABELS_TARGET][CONS] == labeller[CONS]
    # The stored values are the labeller's predictions on those images (same preprocessing).
    with open(os.path.join(sample_dir, uncertain[0]), "rb") as f:
        x = preprocess.model_input(f.read(), uncertain[0], job.spec)
    want = predict_batch(job, x[None])[0, job.tasks.index("consolidation")]
    assert got[uncertain[0]][example_lib.LABELS_LABELLER][CONS] == pytest.approx(want, abs=1e-5)
    # The manifest names the labeller (under its old key, ``teacher``) and counts what it relabelled.
    t = manifest["teacher"]
    assert t["job_dir"] == os.path.abspath(labeller_job)
    with open(os.path.join(labeller_job, "model.keras"), "rb") as f:
        assert t["model_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert t["observations"] == ["consolidation"] and t["trained_policy"] == {"consolidation": "ignore"}
    assert sum(per["consolidation"] for per in t["relabelled"].values()) == len(uncertain)
    assert manifest["written"] == plain["written"] and manifest["rejected"] == plain["rejected"]


def test_trainer_reads_the_soft_targets(taught):
    from trainer import config as config_lib
    from trainer import input as input_lib

    out, manifest = taught
    cfg = config_lib.make_config(pathology="consolidation", records_dir=out, job_dir="unused", image_size=32,
                                 policy="consolidation=self_trained", views="all")
    files = input_lib.shard_files(out, "train", config_lib.read_manifest(out))
    batches = list(input_lib.make_dataset(files, cfg, training=False, batch_size=64).as_numpy_iterator())
    targets = np.concatenate([b["targets"][:, 0] for b in batches])
    masks = np.concatenate([b["masks"][:, 0] for b in batches])
    raw = np.concatenate([b["raw"][:, 0] for b in batches])
    soft = raw == UNC
    assert soft.any() and (masks[soft] == 1).all()
    assert ((targets[soft] > 0) & (targets[soft] < 1)).all()
    assert set(np.unique(targets[~soft])) <= {0.0, 1.0}


def test_labeller_flag_errors_name_the_problem(sample_dir, trained_job, labeller_job, tmp_path):
    base = [f"--input_dir={sample_dir}", f"--output_dir={tmp_path}", "--image_size=32"]
    with pytest.raises(build_records.ConfigError, match="predicts cardiomegaly, atelectasis but not consolidation"):
        build_records.run(base + [f"--labeller={trained_job}"])
    with pytest.raises(build_records.ConfigError, match="no observation uses the self_trained policy"):
        build_records.run(base + [f"--labeller={labeller_job}", "--policy=consolidation=ignore"])
    with pytest.raises(build_records.ConfigError, match="no config.json or model.keras"):
        build_records.run(base + [f"--labeller={tmp_path}"])
    with pytest.raises(build_records.ConfigError, match="local \\(or mounted\\) folder"):
        build_records.run(base + ["--labeller=gs://bucket/jobs/labeller"])
    with pytest.raises(build_records.ConfigError, match="needs a labeller"):
        build_records.run(base + ["--policy=consolidation=self_trained"])
    assert not os.path.exists(os.path.join(tmp_path, "manifest.json"))


def test_incremental_build_with_a_labeller_equals_a_full_rebuild(sample_dir, labeller_job, tmp_path):
    import csv
    import shutil

    from pipeline import make_sample

    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    labeller = str(tmp_path / "labeller")  # a copy: retrained in place below
    shutil.copytree(labeller_job, labeller)
    args = [f"--input_dir={data}", "--image_size=32", "--num_shards=2", f"--labeller={labeller}",
            "--runner=DirectRunner"]
    out = str(tmp_path / "inc")
    build_records.run([f"--output_dir={out}", *args])
    csv_path = data / make_sample.DATASET_DIR / "train.csv"
    with open(csv_path) as f:
        rows = list(csv.reader(f))
    col = rows[0].index("Consolidation")
    unc = next(i for i, r in enumerate(rows[1:], 1) if r[col] == "-1.0")
    known = next(i for i, r in enumerate(rows[1:], 1) if r[col] == "")
    rows[unc][col], rows[known][col] = "1.0", "-1.0"  # one entry loses its labeller value, one gains one
    with open(csv_path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    inc = build_records.run([f"--output_dir={out}", "--incremental", *args])
    assert inc["incremental"]["processed"] == 2
    full = build_records.run([f"--output_dir={tmp_path / 'full'}", *args])
    a, b = _records(out, inc), _records(str(tmp_path / "full"), full)
    assert set(a) == set(b)
    for path in a:
        for key in (example_lib.LABELS_TARGET, example_lib.LABELS_MASK, example_lib.LABELS_LABELLER):
            np.testing.assert_array_equal(a[path][key], b[path][key])
    assert a[rows[known][0]][example_lib.LABELS_LABELLER][CONS] >= 0
    assert a[rows[unc][0]][example_lib.LABELS_LABELLER][CONS] == chexpert.NO_LABELLER_VALUE
    assert inc["teacher"]["relabelled"] == full["teacher"]["relabelled"]
    assert inc["splits"]["train"]["target_counts"] == full["splits"]["train"]["target_counts"]
    # The labeller retrained at the same path (other weights, same files): a changed input, so
    # the rerun is not "nothing new" and its records hold the new model's probabilities.
    import keras

    model = keras.models.load_model(os.path.join(labeller, "model.keras"))
    model.set_weights([w * 0.5 for w in model.get_weights()])
    model.save(os.path.join(labeller, "model.keras"))
    again = build_records.run([f"--output_dir={out}", "--incremental", *args])
    assert not again.get("nothing_new")
    assert again["teacher"]["model_sha256"] != inc["teacher"]["model_sha256"]
    assert again["teacher"]["relabelled"] == inc["teacher"]["relabelled"]  # the same entries, relabelled anew
    c = _records(out, again)
    changed = [p for p in c if c[p][example_lib.LABELS_LABELLER][CONS] >= 0
               and c[p][example_lib.LABELS_LABELLER][CONS] != a[p][example_lib.LABELS_LABELLER][CONS]]
    assert changed


def test_the_old_teacher_flags_still_work_and_warn(sample_dir, labeller_job, taught, tmp_path, capsys):
    """``--teacher``/``--teacher_batch_size``, the flags' names before ``--labeller``, build
    the same records for a release, each with a one-line deprecation warning on stderr."""
    out = str(tmp_path / "old_flags")
    manifest = build_records.run([f"--input_dir={sample_dir}", f"--output_dir={out}", "--image_size=32",
                                  "--num_shards=2", "--holdout_fraction=0.2", f"--teacher={labeller_job}",
                                  "--teacher_batch_size=8", "--runner=DirectRunner"])
    err = capsys.readouterr().err
    assert "--teacher is deprecated; use --labeller" in err
    assert "--teacher_batch_size is deprecated; use --labeller_batch_size" in err
    assert manifest["options"]["teacher"] == labeller_job and manifest["options"]["teacher_batch_size"] == 8
    a, b = _records(out, manifest), _records(*taught)
    assert set(a) == set(b)
    for path in a:
        np.testing.assert_array_equal(a[path][example_lib.LABELS_LABELLER], b[path][example_lib.LABELS_LABELLER])
