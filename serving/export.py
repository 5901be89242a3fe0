"""The SavedModel export: a trained probability model with its serving signatures and spec.

``JOB_DIR/saved_model`` works on its own (e.g. shipped without the job folder): it carries
its ``job_spec.json``, so ``serving.job.load_job`` knows the preprocessing (SavedModel
loaders ignore files they do not know).
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from schemas import job_spec
from schemas.job_spec import JobSpec
from serving import preprocess


def decode_image(data: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded JPEG/PNG bytes (a scalar string) -> uint8 (size, size, 1), the export's own
    preprocessing: decoded as gray, then ``preprocess.resize_pixels``.

    The records job resizes with Pillow's bilinear filter, so files scored through this
    signature agree with the records' pixels to within a few gray levels; callers that need
    the training pixels exactly use ``serve_pixels`` with ``preprocess.model_input``.
    """
    image = tf.io.decode_image(data, channels=1, dtype=tf.uint8, expand_animations=False)
    return tf.ensure_shape(preprocess.resize_pixels(image, size), [size, size, 1])


def export_saved_model(prob_model: keras.Model, spec: JobSpec, path: str) -> None:
    """Writes a SavedModel and its spec to ``path``.

    Signatures: ``serving_default`` takes encoded JPEG/PNG bytes (batch,) and returns
    {task: P(positive) (batch,)} (``decode_image``); ``serve_pixels`` takes uint8
    (batch, S, S, 1), for callers that preprocess with the records job's own code (batch
    scoring, DICOM).

    Args:
        prob_model: uint8 (B, S, S, 1) -> {task: float32 (B,)}, S = ``spec.image_size``.
        spec: the job's spec, written as ``path/job_spec.json``.
        path: the folder to write (created).
    """
    size = spec.image_size

    def serve(images):
        batch = tf.map_fn(lambda data: decode_image(data, size), images,
                          fn_output_signature=tf.TensorSpec([size, size, 1], tf.uint8))
        return prob_model(batch, training=False)

    archive = keras.export.ExportArchive()
    archive.track(prob_model)
    archive.add_endpoint("serving_default", serve, input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    archive.add_endpoint("serve_pixels", lambda x: prob_model(x, training=False),
                         input_signature=[tf.TensorSpec([None, size, size, 1], tf.uint8, name="pixels")])
    archive.write_out(path, verbose=False)
    with open(os.path.join(path, job_spec.FILE), "w") as f:
        f.write(spec.to_json())
