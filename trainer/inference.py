"""Loading a trained job and turning image files into model inputs, the training way.

Evaluation on a CSV, ``trainer.predict``, the web demo and batch scoring all go through
``model_input``: the records job's own ``core.imaging.preprocess`` (decode, gray,
resize to the records' size with the records' resize mode), then, when the model was
trained smaller, the same antialiased TF resize the input pipeline applies.

They all score through ``predict_batch``: one compiled ``tf.function`` per job, called on at
most ``images_per_call`` images at a time. Calling the Keras model eagerly, as this module
once did, keeps every layer's output of the whole batch alive until the call returns:
~0.4 GB per 320 px image for DenseNet121 on CPU, so ``trainer.evaluate``'s batches of 64
were OOM-killed at 24 GB. A graph frees each activation once its consumers have run
(BUILD_NOTES.md, "Inference memory").
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from core import imaging, views
from trainer import model as model_lib  # noqa: F401  (registers PositiveProbability for load_model)
from trainer.config import TrainConfig


# The most pixels one compiled model call takes: 32 images at 320 x 320, where DenseNet121
# peaks at ~1.6 GB RSS on CPU (BUILD_NOTES.md, "Inference memory"). Larger batches are cut
# into calls of this size, so the peak no longer grows with the caller's batch (evaluate
# and pipeline.score use 64, distill's teacher 128) nor with the image size; on 2 cores a
# larger call is not faster.
MAX_PIXELS_PER_CALL = 32 * 320 * 320


@dataclasses.dataclass
class Job:
    """A trained job: its config and its probability model.

    ``model`` maps uint8 (B, S, S, 1) to {task: P(positive) (B,)}: the job's Keras model, or
    for a SavedModel folder its ``serve_pixels`` signature (``SavedModelPixels``). Compiled
    functions of the model (``compiled``) are built once per job and kept with it.
    """

    job_dir: str
    cfg: TrainConfig
    model: keras.Model | "SavedModelPixels"
    _functions: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.cfg.tasks

    @property
    def is_keras(self) -> bool:
        """Whether layers are reachable (Grad-CAM needs them; a SavedModel has none)."""
        return isinstance(self.model, keras.Model)

    def compiled(self, name: str, build: Callable[[], Callable]) -> Callable:
        """The function ``build()`` returns, built on the first call for ``name`` and kept.

        A ``tf.function`` traces once per input signature and keeps its graphs, so holding
        it with the job is what makes the second call cheap. The lock lets the web demo's
        worker threads share one function.
        """
        with self._lock:
            if name not in self._functions:
                self._functions[name] = build()
            return self._functions[name]


class SavedModelPixels:
    """A SavedModel's ``serve_pixels`` signature called like the Keras probability model."""

    def __init__(self, path: str):
        # The loaded object owns the variables; a signature holds them only weakly, so a
        # tf.function calling it fails once the object is collected. Keep it.
        self.loaded = tf.saved_model.load(path)
        self.signature = self.loaded.signatures["serve_pixels"]

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


def images_per_call(image_size: int) -> int:
    """How many S x S images one compiled model call takes (``MAX_PIXELS_PER_CALL``)."""
    return max(1, MAX_PIXELS_PER_CALL // (image_size * image_size))


def _probability_function(job: Job) -> Callable[[tf.Tensor], tf.Tensor]:
    """The job's model as one graph: uint8 (B, S, S, 1) -> P(positive) float32 (B, T).

    The batch dimension is left open in the signature, so batches of every size share one
    trace (no retracing for a last, smaller batch).
    """
    model, tasks, size = job.model, job.tasks, job.cfg.image_size

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 1], tf.uint8, name="images")])
    def probabilities(images):
        out = model(images, training=False)
        return tf.stack([out[t] for t in tasks], axis=-1)

    return probabilities


def predict_batch(job: Job, images: np.ndarray | tf.Tensor) -> np.ndarray:
    """P(positive) of a batch, through the job's compiled function in bounded memory.

    Batches of more than ``images_per_call(S)`` images are scored in consecutive calls of
    that many (the last one smaller). A batch of fixed size is always cut the same way, so
    each image's score depends on its batch's shape, not on its neighbours: what
    ``pipeline.score``'s padded batches rely on.

    Args:
        job: a job from ``load_job`` (or a ``Job`` around an in-memory model).
        images: uint8 (B, S, S, 1), S = ``job.cfg.image_size``; B may be 0.

    Returns:
        float32 (B, T): P(positive) per image and task, in ``job.tasks`` order.

    Raises:
        ValueError: ``images`` is not uint8 (B, S, S, 1).
    """
    images = tf.convert_to_tensor(images)
    size = job.cfg.image_size
    if images.dtype != tf.uint8 or images.shape.rank != 4 or tuple(images.shape[1:]) != (size, size, 1):
        raise ValueError(f"predict_batch takes uint8 (B, {size}, {size}, 1) images for this job; got "
                         f"{images.dtype.name} {tuple(images.shape)}")
    fn = job.compiled("probabilities", lambda: _probability_function(job))
    step = images_per_call(size)
    n = int(images.shape[0])
    if n == 0:
        return np.zeros((0, len(job.tasks)), np.float32)
    return np.concatenate([fn(images[i:i + step]).numpy() for i in range(0, n, step)])


def is_lateral(name: str, data: bytes | None = None) -> bool:
    """Whether a file states that it is a lateral view: a DICOM ViewPosition of LL, RL or
    LATERAL, or a CheXpert file name ``view<N>_lateral.<ext>`` (``core.views.view_of``).

    A word inside a free name (``lateral_scan.jpg``) does not count, and a file that states
    nothing (``scan.jpg``) is not called lateral: its view is unknown, which callers should
    say rather than guess."""
    return views.view_of(name, data) == views.LATERAL
