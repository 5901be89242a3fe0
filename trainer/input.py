"""tf.data input: committed TFRecord shards -> batches of (image, targets, masks).

The order of operations, and why:

    list shard files (shuffled each epoch when training: a cheap global shuffle)
    -> shard per InputContext       (each worker reads different files, not every Nth record)
    -> interleave TFRecordDataset   (parallel reads; deterministic=False when training)
    -> parse without decoding       (schemas.tf_example.FEATURE_SPEC)
    -> filter views                 (before decoding, so skipped laterals cost nothing)
    -> decode, resize, targets      (policy applied to the stored raw codes)
    -> augment                      (training only)
    -> shuffle                      (on uint8 pixels: 2048 x 320^2 = 210 MB, not 840 MB of float)
    -> repeat (training)            (fixed steps per epoch, identical on every worker)
    -> batch                        (per-replica batch; drop_remainder when training: static
                                     shapes, so XLA compiles once)
    -> prefetch(AUTOTUNE)           (last)

Elements are dicts:
    image    uint8   (batch, S, S, 1)
    targets  float32 (batch, T)   per task: 0/1 or a soft value; class index for multiclass
    masks    float32 (batch, T)   1 where the target counts in the loss
    raw      int64   (batch, T)   the stored label codes (evaluation's ground truth)
    path     string  (batch,)     and study  string (batch,)  (evaluation only)
"""

from __future__ import annotations

import math
import os

import numpy as np
import tensorflow as tf

from schemas import chexpert
from schemas import example as ex
from schemas import tf_example
from trainer.config import TrainConfig

AUTOTUNE = tf.data.AUTOTUNE


class CorruptShardError(RuntimeError):
    """A TFRecord shard that cannot be read to the end; the message names the file."""


def shard_files(records_dir: str, split: str, manifest: dict) -> list[str]:
    """The shards a committed manifest lists for ``split`` (never a glob: no partial files)."""
    try:
        names = manifest["splits"][split]["shards"]
    except KeyError:
        raise ValueError(f"{records_dir}: the manifest has no split {split!r}") from None
    return [os.path.join(records_dir, n) for n in names]


def count_examples(manifest: dict, split: str, views: str) -> int:
    """Examples of ``split`` the pipeline will yield under ``views`` (from the manifest)."""
    sp = manifest["splits"][split]
    if views == "all" or "views" not in sp:
        return int(sp["written"])
    return int(sp["views"].get("frontal", 0))


def scan_shards(files: list[str]) -> tuple[list[str], dict[str, str]]:
    """Reads every shard to the end, checking each record's CRCs.

    Returns:
        ``(good files, {bad file: error})``.
    """
    good, bad = [], {}
    for f in files:
        try:
            for _ in tf.data.TFRecordDataset(f, buffer_size=1 << 20):
                pass
            good.append(f)
        except (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.NotFoundError) as e:
            bad[f] = e.message.splitlines()[0] if e.message else type(e).__name__
    return good, bad


def task_indices(tasks) -> list[int]:
    return [chexpert.OBSERVATION_INDEX[t] for t in tasks]


def _affine(image: tf.Tensor, size: int) -> tf.Tensor:
    """Small random rotation (±7°), shift (±5%) and scale (0.95-1.05); no flips: the heart
    is on the patient's left, and a mirrored film is a different anatomy."""
    angle = tf.random.uniform([], -7.0, 7.0) * math.pi / 180.0
    scale = tf.random.uniform([], 0.95, 1.05)
    tx, ty = tf.unstack(tf.random.uniform([2], -0.05, 0.05) * size)
    c = (size - 1) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2): rotation and
    # scale about the centre, then the shift.
    a0, a1, b0, b1 = cos, -sin, sin, cos
    a2 = c - a0 * c - a1 * c - tx
    b2 = c - b0 * c - b1 * c - ty
    transform = tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])[None]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=[size, size], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")
    return out[0]


def make_dataset(
    files: list[str],
    cfg: TrainConfig,
    *,
    training: bool,
    batch_size: int,
    input_context: tf.distribute.InputContext | None = None,
    skip_errors: bool = False,
) -> tf.data.Dataset:
    """Builds the input pipeline described in the module docstring.

    Args:
        files: shard paths (``shard_files``).
        cfg: image size, tasks, policy, views, augmentation, seed, shuffle buffer.
        training: shuffle, augment, repeat and drop the last partial batch.
        batch_size: the batch this pipeline yields (per replica under a strategy).
        input_context: from ``strategy.distribute_datasets_from_function``; shards files.
        skip_errors: drop records that fail to read instead of raising (``--skip_corrupt``
            after ``scan_shards`` removed the files known to be bad).

    Returns:
        A dataset of dicts (see module docstring).
    """
    table = chexpert.policy_matrix(cfg.policy, cfg.blank)
    idx = tf.constant(task_indices(cfg.tasks), tf.int64)
    size = cfg.image_size
    files_ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        files_ds = files_ds.shuffle(len(files), seed=cfg.seed, reshuffle_each_iteration=True)
    if input_context and input_context.num_input_pipelines > 1:
        files_ds = files_ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    ds = files_ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20),
        cycle_length=max(1, min(len(files), 8)),
        num_parallel_calls=AUTOTUNE,
        deterministic=not training,
    )
    if skip_errors:
        ds = ds.ignore_errors(log_warning=True)
    ds = ds.map(lambda s: tf_example.parse(s, decode=False), num_parallel_calls=AUTOTUNE, deterministic=not training)
    if cfg.views == "frontal":
        ds = ds.filter(lambda f: tf.equal(f[ex.IMAGE_VIEW], b"frontal"))

    def prepare(f):
        image = tf_example.decode_image(f[ex.IMAGE_ENCODED], f[ex.IMAGE_FORMAT], f[ex.IMAGE_HEIGHT], f[ex.IMAGE_WIDTH])
        # Smaller training sizes (CPU demos) resize here, not in a rebuild; at the stored size
        # bilinear resampling at scale 1 returns the pixels unchanged.
        image = tf.image.resize(tf.cast(image, tf.float32), [size, size], antialias=True)
        if training and cfg.augment:
            image = _affine(image, size)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
        image = tf.ensure_shape(image, [size, size, 1])
        targets, masks = tf_example.policy_targets(f[ex.LABELS_RAW], f[ex.LABELS_DRAW], table)
        return {
            "image": image,
            "targets": tf.gather(targets, idx),
            "masks": tf.gather(masks, idx),
            "raw": tf.gather(f[ex.LABELS_RAW], idx),
            "path": f[ex.SOURCE_PATH],
            "study": f[ex.STUDY_ID],
        }

    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=not training)
    if training:
        ds = ds.map(lambda d: {k: d[k] for k in ("image", "targets", "masks")})
        ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=training)
    options = tf.data.Options()
    options.experimental_deterministic = not training
    ds = ds.with_options(options)
    return ds.prefetch(AUTOTUNE)


def class_balance(manifest: dict, split: str, tasks) -> np.ndarray:
    """Fraction of positives per task among known labels in ``split`` (for logging)."""
    out = []
    for t in tasks:
        c = manifest["splits"][split]["raw_counts"][t]
        pos, neg = c.get("1", 0), c.get("0", 0) + c.get("blank", 0)
        out.append(pos / max(pos + neg, 1))
    return np.array(out)
