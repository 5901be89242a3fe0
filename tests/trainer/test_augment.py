"""trainer/augment.py and the train step: augmentation on the replica's device, from a
stateless seed, identical to the tf.data version it replaced; --steps_per_execution."""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from serving import preprocess
from trainer import augment
from trainer import config as config_lib
from trainer import train

from tests.trainer.test_trainer import _small_model  # no batch norm: weights compare across replicas


def _tf_data_affine(images, size, angle_degrees, scale, shift_x, shift_y):
    """trainer.input._affine as it was before augmentation moved into the step, verbatim but
    for its four ``tf.random.uniform`` draws, which are the arguments here."""
    n = tf.shape(images)[0]
    angle = angle_degrees * math.pi / 180.0
    tx = shift_x * size
    ty = shift_y * size
    c = (size - 1) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    a0, a1, b0, b1 = cos, -sin, sin, cos
    a2 = c - a0 * c - a1 * c - tx
    b2 = c - b0 * c - b1 * c - ty
    zeros = tf.zeros([n])
    return preprocess.transform(images, tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1))


def _images(n, side, seed=0):
    """Gray films with structure (a gradient, a disc, noise): bilinear weights matter."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side] / side
    base = 200 * xx + 40 * ((xx - 0.5) ** 2 + (yy - 0.6) ** 2 < 0.08)
    return np.clip(base[None] + rng.normal(0, 12, (n, side, side)), 0, 255).astype(np.uint8)[..., None]


def _extreme_parameters(n):
    """The corners of the ranges and random values in between."""
    rng = np.random.default_rng(3)
    p = np.stack([rng.uniform(-7, 7, n), rng.uniform(0.95, 1.05, n), rng.uniform(-.05, .05, n),
                  rng.uniform(-.05, .05, n)])
    p[:, :4] = [[-7, 7, -7, 7], [0.95, 1.05, 1.05, 0.95], [-.05, .05, .05, -.05], [.05, -.05, .05, -.05]]
    return [tf.constant(v, tf.float32) for v in p]


@pytest.mark.parametrize("stored,size", [(64, 64), (48, 32)])
def test_step_augmentation_is_the_tf_data_version_on_fixed_parameters(stored, size):
    pixels = _images(8, stored)
    params = _extreme_parameters(8)
    # Before: tf.data resized in float, transformed, rounded once.
    want = preprocess.to_pixels(_tf_data_affine(preprocess.resize(tf.cast(pixels, tf.float32), size), size,
                                                *params)).numpy()
    # Now: tf.data yields uint8 at the records' size, or the float resize; the step transforms.
    fed = tf.constant(pixels) if size == stored else preprocess.resize(tf.cast(pixels, tf.float32), size)
    matrices = augment.affine_matrices(*params, size=size)
    kernel = augment.apply_affine(fed, matrices, xla=False).numpy()
    np.testing.assert_array_equal(kernel, want)
    # The gather version: exact eagerly; under XLA the blend may be contracted into FMAs.
    images = tf.cast(fed, tf.float32)
    reference = preprocess.transform(images, matrices).numpy()
    np.testing.assert_array_equal(augment.projective_bilinear(images, matrices).numpy(), reference)
    xla_float = tf.function(augment.projective_bilinear, jit_compile=True)(images, matrices).numpy()
    np.testing.assert_allclose(xla_float, reference, rtol=0, atol=1e-4)
    xla = tf.function(lambda x, m: augment.apply_affine(x, m, xla=True), jit_compile=True)(fed, matrices).numpy()
    np.testing.assert_array_equal(xla, want)
    assert (want != preprocess.to_pixels(images).numpy()).mean() > 0.5  # the transforms did move pixels


def test_random_affine_moves_pixels_per_image_but_keeps_shape_and_range():
    image = tf.cast(tf.reshape(tf.range(32 * 32) % 251, [1, 32, 32, 1]), tf.uint8)
    batch = tf.tile(image, [4, 1, 1, 1])
    out = augment.random_affine(batch, augment.step_key(0, 0, 0), xla=False)
    assert out.shape == (4, 32, 32, 1) and out.dtype == tf.uint8
    assert int(tf.reduce_max(out)) <= 250
    assert not np.array_equal(out.numpy()[0], image.numpy()[0])
    assert not np.array_equal(out.numpy()[0], out.numpy()[1])  # each image its own transform
    # The step's key is an input of the XLA computation, not a compile-time constant (with a
    # tf.slice at the replica's offset it was one, and every step compiled the step again).
    f = tf.function(lambda x, k: augment.random_affine(x, k, xla=True, replicas=2), jit_compile=True)
    hlo = [f.experimental_get_compiler_ir(batch, augment.step_key(0, s, r))(stage="hlo") for s, r in ((0, 0), (9, 1))]
    assert hlo[0] == hlo[1]
    angle, scale, sx, sy = (p.numpy() for p in augment.random_parameters(5000, augment.step_key(5, 7, 1), 2))
    assert -7 <= angle.min() < -6.9 and 6.9 < angle.max() <= 7
    assert 0.95 <= scale.min() < 0.951 and 1.049 < scale.max() <= 1.05
    assert -0.05 <= min(sx.min(), sy.min()) and max(sx.max(), sy.max()) <= 0.05


def _cfg(records_dir, job_dir="/tmp/unused", **kw):
    kw.setdefault("pathology", "atelectasis,cardiomegaly")
    kw.setdefault("image_size", 32)
    kw.setdefault("backbone", "tiny")
    return config_lib.make_config(records_dir=records_dir, job_dir=str(job_dir), **kw)


def _mirrored():
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def _draws(trainer, steps):
    """Per (step, replica): the rotation angles the replica step would draw for 4 images."""
    @tf.function
    def draw():
        return trainer.strategy.run(lambda: augment.random_parameters(4, trainer.augment_key(), 2)[0])

    out = []
    for step in steps:
        trainer.optimizer.iterations.assign(step)
        out.append([v.numpy() for v in trainer.strategy.experimental_local_results(draw())])
    return np.array(out)  # (steps, replicas, 4)


def test_replicas_and_steps_draw_different_transforms_and_a_seed_repeats_them(records_dir):
    strategy = _mirrored()
    runs = {}
    for name, seed in (("a", 0), ("again", 0), ("other", 1)):
        runs[name] = _draws(train.Trainer(_cfg(records_dir, seed=seed), strategy, model_fn=_small_model), [0, 1, 2])
    a = runs["a"]
    assert a.shape == (3, 2, 4)
    np.testing.assert_array_equal(runs["again"], a)  # same --seed, same transforms
    assert not np.isclose(runs["other"], a).any()  # another seed, other transforms
    flat = a.reshape(6, 4)
    assert len({tuple(r) for r in flat.round(6)}) == 6  # every (step, replica) its own draws
    # The replicas share out the global batch's draws: one replica with 8 images draws the same.
    for step in range(3):
        one = augment.random_parameters(8, augment.step_key(0, step, 0))[0].numpy()
        np.testing.assert_array_equal(one, a[step].reshape(8))


def _batches(n, global_batch, seed=0):
    rng = np.random.default_rng(seed)
    data = {"image": rng.integers(0, 255, (n * global_batch, 32, 32, 1)).astype(np.uint8),
            "targets": np.stack([rng.integers(0, 3, n * global_batch), rng.random(n * global_batch)],
                                axis=1).astype(np.float32),
            "masks": (rng.random((n * global_batch, 2)) < 0.8).astype(np.float32)}
    return tf.data.Dataset.from_tensor_slices(data).batch(global_batch, drop_remainder=True)


@pytest.mark.parametrize("strategy_name", ["default", "mirrored"])
def test_steps_per_execution_leaves_the_weights_of_single_steps(records_dir, strategy_name):
    """5 steps as 1+1+1+1+1 calls and as 3+2: the same augmented steps, the same weights,
    bit for bit (TF 2.21 on CPU; the calls are different graphs, a while loop around the
    step, so another TensorFlow could round differently: then compare with a tolerance)."""
    strategy = _mirrored() if strategy_name == "mirrored" else tf.distribute.get_strategy()
    cfg = _cfg(records_dir, learning_rate=0.05, jit_compile=True, seed=4)
    keras.utils.set_random_seed(1)
    trainer = train.Trainer(cfg, strategy, model_fn=_small_model)
    # One trainer for both call patterns, put back to its first state (weights, Adam's
    # moments, its step count: the augmentation's seed) before each: a second Trainer would
    # trace and compile the step again (~7 s, ~10 s under Mirrored on 2 cores).
    variables = trainer.model.variables + trainer.optimizer.variables
    start = [v.numpy() for v in variables]
    results = []
    for calls in ([1, 1, 1, 1, 1], [3, 2]):
        for v, value in zip(variables, start):
            v.assign(value)
        it = iter(strategy.experimental_distribute_dataset(_batches(5, 8)))
        losses = np.concatenate([trainer.train_steps(it, n) for n in calls])
        assert losses.shape == (5,) and int(trainer.optimizer.iterations.numpy()) == 5
        results.append((losses, [w.numpy() for w in trainer.model.trainable_weights]))
    np.testing.assert_array_equal(results[1][0], results[0][0])
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_array_equal(a, b)
    # The augmentation really runs in the step: without it the same steps train otherwise.
    keras.utils.set_random_seed(1)
    plain = train.Trainer(dataclasses.replace(cfg, augment=False), strategy, model_fn=_small_model)
    it = iter(strategy.experimental_distribute_dataset(_batches(5, 8)))
    assert not np.allclose(plain.train_steps(it, 5), results[0][0])


def test_run_with_steps_per_execution_keeps_its_epochs(records_dir, tmp_path):
    """4 steps per epoch in calls of 3: 3 and the remainder 1, and the checkpoint (what a
    resumed job and its augmentation seeds continue from) counts 8 steps after 2 epochs."""
    job = tmp_path / "job"
    train.run(_cfg(records_dir, job, epochs=2, steps_per_epoch=4, batch_size=4, steps_per_execution=3,
                   jit_compile=False, patience=5))
    rows = (job / "history.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    reader = tf.train.load_checkpoint(str(job / "backup"))
    iterations = [k for k in reader.get_variable_to_shape_map() if k.startswith("optimizer/") and "iterations" in k]
    assert [int(reader.get_tensor(k)) for k in iterations] == [8]  # 2 epochs x 4 steps
    with pytest.raises(config_lib.ConfigError, match="--steps_per_execution must be >= 1"):
        _cfg(records_dir, steps_per_execution=0)
