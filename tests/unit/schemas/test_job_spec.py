"""schemas.job_spec: what a trained model carries for any scorer, read tolerantly (TF-free)."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from schemas import chexpert, job_spec
from schemas.job_spec import JobSpec
from trainer import config as config_lib


def _config(**changes) -> config_lib.TrainConfig:
    policy = chexpert.resolve_policies()
    policy["cardiomegaly"] = chexpert.MULTICLASS
    cfg = config_lib.TrainConfig(tasks=("atelectasis", "cardiomegaly"), records_dir="records", job_dir="job",
                                 policy=policy, image_size=64, records_image_size=128, records_resize="pad",
                                 views="all", threshold=0.4, backbone="tiny",
                                 provenance={"synthetic": True, "input_dir": "data/synthetic"})
    return dataclasses.replace(cfg, **changes)


def test_the_spec_of_a_config_round_trips_through_json():
    spec = _config().spec()
    assert spec.tasks == ("atelectasis", "cardiomegaly")
    assert spec.heads == {"atelectasis": "binary", "cardiomegaly": "multiclass"}
    assert (spec.image_size, spec.records_image_size, spec.records_resize) == (64, 128, "pad")
    assert (spec.views, spec.threshold, spec.backbone, spec.synthetic) == ("all", 0.4, "tiny", True)
    assert spec.spec_version == job_spec.SPEC_VERSION
    assert JobSpec.from_json(spec.to_json()) == spec
    # The spec is derived once: from a TrainConfig, and from an older job's config.json text.
    assert job_spec.from_train_config(json.loads(_config().to_json())) == spec


def test_unknown_keys_are_a_warning_naming_them_not_a_type_error(caplog):
    d = json.loads(_config().spec().to_json())
    d.update(spec_version="1.7", calibration={"kind": "platt"}, zz_new=1)
    with caplog.at_level(logging.WARNING, logger="schemas.job_spec"):
        spec = JobSpec.from_json(json.dumps(d), "jobs/unknown-keys/job_spec.json")
        # A scorer reads it again in each worker: still one warning per file and process.
        assert JobSpec.from_json(json.dumps(d), "jobs/unknown-keys/job_spec.json") == spec
    assert spec.tasks == ("atelectasis", "cardiomegaly") and spec.spec_version == "1.7"
    (record,) = caplog.records
    assert "jobs/unknown-keys/job_spec.json" in record.getMessage() and "calibration, zz_new" in record.getMessage()


def test_missing_optional_keys_take_their_defaults():
    spec = JobSpec.from_json(json.dumps({"tasks": ["edema"], "image_size": 32}))
    assert spec.heads == {"edema": "binary"} and spec.records_image_size == 32
    assert (spec.records_resize, spec.views, spec.threshold, spec.backbone) == ("squash", "frontal", 0.35,
                                                                                "densenet121")
    assert spec.provenance == {} and spec.synthetic is None and spec.spec_version == job_spec.SPEC_VERSION


@pytest.mark.parametrize("text,message", [
    (json.dumps({"tasks": ["edema"], "image_size": 32, "spec_version": "2.0"}), "spec_version 2.0 is newer"),
    (json.dumps({"tasks": ["edema"]}), "no image_size"),
    (json.dumps({"tasks": ["edema"], "image_size": 32, "heads": {"edema": "softmax"}}), "unknown head kind"),
    (json.dumps(["edema"]), "not a job spec"),
    ("{not json", "unreadable"),
])
def test_a_spec_that_cannot_be_read_is_a_clear_error(text, message):
    with pytest.raises(job_spec.JobSpecError, match=message):
        JobSpec.from_json(text, "job_spec.json")


@pytest.mark.parametrize("change,key", [
    ({"image_size": "big"}, "image_size"), ({"image_size": 32.5}, "image_size"), ({"image_size": True}, "image_size"),
    ({"records_image_size": -1}, "records_image_size"), ({"tasks": 5}, "tasks"), ({"tasks": []}, "tasks"),
    ({"tasks": ["not_an_observation"]}, "tasks"), ({"threshold": "x"}, "threshold"), ({"threshold": 1.5}, "threshold"),
    ({"threshold": None}, "threshold"), ({"heads": ["binary"]}, "heads"), ({"policy": "ones"}, "policy"),
    ({"provenance": 3}, "provenance"), ({"views": "lateral"}, "views"), ({"backbone": 121}, "backbone"),
])
def test_a_hand_edited_value_of_the_wrong_type_is_an_error_naming_file_and_key(change, key):
    d = {"tasks": ["edema"], "image_size": 32, **change}
    with pytest.raises(job_spec.JobSpecError, match=rf"^jobs/x/job_spec.json: {key}=.*; expected "):
        JobSpec.from_json(json.dumps(d), "jobs/x/job_spec.json")


def test_read_prefers_the_spec_and_falls_back_to_an_older_jobs_config(tmp_path):
    assert job_spec.read(str(tmp_path)) is None
    cfg = _config()
    (tmp_path / "config.json").write_text(cfg.to_json())
    assert job_spec.read(str(tmp_path)) == cfg.spec()  # a job trained before the spec
    (tmp_path / "job_spec.json").write_text(dataclasses.replace(cfg.spec(), threshold=0.5).to_json())
    assert job_spec.read(str(tmp_path)).threshold == 0.5
    (tmp_path / "job_spec.json").write_text("[]")
    with pytest.raises(job_spec.JobSpecError, match="job_spec.json: not a job spec"):
        job_spec.read(str(tmp_path))


def test_a_train_config_with_a_newer_trainers_key_loads_with_a_warning(caplog):
    d = json.loads(_config().to_json())
    d["a_future_setting"] = 3
    with caplog.at_level(logging.WARNING, logger="trainer.config"):
        cfg = config_lib.TrainConfig.from_json(json.dumps(d))
    assert cfg == _config() and "a_future_setting" in caplog.text


def test_the_synthetic_sentence_names_the_generator_of_the_records_format():
    base = {"synthetic": True, "input_dir": "data/x", "trained": "2026-11-26T10:00:00+00:00"}
    assert "made by pipeline.make_sample)" in job_spec.provenance_line(base)  # a job from before "dataset"
    assert "made by pipeline.make_sample)" in job_spec.provenance_line({**base, "dataset": "chexpert"})
    for fmt in ("nih", "mimic"):
        assert "made by pipeline.make_external)" in job_spec.provenance_line({**base, "dataset": fmt})
    assert job_spec.generator_of(None) == "pipeline.make_sample"
