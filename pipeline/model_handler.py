"""Beam wiring over the serving layer: loading images the way a job's model saw them, and a
RunInference handler for a trained job. Used by ``pipeline.score`` and by the records job's
U-SelfTrained stage (``build_records --labeller``).

TensorFlow is imported in the workers only (``setup``, ``load_model``): the launcher that
builds the graph needs none.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from core import imaging, studies
from schemas import chexpert, job_spec

NAMESPACE = "score"
REJECTED = "rejected"


@dataclasses.dataclass(frozen=True)
class Input:
    """One thing to score: its key in the output and where its bytes are.

    ``view`` is the view a CSV row gave it (``frontal``, ``lateral``, ``unknown``), or None
    when it was not listed by a CSV.
    """

    key: str
    path: str
    stat: str
    view: str | None = None


def read_spec(job_dir: str) -> job_spec.JobSpec:
    """The spec of the job in ``job_dir`` (``schemas.job_spec.read``).

    Raises:
        schemas.job_spec.JobSpecError: none there, or unreadable.
    """
    spec = job_spec.read(job_dir)
    if spec is None:
        raise job_spec.JobSpecError(f"{job_dir}: no {job_spec.FILE} or {job_spec.CONFIG_FILE}")
    return spec


class LoadImageFn(beam.DoFn):
    """Input -> ((key, view), uint8 (S, S, 1)) as the model saw images in training, with the
    image's view (``studies.input_view``: its DICOM tag, its CSV row, its file name); unreadable
    inputs are REJECTED with the reason."""

    def __init__(self, job_dir: str):
        self.job_dir = job_dir

    def setup(self):
        # Imported per worker, not at module import: the launcher needs no TensorFlow.
        from serving import preprocess

        self._model_input = preprocess.model_input
        self.spec = read_spec(self.job_dir)

    def model_input(self, data: bytes, name: str) -> np.ndarray:
        """A file's bytes -> uint8 (S, S, 1) as the job's model saw its training images.

        Raises:
            schemas.chexpert.RowError: not an image this project reads.
        """
        return self._model_input(data, name, self.spec)

    def process(self, item: Input):
        try:
            imaging.refuse_link_outside(item.path, item.key)
            imaging.refuse_non_file(item.path, item.key)
            with FileSystems.open(item.path, compression_type="uncompressed") as f:
                data = f.read()
            image = self.model_input(data, item.key)
            yield (item.key, studies.input_view(item.key, data, item.view)), image
        except chexpert.RowError as e:
            Metrics.counter(NAMESPACE, f"rejected_{e.reason}").inc()
            yield beam.pvalue.TaggedOutput(REJECTED, {"key": item.key, "reason": e.reason, "detail": e.detail})
        except (OSError, IOError) as e:
            reason = chexpert.unreadable_reason(FileSystems.exists(item.path))
            Metrics.counter(NAMESPACE, f"rejected_{reason}").inc()
            yield beam.pvalue.TaggedOutput(REJECTED, {"key": item.key, "reason": reason, "detail": f"{item.key}: {e}"})


class ChexpertModelHandler(ModelHandler[np.ndarray, PredictionResult, Any]):
    """RunInference handler for a trainer.task job: batches of uint8 (S, S, 1) images ->
    PredictionResult with ``inference`` = {task: P(positive)}."""

    def __init__(self, job_dir: str, model_format: str = "keras", max_batch_size: int = 64):
        super().__init__()
        self.job_dir, self.model_format, self.max_batch_size = job_dir, model_format, max_batch_size
        self.tasks = read_spec(job_dir).tasks

    def load_model(self):
        from serving import job

        # A SavedModel folder loads as a job too (its serve_pixels signature).
        folder = os.path.join(self.job_dir, "saved_model") if self.model_format == "saved_model" else self.job_dir
        return job.load_job(folder)

    def run_inference(self, batch: Sequence[np.ndarray], model, inference_args=None) -> Iterable[PredictionResult]:
        from serving.predict import predict_batch

        # Always the same batch shape: CPU kernels give bit-identical per-image results for a
        # fixed batch size whatever the neighbours, but not across sizes (~1e-12 apart), and an
        # incremental run must reproduce a full run's scores exactly.
        images = np.zeros((self.max_batch_size, *batch[0].shape), np.uint8)
        images[: len(batch)] = np.stack(batch)
        probs = predict_batch(model, images)[: len(batch)]
        return [PredictionResult(x, {t: float(v) for t, v in zip(self.tasks, p)}) for x, p in zip(batch, probs)]

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self.max_batch_size}

    def get_metrics_namespace(self) -> str:
        return NAMESPACE
