"""Training augmentation, applied inside the replica step on the accelerator.

A small random rotation (±7°), shift (±5% of the side) and scale (0.95-1.05) per image, with
bilinear sampling and black (0) outside the source; no flips: the heart is on the patient's
left, and a mirrored film is a different anatomy. These are the ranges, the matrix and the
sampling the tf.data pipeline used before augmentation moved into the step (tested against
that version on fixed parameters: ``tests/trainer/test_augment.py``).

Why in the step and not in tf.data: a projective transform costs ~0.7 ms per 320x320 image
on a host CPU core, so augmenting in tf.data capped input at the 2019 generator's speed on
2 cores (BUILD_NOTES.md, issue 14). In the step it runs on the replica's device.

Randomness is stateless: the parameters of a step's *global* batch are drawn from the seed
(``--seed``, step), and each replica takes its images' share (``step_key``: seed, step,
replica). So a run is repeatable for a given ``--seed`` (also after a resume: the step is
the optimizer's iteration count, which the checkpoint holds), replicas and steps draw
different transforms, and N replicas draw what one replica with the same global batch
draws (one step on 2 replicas still equals one step on 1, augmentation on: tested).

Under XLA: ``ImageProjectiveTransformV3`` has no XLA kernel (TF 2.21, "No registered
'ImageProjectiveTransformV3' OpKernel for XLA_CPU_JIT"), so ``projective_bilinear`` is the
same sampling written with a gather, which XLA compiles with the forward pass. It computes
the source coordinates with the kernel's float operations in the kernel's order (exact:
they decide which pixels are read) and blends with the kernel's formula; XLA may contract a
multiply-add of the blend into an FMA, which moves a value by at most a few ulps (<= 3e-5 at
255 in the tests) before it is rounded to a uint8 pixel. Without XLA the kernel itself runs
(``serving.preprocess.transform``), which is also faster there than the gather.
"""

from __future__ import annotations

import math

import tensorflow as tf

from serving import preprocess

ROTATION_DEGREES = 7.0
SHIFT_FRACTION = 0.05
SCALE_RANGE = (0.95, 1.05)
# Philox explicitly, not auto_select: the same draws with and without XLA, on CPU and GPU.
RNG_ALG = "philox"


def affine_matrices(angle_degrees: tf.Tensor, scale: tf.Tensor, shift_x: tf.Tensor, shift_y: tf.Tensor,
                    size: int) -> tf.Tensor:
    """Projective transform rows (B, 8) for ``preprocess.transform`` from per-image parameters.

    Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2): rotation by
    ``angle_degrees`` and scaling by ``scale`` about the centre, then the shift.

    Args:
        angle_degrees, scale, shift_x, shift_y: float32 (B,); shifts as fractions of ``size``.
        size: the image side in pixels.
    """
    # The float operations, and their order, of the tf.data version this replaced.
    angle = angle_degrees * math.pi / 180.0
    tx = shift_x * size
    ty = shift_y * size
    c = (size - 1) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    a0, a1, b0, b1 = cos, -sin, sin, cos
    a2 = c - a0 * c - a1 * c - tx
    b2 = c - b0 * c - b1 * c - ty
    zeros = tf.zeros_like(angle)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def step_key(seed: int, step: tf.Tensor, replica: tf.Tensor | int) -> tf.Tensor:
    """What one replica's draws in one step depend on: int64 (3,) ``[seed, step, replica]``
    (``seed, step`` are the stateless seed of the global batch's draws)."""
    return tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64), tf.cast(replica, tf.int64)])


def random_parameters(n: int, key: tf.Tensor, replicas: int = 1) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per-image (angle in degrees, scale, shift_x, shift_y), each float32 (n,), uniform in
    the module's ranges: this replica's ``n`` images of the global batch's draws.

    Args:
        n: images per replica.
        key: ``step_key``.
        replicas: replicas in sync (the global batch is ``n * replicas``).
    """
    low = tf.constant([-ROTATION_DEGREES, SCALE_RANGE[0], -SHIFT_FRACTION, -SHIFT_FRACTION])
    high = tf.constant([ROTATION_DEGREES, SCALE_RANGE[1], SHIFT_FRACTION, SHIFT_FRACTION])
    u = tf.random.stateless_uniform([4, n * replicas], seed=key[:2], alg=RNG_ALG)
    # A gather, not tf.slice: XLA needs a slice's start at compile time, and would compile
    # the step again for every new key (every step).
    u = tf.gather(tf.reshape(u, [4, replicas, n]), key[2], axis=1)
    p = low[:, None] + (high - low)[:, None] * u
    return p[0], p[1], p[2], p[3]


def projective_bilinear(images: tf.Tensor, transforms: tf.Tensor) -> tf.Tensor:
    """``preprocess.transform`` (bilinear, constant fill 0) as gathers XLA can compile.

    Args:
        images: float32 (B, H, W, C) with static H, W, C.
        transforms: float32 (B, 8), as ``preprocess.transform`` takes them.

    Returns:
        float32 (B, H, W, C).
    """
    h, w, c = images.shape[1], images.shape[2], images.shape[3]
    t = [transforms[:, i, None, None] for i in range(8)]
    y = tf.cast(tf.range(h), tf.float32)[None, :, None]
    x = tf.cast(tf.range(w), tf.float32)[None, None, :]
    # The kernel's expressions (image_ops.h, ProjectiveGenerator), term by term.
    projection = t[6] * x + t[7] * y + 1.0
    in_x = (t[0] * x + t[1] * y + t[2]) / projection
    in_y = (t[3] * x + t[4] * y + t[5]) / projection
    x0, y0 = tf.floor(in_x), tf.floor(in_y)
    x1, y1 = x0 + 1.0, y0 + 1.0
    rows = tf.reshape(images, [-1, c])
    base = tf.range(tf.shape(images)[0])[:, None, None] * (h * w)

    def read(yy, xx):
        yi, xi = tf.cast(yy, tf.int32), tf.cast(xx, tf.int32)
        inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        index = base + tf.clip_by_value(yi, 0, h - 1) * w + tf.clip_by_value(xi, 0, w - 1)
        return tf.where(inside[..., None], tf.gather(rows, index), 0.0)

    wx0, wx1 = (x1 - in_x)[..., None], (in_x - x0)[..., None]
    top = wx0 * read(y0, x0) + wx1 * read(y0, x1)
    bottom = wx0 * read(y1, x0) + wx1 * read(y1, x1)
    out = (y1 - in_y)[..., None] * top + (in_y - y0)[..., None] * bottom
    return tf.where((projection == 0.0)[..., None], 0.0, out)


def apply_affine(images: tf.Tensor, matrices: tf.Tensor, xla: bool) -> tf.Tensor:
    """uint8 pixels (B, S, S, 1), or the float32 result of a resize, -> the transformed uint8
    pixels (rounded once, as ``preprocess.to_pixels`` does).

    Args:
        images: uint8 or float32 (B, S, S, 1).
        matrices: float32 (B, 8) (``affine_matrices``).
        xla: use the gather version (inside a ``jit_compile`` function); else the kernel.
    """
    images = tf.cast(images, tf.float32)
    out = projective_bilinear(images, matrices) if xla else preprocess.transform(images, matrices)
    return preprocess.to_pixels(out)


def random_affine(images: tf.Tensor, key: tf.Tensor, xla: bool, replicas: int = 1) -> tf.Tensor:
    """Each image its own random rotation/shift/scale (``random_parameters``); uint8 out.

    Args:
        images: uint8 or float32 (B, S, S, 1), static shape: one replica's batch.
        key: int64 (3,) from ``step_key``.
        xla: as in ``apply_affine``.
        replicas: replicas in sync.
    """
    n, size = images.shape[0], images.shape[1]
    matrices = affine_matrices(*random_parameters(n, key, replicas), size=size)
    return apply_affine(images, matrices, xla)
