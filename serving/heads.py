"""How a saved model's heads give P(positive), and where Grad-CAM reads its features.

``trainer.model`` builds the models; this module is the reading side of what it saves, so
that a scorer can load and walk a ``model.keras`` without the trainer:

* the probability model maps uint8 (B, S, S, 1) to {task: P(positive) (B,)} through, per
  task, a ``Dense`` head named ``task`` (logits (B, 1) or (B, 3)), then ``logit_<task>``,
  ``sigmoid_<task>`` and ``p_<task>`` (``probability_of``);
* both backbones end their features in a layer named ``LAST_CONV_LAYER``;
* models saved before 2026-11-26 end each task in one ``PositiveProbability`` layer, which
  must be registered with Keras before such a file loads (importing this module does it).
"""

from __future__ import annotations

import keras
import tensorflow as tf

# Both DenseNet121 and the tiny one end their features in a layer of this name (the last
# dense block's activation before pooling): Grad-CAM's target.
LAST_CONV_LAYER = "relu"


def positive_probability(logits: tf.Tensor, kind: str) -> tf.Tensor:
    """P(positive), float32 (B,), from one head's logits (B, 1) or (B, 3).

    ``multiclass`` heads are scored as the CheXpert paper scores U-MultiClass: the softmax
    over the negative and positive logits only, the uncertain class left out.
    """
    if kind == "multiclass":
        return tf.nn.softmax(logits[:, :2], axis=-1)[:, 1]
    return tf.sigmoid(logits[:, 0])


@keras.saving.register_keras_serializable(package="chexpert")
class PositiveProbability(keras.layers.Layer):
    """Logits of one head -> P(positive), (B,). Kept only so that model.keras files saved
    before 2026-11-26 still load; new models use Keras' own layers
    (``trainer.model.probability_model``)."""

    def __init__(self, kind: str, **kwargs):
        super().__init__(**kwargs)
        self.kind = kind

    def call(self, logits):
        return positive_probability(logits, self.kind)

    def compute_output_shape(self, input_shape):
        return input_shape[:1]

    def get_config(self):
        return {**super().get_config(), "kind": self.kind}


def probability_of(model: keras.Model, task: str):
    """The layers of ``model`` (a probability model) that turn ``task``'s logits into
    P(positive), as one callable: (B, K) logits -> (B,). Works for models saved before the
    built-in-layer head too (one PositiveProbability layer)."""
    final = model.get_layer(f"p_{task}")
    if isinstance(final, PositiveProbability):
        return final
    select, sigmoid = model.get_layer(f"logit_{task}"), model.get_layer(f"sigmoid_{task}")
    return lambda logits: final(sigmoid(select(logits)))


def backbone_of(model: keras.Model) -> keras.Model:
    """The backbone inside a probability model: its one nested ``keras.Model``."""
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))
