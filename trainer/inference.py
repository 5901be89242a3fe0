"""Loading a trained job and turning image files into model inputs, the training way.

Evaluation on a CSV, ``trainer.predict``, the web demo and batch scoring all go through
``model_input``: the records job's own ``pipeline.imaging.preprocess`` (decode, gray,
resize to the records' size with the records' resize mode), then, when the model was
trained smaller, the same antialiased TF resize the input pipeline applies.
"""

from __future__ import annotations

import dataclasses
import io
import os

import keras
import numpy as np
import pydicom
import tensorflow as tf

from pipeline import imaging
from trainer import model as model_lib  # noqa: F401  (registers PositiveProbability for load_model)
from trainer.config import TrainConfig


@dataclasses.dataclass
class Job:
    """A trained job: its config and its probability model.

    ``model`` maps uint8 (B, S, S, 1) to {task: P(positive) (B,)}: the job's Keras model, or
    for a SavedModel folder its ``serve_pixels`` signature (``SavedModelPixels``).
    """

    job_dir: str
    cfg: TrainConfig
    model: keras.Model | "SavedModelPixels"

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.cfg.tasks

    @property
    def is_keras(self) -> bool:
        """Whether layers are reachable (Grad-CAM needs them; a SavedModel has none)."""
        return isinstance(self.model, keras.Model)


class SavedModelPixels:
    """A SavedModel's ``serve_pixels`` signature called like the Keras probability model."""

    def __init__(self, path: str):
        self.signature = tf.saved_model.load(path).signatures["serve_pixels"]

    def __call__(self, images, training: bool = False) -> dict:
        return self.signature(pixels=tf.cast(images, tf.uint8))


class JobError(RuntimeError):
    """A job folder without a usable model; the message names the folder."""


def load_job(job_dir: str) -> Job:
    """Reads a trainer.task job folder (``config.json`` + ``model.keras``), or a SavedModel
    folder it exported (``JOB_DIR/saved_model``, which carries its own ``config.json``;
    exports older than that find it in the job folder above)."""
    if os.path.exists(os.path.join(job_dir, "saved_model.pb")):
        for cfg_path in (os.path.join(job_dir, "config.json"),
                         os.path.join(os.path.dirname(os.path.abspath(job_dir)), "config.json")):
            if os.path.exists(cfg_path):
                with open(cfg_path) as f:
                    return Job(job_dir, TrainConfig.from_json(f.read()), SavedModelPixels(job_dir))
        raise JobError(f"{job_dir}: a SavedModel without config.json (neither in it nor in the folder above); "
                       "the preprocessing cannot be known")
    cfg_path, model_path = os.path.join(job_dir, "config.json"), os.path.join(job_dir, "model.keras")
    for p in (cfg_path, model_path):
        if not os.path.exists(p):
            raise JobError(f"{job_dir}: no {os.path.basename(p)}; is this a trainer.task --job_dir that finished "
                           "an epoch, or a SavedModel folder it exported?")
    with open(cfg_path) as f:
        cfg = TrainConfig.from_json(f.read())
    return Job(job_dir, cfg, keras.models.load_model(model_path))


def resize_batch(images: np.ndarray | tf.Tensor, size: int) -> tf.Tensor:
    """uint8 (B, s, s, 1) -> uint8 (B, size, size, 1), exactly as trainer.input does it."""
    images = tf.convert_to_tensor(images)
    if images.shape[1] == size and images.shape[2] == size:
        return images
    out = tf.image.resize(tf.cast(images, tf.float32), [size, size], antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def model_input(data: bytes, name: str, cfg: TrainConfig) -> np.ndarray:
    """Any supported file's bytes -> uint8 (S, S, 1) as the model saw it in training.

    Raises:
        schemas.chexpert.RowError: not an image, truncated, too large, unreadable DICOM.
    """
    pixels = imaging.preprocess(data, name, cfg.records_image_size, cfg.records_resize)
    return resize_batch(pixels[None, :, :, None], cfg.image_size).numpy()[0]


def predict_batch(job: Job, images: np.ndarray | tf.Tensor) -> np.ndarray:
    """uint8 (B, S, S, 1) -> P(positive) float32 (B, T) in ``job.tasks`` order."""
    out = job.model(tf.convert_to_tensor(images), training=False)
    return np.stack([np.asarray(out[t]) for t in job.tasks], axis=-1)


def is_lateral(name: str, data: bytes | None = None) -> bool:
    """A best guess that a file is a lateral view: CheXpert's file naming, or DICOM's
    ViewPosition (LL, RL, LAT...)."""
    base = os.path.basename(name).lower()
    if "lateral" in base:
        return True
    if data is not None and imaging.is_dicom(data, name):
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
            return str(getattr(ds, "ViewPosition", "")).upper() in ("LL", "RL", "LAT", "LATERAL")
        except Exception:  # an unreadable header says nothing about the view
            return False
    return False
