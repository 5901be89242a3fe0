"""Distillation: the loss against a hand computation, and a student trained from a cached
teacher."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tests
from trainer import config as config_lib
from trainer import distill, train

ROOT = tests.ROOT


def test_distillation_loss_equals_a_hand_computation(records_dir):
    cfg = config_lib.make_config(pathology="atelectasis,cardiomegaly", records_dir=records_dir, job_dir="/tmp/x",
                                 image_size=32, backbone="tiny")
    logits = {"cardiomegaly": tf.constant([[0.5, 2.0, -1.0], [1.0, -1.0, 0.0]]),
              "atelectasis": tf.constant([[0.3], [-2.0]])}
    student = distill.student_logits(logits, cfg)
    np.testing.assert_allclose(student.numpy(), [[1.5, 0.3], [-2.0, -2.0]], rtol=1e-6)  # CSV order: card, atel
    teacher = tf.constant([[2.0, -1.0], [0.0, 1.0]])
    t = 2.0
    got = float(distill.distill_loss(student, teacher, t, global_batch=2))

    def sig(x):
        return 1 / (1 + np.exp(-x))

    q, p = sig(teacher.numpy() / t), sig(student.numpy() / t)
    bce = -(q * np.log(p) + (1 - q) * np.log(1 - p))
    assert got == pytest.approx(t * t * bce.mean(), rel=1e-5)
    # Equal logits: the loss is T^2 times the teacher's entropy, its minimum.
    same = float(distill.distill_loss(teacher, teacher, t, global_batch=2))
    ent = -(q * np.log(q) + (1 - q) * np.log(1 - q))
    assert same == pytest.approx(t * t * ent.mean(), rel=1e-5)


def test_student_trains_from_a_cached_teacher(trained_job, records_dir, tmp_path):
    job = tmp_path / "student"
    cfg = config_lib.make_config(pathology="atelectasis", records_dir=records_dir, job_dir=str(job), image_size=32,
                                 backbone="tiny", epochs=1, steps_per_epoch=3, batch_size=4,
                                 distill_from=(trained_job,), distill_alpha=0.7, distill_temperature=3.0,
                                 jit_compile=False)  # XLA costs ~10 s here, and is tested elsewhere
    report = train.run(cfg)
    assert set(report["tasks"]) == {"atelectasis"} and 0.0 <= report["tasks"]["atelectasis"]["auroc"] <= 1.0
    cache = job / distill.CACHE
    with np.load(cache) as z:
        paths, logits = z["paths"], z["logits"]
    assert logits.shape == (len(paths), 1) and np.isfinite(logits).all()
    mtime = os.path.getmtime(cache)
    p2, l2 = distill.teacher_cache(cfg, str(job))  # reused, not recomputed
    assert os.path.getmtime(cache) == mtime and np.array_equal(l2, logits)
    fn = distill.lookup(paths, logits)
    got = fn(tf.constant([paths[3], b"not/a/record.jpg"])).numpy()
    np.testing.assert_array_equal(got[0], logits[3])
    assert (got[1] == 0).all()  # unknown record: P = 0.5
    with pytest.raises(config_lib.ConfigError, match="--distill_from"):
        config_lib.make_config(pathology="atelectasis", records_dir=records_dir, job_dir=str(job), image_size=32,
                               distill_from=("/nonexistent",))


def test_the_old_teacher_flag_still_works_and_warns(trained_job, records_dir, tmp_path, capsys):
    from trainer import task

    base = ["trainer.task", f"--records_dir={records_dir}", f"--job_dir={tmp_path / 'job'}", "--image_size=32"]
    try:
        task.FLAGS(base + [f"--teacher={trained_job}"])
        assert task.config_from_flags().distill_from == (trained_job,)
        assert "trainer.task: warning: --teacher is deprecated; use --distill_from\n" in capsys.readouterr().err
        task.FLAGS.unparse_flags()
        task.FLAGS(base + [f"--distill_from={trained_job}"])
        assert task.config_from_flags().distill_from == (trained_job,)
        assert "deprecated" not in capsys.readouterr().err
        task.FLAGS.unparse_flags()
        task.FLAGS(base + [f"--distill_from={trained_job}", f"--teacher={trained_job}"])
        with pytest.raises(config_lib.ConfigError, match="give --distill_from only"):
            task.config_from_flags()
    finally:
        task.FLAGS.unparse_flags()


def test_the_old_teacher_flag_on_the_command_line(records_dir, tmp_path):
    """As users type it: one warning line, and errors name the flag's new name."""
    done = subprocess.run([sys.executable, "-m", "trainer.task", f"--records_dir={records_dir}",
                           f"--job_dir={tmp_path / 'job'}", "--image_size=32", "--teacher=/nonexistent"], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert lines[0] == "trainer.task: warning: --teacher is deprecated; use --distill_from"
    assert lines[1].startswith("trainer.task: error: --distill_from: every job") and "/nonexistent" in lines[1]


def _one_batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 255, (n, 32, 32, 1)).astype(np.uint8),
            "targets": np.stack([rng.integers(0, 3, n), rng.integers(0, 2, n)], axis=1).astype(np.float32),
            "masks": np.ones((n, 2), np.float32),
            "teacher": rng.normal(0, 2, (n, 2)).astype(np.float32)}


def test_the_teacher_term_reaches_the_gradient_weighted_by_alpha(records_dir):
    """The train step's gradient is (1 - alpha) x the label loss's plus alpha x the
    distillation term's, each taken apart by hand on the same weights; one step with another
    teacher leaves other weights, and with alpha 0 the teacher changes nothing. A loss that
    computes the term but drops it, or stops its gradient, fails here (the loss-only test above
    cannot see either)."""
    import dataclasses

    import keras

    from tests.trainer.test_trainer import _small_model  # no batch norm: one forward pass per call

    # epsilon=1: Adam's first step is ~lr * g / (|g| + 1), so the weights follow the gradient.
    cfg = config_lib.make_config(pathology="atelectasis,cardiomegaly", records_dir=records_dir, job_dir="/tmp/x",
                                 image_size=32, backbone="tiny", jit_compile=False, augment=False,
                                 batch_size=8, learning_rate=0.05, epsilon=1.0)
    alpha, t = 0.3, 2.0
    cfg = dataclasses.replace(cfg, distill_alpha=alpha, distill_temperature=t)
    batch = _one_batch()
    args = [tf.constant(batch[k]) for k in ("image", "targets", "masks")]
    denominators = tf.reduce_sum(args[2], axis=0)
    teacher = tf.constant(batch["teacher"])

    def trainer_for(c):
        keras.utils.set_random_seed(1)
        return train.Trainer(c, tf.distribute.get_strategy(), model_fn=_small_model)

    trainer = trainer_for(cfg)
    weights = trainer.model.trainable_variables
    mixed_loss, mixed = trainer.forward_backward(*args, denominators, teacher, None)
    hard_loss, hard = trainer.forward_backward(*args, denominators, None, None)
    with tf.GradientTape() as tape:
        soft_loss = distill.distill_loss(distill.student_logits(trainer.model(args[0], training=True), cfg), teacher,
                                         t, global_batch=8)
    soft = tape.gradient(soft_loss, weights)
    assert float(mixed_loss) == pytest.approx((1 - alpha) * float(hard_loss) + alpha * float(soft_loss), rel=1e-6)
    # float32 sums in another order: a tolerance on the gradients' scale, not per element.
    tol = 1e-4 * max(np.abs(g.numpy()).max() for g in [*hard, *soft])
    for m, h, s in zip(mixed, hard, soft):
        np.testing.assert_allclose(m.numpy(), (1 - alpha) * h.numpy() + alpha * s.numpy(), rtol=0, atol=tol)
    # The soft term's share is far above that tolerance: without it the gradient is off.
    assert max(np.abs(m.numpy() - h.numpy()).max() for m, h in zip(mixed, hard)) > 100 * tol
    assert max(np.abs(m.numpy() - (1 - alpha) * h.numpy()).max() for m, h in zip(mixed, hard)) > 100 * tol

    # One whole train step (the batch's teacher logits as the input pipeline supplies them).
    start = [v.numpy() for v in trainer.model.variables + trainer.optimizer.variables]

    def step(tr, **overrides):
        for v, value in zip(tr.model.variables + tr.optimizer.variables, start):
            v.assign(value)
        b = {**batch, **overrides}
        tr.train_step(iter(tf.data.Dataset.from_tensors({k: v for k, v in b.items() if v is not None})))
        return [w.numpy() for w in tr.model.trainable_variables]

    a = step(trainer)
    other = step(trainer, teacher=-batch["teacher"])
    assert max(np.abs(x - y).max() for x, y in zip(a, other)) > 1e-4  # another teacher, other weights
    off = trainer_for(dataclasses.replace(cfg, distill_alpha=0.0))
    without = step(off, teacher=None)
    for x, y in zip(step(off), without):
        np.testing.assert_array_equal(x, y)  # alpha 0: the teacher has no say
    assert max(np.abs(x - y).max() for x, y in zip(a, without)) > 1e-4  # alpha 0.3: it has
