"""DenseNet backbones on one gray channel, one head per task, and the masked loss.

The training model maps a uint8 image batch (B, S, S, 1) to a dict of float32 logits per
task: (B, 1) for a binary (sigmoid) head, (B, 3) for a ``multiclass`` head whose classes are
negative / positive / uncertain (the seed's U-MultiClass Cardiomegaly). ``probability_model``
wraps the same layers to give P(positive) per task, (B,) float32: sigmoid for binary heads,
and for 3-class heads the softmax over the negative and positive logits only, as the
CheXpert paper scores U-MultiClass at test time. ``serving.heads`` reads what it saves
(layer names, the legacy ``PositiveProbability`` layer).
"""

from __future__ import annotations

import logging

import keras
import numpy as np
import tensorflow as tf

from serving.heads import LAST_CONV_LAYER
from trainer.config import TrainConfig

log = logging.getLogger(__name__)

# ImageNet's per-channel statistics averaged over RGB: the input normalisation DenseNet's
# ImageNet weights expect ("torch" mode), folded to one gray channel.
GRAY_MEAN, GRAY_STD = 0.449, 0.226
NUM_CLASSES = {"binary": 1, "multiclass": 3}

_BACKBONES = {
    "densenet121": keras.applications.DenseNet121,
    "densenet169": keras.applications.DenseNet169,
    "densenet201": keras.applications.DenseNet201,
}
# A small DenseNet (growth 16, blocks of 2/2/2/2 BN-ReLU-Conv(1x1)-BN-ReLU-Conv(3x3) units,
# ~0.1 M parameters): DenseNet121's architecture at a size a 2-core CPU trains in minutes.
TINY_BLOCKS = (2, 2, 2, 2)
TINY_GROWTH = 16


def _tiny_densenet(shape) -> keras.Model:
    layers = keras.layers
    # momentum 0.9, not Keras' 0.99: the moving statistics must track weights that move fast
    # in a small model trained from scratch, or evaluation lags training by epochs.
    bn = lambda name: layers.BatchNormalization(momentum=0.9, epsilon=1.001e-5, name=name)  # noqa: E731
    inputs = keras.Input(shape)
    x = layers.Conv2D(2 * TINY_GROWTH, 3, strides=2, padding="same", use_bias=False, name="conv1_conv")(inputs)
    x = layers.Activation("relu", name="conv1_relu")(bn("conv1_bn")(x))
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    for b, units in enumerate(TINY_BLOCKS, start=2):
        for u in range(1, units + 1):
            name = f"conv{b}_block{u}"
            y = layers.Activation("relu", name=f"{name}_0_relu")(bn(f"{name}_0_bn")(x))
            y = layers.Conv2D(4 * TINY_GROWTH, 1, use_bias=False, name=f"{name}_1_conv")(y)
            y = layers.Activation("relu", name=f"{name}_1_relu")(bn(f"{name}_1_bn")(y))
            y = layers.Conv2D(TINY_GROWTH, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
            x = layers.Concatenate(name=f"{name}_concat")([x, y])
        if b < len(TINY_BLOCKS) + 1:
            name = f"pool{b}"
            x = layers.Activation("relu", name=f"{name}_relu")(bn(f"{name}_bn")(x))
            x = layers.Conv2D(x.shape[-1] // 2, 1, use_bias=False, name=f"{name}_conv")(x)
            x = layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)
    x = layers.Activation(LAST_CONV_LAYER, name=LAST_CONV_LAYER)(bn("bn")(x))
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, x, name="densenet_tiny")


class WeightsError(RuntimeError):
    """Pretrained weights could not be obtained (offline, bad path); says what to do."""


def _backbone(name: str, size: int, weights: str | None, channels: int = 1) -> keras.Model:
    shape = (size, size, channels)
    if name == "tiny":
        return _tiny_densenet(shape)
    return _BACKBONES[name](include_top=False, weights=weights, input_shape=shape, pooling="avg")


def _imagenet_gray_backbone(name: str, size: int) -> keras.Model:
    """The ImageNet-pretrained backbone with its RGB stem folded into one gray channel.

    A gray image fed as three equal channels gives conv(x) = sum_c W_c * x, so summing the
    first convolution's kernel over its input channels gives the same response on one
    channel.

    Raises:
        WeightsError: the weights could not be downloaded (this happens on machines with no
            network) or loaded.
    """
    if name == "tiny":
        raise WeightsError("--weights=imagenet: the tiny backbone has no ImageNet weights; use --weights none")
    try:
        rgb = _backbone(name, size, "imagenet", channels=3)
    except Exception as e:  # urllib, SSL, HTTP and IO errors all mean the same thing here
        raise WeightsError(
            f"--weights=imagenet: could not download or load the ImageNet weights for {name} "
            f"({type(e).__name__}: {e}). Machines without network access cannot download them: copy the "
            "Keras weights file here and pass --weights /path/to/file.h5, or train with --weights none."
        ) from e
    gray = _backbone(name, size, None, channels=1)
    for src, dst in zip(rgb.layers, gray.layers):
        w = src.get_weights()
        if w and isinstance(src, keras.layers.Conv2D) and w[0].shape[2] == 3:
            w[0] = w[0].sum(axis=2, keepdims=True)
        if w:
            dst.set_weights(w)
    return gray


def build_model(cfg: TrainConfig) -> keras.Model:
    """The training model: uint8 (B, S, S, 1) -> {task: float32 logits (B, 1) or (B, 3)}.

    Call inside ``strategy.scope()``.
    """
    size = cfg.image_size
    if cfg.weights == "imagenet":
        backbone = _imagenet_gray_backbone(cfg.backbone, size)
    else:
        backbone = _backbone(cfg.backbone, size, None)
        if cfg.weights != "none":
            try:
                backbone.load_weights(cfg.weights)
            except Exception as e:
                raise WeightsError(f"--weights={cfg.weights}: cannot load into {cfg.backbone}: {e}") from e
    image = keras.Input((size, size, 1), dtype="uint8", name="image")
    # One affine map from [0, 255] to ImageNet-normalised gray; it also casts uint8 to the
    # compute dtype (float16/bfloat16 under mixed precision).
    x = keras.layers.Rescaling(1.0 / (255.0 * GRAY_STD), offset=-GRAY_MEAN / GRAY_STD, name="normalize")(image)
    features = backbone(x)
    outputs = {
        task: keras.layers.Dense(NUM_CLASSES[cfg.head_kind(task)], dtype="float32", name=task)(features)
        for task in cfg.tasks
    }
    return keras.Model(image, outputs, name=f"chexpert_{cfg.backbone}")


def probability_model(model: keras.Model, cfg: TrainConfig) -> keras.Model:
    """The same layers with P(positive) per task, (B,) float32: what users load and serve.

    Built from Keras' own layers only, so ``keras.models.load_model("model.keras")`` works in
    an interpreter that never imported this project (how people share .keras files): a
    frozen bias-free Dense takes the logit of "positive" (binary: the logit itself;
    3-class: l1 - l0, since softmax([l0, l1])[1] = sigmoid(l1 - l0), the uncertain class
    left out as in ``serving.heads.positive_probability``), then a sigmoid and a reshape to (B,).
    """
    probs = {}
    for task in cfg.tasks:
        logits = model.output[task]
        weights = np.array([[-1.0], [1.0], [0.0]] if cfg.head_kind(task) == "multiclass" else [[1.0]], np.float32)
        select = keras.layers.Dense(1, use_bias=False, trainable=False, dtype="float32", name=f"logit_{task}")
        z = select(logits)
        select.set_weights([weights])
        p = keras.layers.Activation("sigmoid", dtype="float32", name=f"sigmoid_{task}")(z)
        probs[task] = keras.layers.Reshape((), dtype="float32", name=f"p_{task}")(p)
    return keras.Model(model.input, probs, name=model.name + "_probabilities")


def masked_loss(logits: dict, targets: tf.Tensor, masks: tf.Tensor, denominators: tf.Tensor,
                cfg: TrainConfig) -> tf.Tensor:
    """Mean over tasks of each task's cross-entropy averaged over its unmasked entries.

    Args:
        logits: {task: float32 (B, 1) or (B, 3)}.
        targets: float32 (B, T): 0/1 or a soft value (``lsr_*``); a class index for
            ``multiclass`` heads.
        masks: float32 (B, T); masked entries contribute nothing.
        denominators: float32 (T,): unmasked entries per task in the *global* batch, so that
            summing the replicas' losses (as gradient all-reduce does) gives the global mean.
        cfg: tasks and head kinds.

    Returns:
        Scalar float32: this replica's share of the global loss.
    """
    per_task = []
    for i, task in enumerate(cfg.tasks):
        z = tf.cast(logits[task], tf.float32)
        if cfg.head_kind(task) == "multiclass":
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(targets[:, i], tf.int32), logits=z)
        else:
            ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets[:, i], logits=z[:, 0])
        per_task.append(tf.reduce_sum(ce * masks[:, i]) / tf.maximum(denominators[i], 1.0))
    return tf.add_n(per_task) / float(len(per_task))
