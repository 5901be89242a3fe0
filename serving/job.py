"""Loading a trained job: its spec (``schemas.job_spec``) and its probability model.

A job folder is what ``trainer.task`` leaves (``job_spec.json`` + ``model.keras``, beside the
trainer's own ``config.json``), or a SavedModel folder it exported (``JOB_DIR/saved_model``,
which carries its own ``job_spec.json``). Jobs trained before the spec existed have only
``config.json``, and SavedModels exported then have it in the folder or the job folder
above; the spec is derived from it (``job_spec.from_train_config``).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Callable

import keras
import tensorflow as tf

from schemas import job_spec
from schemas.job_spec import JobSpec
from serving import heads  # noqa: F401  (registers PositiveProbability for load_model)

class JobError(RuntimeError):
    """A job folder without a usable model or spec; the message names the folder."""


@dataclasses.dataclass
class Job:
    """A trained job: its spec and its probability model.

    ``model`` maps uint8 (B, S, S, 1) to {task: P(positive) (B,)}: the job's Keras model, or
    for a SavedModel folder its ``serve_pixels`` signature (``SavedModelPixels``). Compiled
    functions of the model (``compiled``) are built once per job and kept with it.
    """

    job_dir: str
    spec: JobSpec
    model: keras.Model | "SavedModelPixels"
    _functions: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.spec.tasks

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


def read_spec(folder: str) -> JobSpec | None:
    """``schemas.job_spec.read`` with its error as a ``JobError``."""
    try:
        return job_spec.read(folder)
    except job_spec.JobSpecError as e:
        raise JobError(str(e)) from None


def load_job(job_dir: str) -> Job:
    """Reads a trainer.task job folder (spec + ``model.keras``), or a SavedModel folder it
    exported (module docstring).

    Raises:
        JobError: no model, no spec, or a spec that cannot be read; the message says which.
    """
    if os.path.exists(os.path.join(job_dir, "saved_model.pb")):
        spec = read_spec(job_dir) or read_spec(os.path.dirname(os.path.abspath(job_dir)))
        if spec is None:
            raise JobError(f"{job_dir}: a SavedModel without config.json or {job_spec.FILE} (neither in it nor in "
                           "the folder above); the preprocessing cannot be known")
        return Job(job_dir, spec, SavedModelPixels(job_dir))
    model_path = os.path.join(job_dir, "model.keras")
    spec = read_spec(job_dir)
    missing = ([f"{job_spec.CONFIG_FILE} (nor {job_spec.FILE})"] if spec is None else []) + \
        (["model.keras"] if not os.path.exists(model_path) else [])
    if missing:
        raise JobError(f"{job_dir}: no {missing[0]}; is this a trainer.task --job_dir that finished an epoch, or a "
                       "SavedModel folder it exported?")
    return Job(job_dir, spec, keras.models.load_model(model_path))
