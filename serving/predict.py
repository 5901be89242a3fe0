"""Compiled batch prediction in bounded memory, and the one batch-and-flush loop.

Every scorer goes through ``predict_batch``: one compiled ``tf.function`` per job, called on
at most ``images_per_call`` images at a time. Calling the Keras model eagerly, as this
project once did, keeps every layer's output of the whole batch alive until the call
returns: ~0.4 GB per 320 px image for DenseNet121 on CPU, so ``trainer.evaluate``'s batches
of 64 were OOM-killed at 24 GB. A graph frees each activation once its consumers have run
(BUILD_NOTES.md, "Inference memory").

Scorers that read files one at a time (``trainer.predict``, ``trainer.evaluate --csv``)
collect them into batches with ``score_in_batches``.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import tensorflow as tf

from serving.job import Job

T = TypeVar("T")

# The most pixels one compiled model call takes: 32 images at 320 x 320, where DenseNet121
# peaks at ~1.6 GB RSS on CPU (BUILD_NOTES.md, "Inference memory"). Larger batches are cut
# into calls of this size, so the peak no longer grows with the caller's batch (evaluate
# and pipeline.score use 64, distill's teacher 128) nor with the image size; on 2 cores a
# larger call is not faster.
MAX_PIXELS_PER_CALL = 32 * 320 * 320


def images_per_call(image_size: int) -> int:
    """How many S x S images one compiled model call takes (``MAX_PIXELS_PER_CALL``)."""
    return max(1, MAX_PIXELS_PER_CALL // (image_size * image_size))


def _probability_function(job: Job) -> Callable[[tf.Tensor], tf.Tensor]:
    """The job's model as one graph: uint8 (B, S, S, 1) -> P(positive) float32 (B, T).

    The batch dimension is left open in the signature, so batches of every size share one
    trace (no retracing for a last, smaller batch).
    """
    model, tasks, size = job.model, job.tasks, job.spec.image_size

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
        job: a job from ``serving.job.load_job`` (or a ``Job`` around an in-memory model).
        images: uint8 (B, S, S, 1), S = ``job.spec.image_size``; B may be 0.

    Returns:
        float32 (B, T): P(positive) per image and task, in ``job.tasks`` order.

    Raises:
        ValueError: ``images`` is not uint8 (B, S, S, 1).
    """
    images = tf.convert_to_tensor(images)
    size = job.spec.image_size
    if images.dtype != tf.uint8 or images.shape.rank != 4 or tuple(images.shape[1:]) != (size, size, 1):
        raise ValueError(f"predict_batch takes uint8 (B, {size}, {size}, 1) images for this job; got "
                         f"{images.dtype.name} {tuple(images.shape)}")
    fn = job.compiled("probabilities", lambda: _probability_function(job))
    step = images_per_call(size)
    n = int(images.shape[0])
    if n == 0:
        return np.zeros((0, len(job.tasks)), np.float32)
    return np.concatenate([fn(images[i:i + step]).numpy() for i in range(0, n, step)])


def score_in_batches(items: Iterable[tuple[T, np.ndarray]], predict: Callable[[np.ndarray], np.ndarray],
                     batch_size: int) -> Iterator[tuple[T, np.ndarray]]:
    """Scores images as they come, ``batch_size`` at a time (the last batch smaller).

    Only one batch of images is held at once, however many items there are: callers pass a
    generator that reads and prepares one file per item.

    Args:
        items: ``(key, image)`` pairs; ``image`` uint8 (S, S, 1).
        predict: uint8 (B, S, S, 1) -> float32 (B, T), e.g. ``lambda x: predict_batch(job, x)``.
        batch_size: images per ``predict`` call, >= 1.

    Yields:
        ``(key, probabilities float32 (T,))`` in the order of ``items``.
    """
    batch: list[tuple[T, np.ndarray]] = []

    def flush():
        probs = predict(np.stack([image for _, image in batch]))
        out = [(key, p) for (key, _), p in zip(batch, probs)]
        batch.clear()
        return out

    for item in items:
        batch.append(item)
        if len(batch) >= batch_size:
            yield from flush()
    if batch:
        yield from flush()
