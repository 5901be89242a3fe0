"""Knowledge distillation: a student trained on hard labels and a teacher's softened outputs.

``trainer.task --distill_from JOB_DIR[,JOB_DIR...]`` computes the teachers' P(positive) once per
training record (averaged over an ensemble) and caches it as logits in
``JOB_DIR/teacher_cache.npz``; the input pipeline looks them up by record path, so no
teacher runs during training. Per task the student's binary logit is its sigmoid logit, or
for a 3-class head the positive-minus-negative logit (the same P(positive) the metrics use).

    loss = (1 - alpha) * masked hard-label loss
           + alpha * T^2 * mean over tasks and records of BCE(sigmoid(z_t / T), sigmoid(z_s / T))

The T^2 factor keeps the soft term's gradients on the hard term's scale (Hinton et al.).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf

from serving import job as job_lib
from serving.predict import predict_batch
from trainer import input as input_lib
from trainer.config import TrainConfig, load_config, read_manifest

log = logging.getLogger(__name__)
CACHE = "teacher_cache.npz"


def student_logits(logits: dict, cfg: TrainConfig) -> tf.Tensor:
    """float32 (B, T): each task's binary logit of P(positive)."""
    out = []
    for task in cfg.tasks:
        z = tf.cast(logits[task], tf.float32)
        out.append(z[:, 1] - z[:, 0] if cfg.head_kind(task) == "multiclass" else z[:, 0])
    return tf.stack(out, axis=-1)


def distill_loss(student: tf.Tensor, teacher: tf.Tensor, temperature: float, global_batch: int) -> tf.Tensor:
    """This replica's share of T^2 * mean BCE between softened teacher and student.

    Args:
        student, teacher: float32 (B, T) logits.
        temperature: T > 0.
        global_batch: records per step over all replicas (the mean's denominator).
    """
    t = float(temperature)
    soft = tf.sigmoid(teacher / t)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=soft, logits=student / t)
    return t * t * tf.reduce_sum(bce) / float(global_batch * student.shape[-1])


def teacher_cache(cfg: TrainConfig, job_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """(paths (n,), logits float32 (n, T)) of the teachers on the training split, computed
    once and cached in ``job_dir``; recomputed when the teachers or tasks change."""
    path = os.path.join(job_dir, CACHE)
    key = np.array([",".join(cfg.distill_from), ",".join(cfg.tasks), cfg.records_dir, cfg.train_split])
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as z:
            if z["key"].tolist() == key.tolist():
                return z["paths"], z["logits"]
    manifest = read_manifest(cfg.records_dir)
    files = input_lib.shard_files(cfg.records_dir, cfg.train_split, manifest)
    probs_sum: dict[str, np.ndarray] = {}
    for teacher_dir in cfg.distill_from:
        job = job_lib.load_job(teacher_dir)
        missing = [t for t in cfg.tasks if t not in job.tasks]
        if missing:
            raise ValueError(f"--distill_from {teacher_dir} does not predict {', '.join(missing)}")
        # The student's records, read the way the teacher was trained (its image size).
        tcfg = dataclasses.replace(load_config(teacher_dir), records_dir=cfg.records_dir, views="all",
                                   records_image_size=cfg.records_image_size, records_encoding=cfg.records_encoding)
        for batch in input_lib.checked(input_lib.make_dataset(files, tcfg, training=False, batch_size=128), files):
            probs = predict_batch(job, batch["image"].numpy())
            cols = [job.tasks.index(t) for t in cfg.tasks]
            for p, row in zip(batch["path"].numpy(), probs[:, cols]):
                probs_sum[p.decode()] = probs_sum.get(p.decode(), 0.0) + row
        log.info("teacher %s scored %d training records", teacher_dir, len(probs_sum))
    paths = np.array(sorted(probs_sum))
    probs = np.clip(np.stack([probs_sum[p] for p in paths]) / len(cfg.distill_from), 1e-6, 1 - 1e-6)
    logits = np.log(probs / (1 - probs)).astype(np.float32)
    np.savez(path, key=key, paths=paths, logits=logits)
    return paths, logits


def lookup(paths: np.ndarray, logits: np.ndarray):
    """A graph function: record paths (B,) -> teacher logits (B, T); unknown paths get 0
    (P = 0.5), which a record added after the cache was built would otherwise lack."""
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(paths), tf.range(len(paths), dtype=tf.int64)), -1)
    values = tf.concat([tf.constant(logits), tf.zeros([1, logits.shape[1]])], axis=0)

    def fn(batch_paths):
        idx = table.lookup(batch_paths)
        return tf.gather(values, tf.where(idx < 0, tf.cast(len(paths), tf.int64), idx))

    return fn
