"""serving: one model-input preparation for every path, and jobs of every age load."""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from core import imaging, tfrecord
from schemas import chexpert
from schemas import example as example_lib
from serving import export, preprocess
from serving import job as job_lib
from serving.predict import predict_batch
from tests import images
from trainer import config as config_lib
from trainer import input as input_lib

STORED, SIZE = 48, 32  # records stored larger than the model's input: every path resizes


def _gradient_records(tmp_path, pixels: np.ndarray) -> str:
    """One raw-encoded record of ``pixels`` (STORED x STORED), written as the records job does."""
    cells = {c: "" for c in chexpert.CSV_COLUMNS}
    cells.update({"Path": "CheXpert-v1.0-small/valid/patient00001/study1/view1_frontal.jpg", "Sex": "Female",
                  "Age": "63", "Frontal/Lateral": "Frontal", "AP/PA": "AP", "Atelectasis": "1.0"})
    row = chexpert.parse_row(cells)
    draws = chexpert.draws_for(row.path)
    targets, mask = chexpert.apply_policy(np.array(row.codes), draws, chexpert.policy_matrix(chexpert.resolve_policies()))
    path = str(tmp_path / "valid-00000-of-00001.tfrecord")
    with open(path, "wb") as f:
        tfrecord.write_record(f, example_lib.to_example(row, encoded=pixels.tobytes(), image_format="raw", height=STORED,
                                                        width=STORED, draws=draws, targets=targets, mask=mask))
    return path


def test_tf_data_export_and_inference_prepare_the_same_pixels(trained_job, tmp_path):
    source = images.gradient(STORED, STORED)  # a ramp: any difference between resizes shows
    assert len(np.unique(source)) > 100
    png = images.png_bytes(source)
    cfg = dataclasses.replace(config_lib.load_config(trained_job), records_image_size=STORED, image_size=SIZE,
                              records_dir=str(tmp_path), views="all")
    spec = cfg.spec()

    # Inference: the records job's decode and resize (identity at the stored size), then the resize.
    served = preprocess.model_input(png, "view1_frontal.png", spec)
    np.testing.assert_array_equal(imaging.preprocess(png, "x.png", STORED, spec.records_resize), source)
    # tf.data input, evaluation mode (no augmentation), from a record of the same pixels.
    files = [_gradient_records(tmp_path, source)]
    (batch,) = list(input_lib.make_dataset(files, cfg, training=False, batch_size=4))
    from_records = batch["image"].numpy()[0]
    # The SavedModel's encoded-bytes signature.
    exported = export.decode_image(tf.constant(png), SIZE).numpy()

    assert served.shape == from_records.shape == exported.shape == (SIZE, SIZE, 1) and served.dtype == np.uint8
    np.testing.assert_array_equal(served, from_records)
    np.testing.assert_array_equal(exported, from_records)
    np.testing.assert_array_equal(preprocess.resize_pixels(source[None, :, :, None], SIZE).numpy()[0], served)
    assert len(np.unique(served)) > 50  # really resized, not flattened

    # The export's serving signature scores those pixels: its answer is the job's on them.
    job = job_lib.load_job(trained_job)
    path = str(tmp_path / "saved_model")
    export.export_saved_model(job.model, dataclasses.replace(job.spec, records_image_size=STORED), path)
    loaded = job_lib.load_job(path)
    by_bytes = loaded.model.loaded.signatures["serving_default"](images=tf.constant([images.png_bytes(
        images.gradient(SIZE * 2, SIZE * 2))]))
    want = predict_batch(job, preprocess.resize_pixels(images.gradient(SIZE * 2, SIZE * 2)[None, :, :, None],
                                                       job.spec.image_size))
    np.testing.assert_allclose(np.stack([by_bytes[t].numpy() for t in job.tasks], axis=-1), want, atol=1e-6)


def test_a_job_trained_before_the_spec_loads_from_its_config(trained_job, tmp_path):
    new = job_lib.load_job(trained_job)
    assert os.path.exists(os.path.join(trained_job, "job_spec.json"))
    assert new.spec == config_lib.load_config(trained_job).spec()
    old = tmp_path / "old"
    shutil.copytree(trained_job, old)
    os.remove(old / "job_spec.json")
    job = job_lib.load_job(str(old))
    assert job.spec == new.spec and job.tasks == ("cardiomegaly", "atelectasis")  # CSV order
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 1), dtype=np.uint8)
    np.testing.assert_array_equal(predict_batch(job, x), predict_batch(new, x))
    os.remove(old / "config.json")
    with pytest.raises(job_lib.JobError, match="no config.json"):
        job_lib.load_job(str(old))
