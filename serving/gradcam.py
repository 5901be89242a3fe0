"""Grad-CAM of a job's P(positive), and mapping a map on the model's input back onto the film.

``grad_cam`` runs one compiled graph per job and task (kept with the job); ``cam_on_source``
and ``SourceMap`` undo the preprocessing's geometry (``core.imaging.resize_frame``) so an
overlay registers with the original film (``serving.heatmap`` draws it).
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from serving import heads
from serving.job import Job, JobError

# Rows of a full-resolution map computed at a time: float32 temporaries of ~10 MB for a
# 3,000 px wide film, whatever its height.
STRIP_ROWS = 256


def _grad_cam_function(job: Job, task: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """Grad-CAM for ``task`` as one graph: uint8 (S, S, 1) -> float32 (S, S) in [0, 1]."""
    model = job.model
    backbone = heads.backbone_of(model)
    features = keras.Model(backbone.input, backbone.get_layer(heads.LAST_CONV_LAYER).output)
    normalize, head = model.get_layer("normalize"), model.get_layer(task)
    prob = heads.probability_of(model, task)
    size = job.spec.image_size

    @tf.function(input_signature=[tf.TensorSpec([size, size, 1], tf.uint8, name="image")])
    def cam_of(image):
        fmap = features(normalize(image[None]), training=False)
        # Only the head is differentiated: a tape that watched the backbone's variables would
        # keep all its activations for a backward pass nobody takes. The backbone ends in
        # global average pooling of fmap, recomputed here from the watched tensor so that
        # the gradient flows through the feature map.
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(fmap)
            p = prob(head(tf.reduce_mean(fmap, axis=[1, 2])))
        grads = tape.gradient(p, fmap)[0]
        weights = tf.reduce_mean(grads, axis=[0, 1])
        cam = tf.nn.relu(tf.reduce_sum(fmap[0] * weights, axis=-1))
        cam = cam / (tf.reduce_max(cam) + 1e-8)
        return tf.image.resize(cam[..., None], [size, size], method="bilinear")[..., 0]

    return cam_of


def grad_cam(job: Job, image: np.ndarray, task: str) -> np.ndarray:
    """Grad-CAM of P(positive) for ``task`` on the last dense block's activation.

    One image per call, through a ``tf.function`` built once per job and task and kept with
    the job: DenseNet121 at 320 px peaks at ~0.95 GB RSS on CPU and takes ~0.2 s an image
    after the first; the eager version, which taped the whole backbone, 1.4 GB and 1-2 s
    (BUILD_NOTES.md, "Inference memory").

    Args:
        job: a job loaded with ``serving.job.load_job``.
        image: uint8 (S, S, 1), S = ``job.spec.image_size``.
        task: one of ``job.tasks``.

    Returns:
        float32 (S, S) in [0, 1].

    Raises:
        JobError: the job is a SavedModel (no layers to take gradients at).
    """
    if not job.is_keras:
        raise JobError(f"{job.job_dir}: Grad-CAM needs the job's model.keras; a SavedModel has no layers "
                       "to take gradients at")
    fn = job.compiled(f"grad_cam/{task}", lambda: _grad_cam_function(job, task))
    return fn(tf.convert_to_tensor(image)).numpy()


def feature_grid(job: Job) -> int:
    """The side of the feature map Grad-CAM is computed on (10 for DenseNet121 at 320 px):
    the heatmap's true resolution, however finely it is drawn."""
    return int(heads.backbone_of(job.model).get_layer(heads.LAST_CONV_LAYER).output.shape[1])


def _axis_weights(n_out: int, n_decoded: int, start: int, extent: int, n_map: int):
    """Bilinear taps along one axis, from a map of ``n_map`` cells over the frame
    ``[start, start + extent)`` of a decoded axis of ``n_decoded`` pixels, to ``n_out`` source
    pixels. Pixel centres sit at ``i + 0.5`` on every grid (as in Pillow's and TF's resizes).

    Returns:
        ``(i0, i1, w, inside)``: int64 (n_out,) taps, float32 (n_out,) weight of ``i1``,
        bool (n_out,) whether the pixel's centre lies in the frame (the model saw it).
    """
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_decoded / n_out)
    u = (centres - start) / extent
    inside = (u >= 0.0) & (u < 1.0)
    x = np.clip(u * n_map - 0.5, 0.0, n_map - 1.0)
    i0 = np.floor(x).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_map - 1), (x - i0).astype(np.float32), inside


class SourceMap:
    """A map on the model's square input, read at the source film's pixels (see
    ``cam_on_source``), a strip of rows at a time."""

    def __init__(self, cam: np.ndarray, frame: Sequence[int], decoded_shape: Sequence[int],
                 source_shape: Sequence[int]):
        top, left, frame_h, frame_w = frame
        (dh, dw), (self.height, self.width) = decoded_shape, source_shape
        cam = np.asarray(cam, np.float32)
        y0, y1, wy, self.rows_in = _axis_weights(self.height, dh, top, frame_h, cam.shape[0])
        self.x0, self.x1, self.wx, self.cols_in = _axis_weights(self.width, dw, left, frame_w, cam.shape[1])
        # Rows first: (height, S) is small, and each strip then needs only its columns.
        self.by_row = cam[y0] * (1 - wy)[:, None] + cam[y1] * wy[:, None]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """float32 (stop - start, width); NaN where the model never saw the film."""
        r = self.by_row[start:stop]
        out = r[:, self.x0] * (1 - self.wx) + r[:, self.x1] * self.wx
        out[~self.rows_in[start:stop]] = np.nan
        out[:, ~self.cols_in] = np.nan
        return out


def cam_on_source(cam: np.ndarray, frame: Sequence[int], decoded_shape: Sequence[int],
                  source_shape: Sequence[int]) -> np.ndarray:
    """Maps a heatmap on the model's input back onto the source film, bilinearly.

    The model's input is ``imaging.resize`` of the decoded film (then, for a model trained
    smaller than its records, a uniform rescale, which changes no position); ``frame`` says
    which rectangle of the decoded film that square shows. A JPEG may have been decoded at a
    reduced scale (``imaging.decode``'s draft mode): ``decoded_shape`` is that size, and its
    axes are stretched onto ``source_shape``'s, exact to within one decoded pixel (the DCT
    scaling rounds the last block).

    Args:
        cam: float (S, S), the map on the model's input.
        frame: ``imaging.resize_frame(*decoded_shape, mode)``.
        decoded_shape: (height, width) of the film as the model's preprocessing decoded it.
        source_shape: (height, width) of the film at full resolution, upright.

    Returns:
        float32 ``source_shape``: the map at each source pixel; NaN where the film was
        outside the model's input (the sides a ``crop`` cut off).
    """
    m = SourceMap(cam, frame, decoded_shape, source_shape)
    return np.concatenate([m.rows(y, min(y + STRIP_ROWS, m.height)) for y in range(0, m.height, STRIP_ROWS)]
                          or [np.zeros((0, m.width), np.float32)])
