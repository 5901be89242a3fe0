"""The student of the data-selection (learning-to-teach) experiment: a small Keras model
trained one selected mini-batch at a time, on data held in memory.

Episodes are many and short, so the student is built once and re-initialised per episode
(fresh weights from the episode's seed, optimizer state zeroed): each compiled step is
traced once for the whole experiment, not once per episode.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from trainer import metrics


def small_cnn(image_size: int) -> keras.Model:
    """uint8 (B, S, S, 1) -> logit (B,): three conv blocks, ~14k parameters."""
    x = inputs = keras.Input((image_size, image_size, 1), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255.0)(x)
    for filters in (16, 32, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Reshape(())(keras.layers.Dense(1)(x)))


def linear(num_inputs: int) -> keras.Model:
    """float (B, D) -> logit (B,): logistic regression, the toy problems' student."""
    inputs = keras.Input((num_inputs,))
    return keras.Model(inputs, keras.layers.Reshape(())(keras.layers.Dense(1)(inputs)))


class Student:
    """A model, its optimizer and its data; steps on index sets of a fixed size M.

    Args:
        model_fn: () -> a keras.Model mapping a batch of inputs to logits (B,).
        x_train: (N, ...) training inputs; y_train: float32 (N,) targets in [0, 1].
        x_val: (V, ...) validation inputs; y_val: int (V,) labels 0/1.
        learning_rate: the optimizer's.
        optimizer: ``adam`` or ``sgd`` (plain SGD: an update's size is proportional to the
            kept samples' mean gradient, which the toy problems rely on).
    """

    def __init__(self, model_fn: Callable[[], keras.Model], x_train, y_train, x_val, y_val,
                 learning_rate: float = 1e-3, optimizer: str = "adam"):
        self.model_fn = model_fn
        self.model = model_fn()
        optimizers = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}
        if optimizer not in optimizers:
            raise ValueError(f"optimizer={optimizer!r}; expected adam or sgd")
        self.optimizer = optimizers[optimizer](learning_rate)
        self.optimizer.build(self.model.trainable_variables)
        # Not zeros: the learning rate is one of the optimizer's variables in Keras 3.
        self._optimizer_start = [v.numpy() for v in self.optimizer.variables]
        self.x_train, self.y_train = tf.constant(x_train), tf.constant(y_train, tf.float32)
        self.x_val, self.y_val = tf.constant(x_val), np.asarray(y_val)
        self.num_train = len(y_train)

    def reset(self, seed: int) -> None:
        """Fresh weights (the initialisers drawn with ``seed``) and the optimizer as built
        (step 0, empty moments)."""
        keras.utils.set_random_seed(seed)
        fresh = self.model_fn()
        for v, w in zip(self.model.weights, fresh.weights):
            v.assign(w)
        for v, start in zip(self.optimizer.variables, self._optimizer_start):
            v.assign(start)

    @tf.function(jit_compile=True)
    def _state(self, idx):
        logits = self.model(tf.gather(self.x_train, idx), training=False)
        y = tf.gather(self.y_train, idx)
        loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits)
        return tf.sigmoid(logits), loss, y

    def state(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The student's view of candidates ``idx`` (M,): P(positive), loss, target; float32 (M,) each."""
        p, loss, y = self._state(tf.constant(idx, tf.int32))
        return p.numpy(), loss.numpy(), y.numpy()

    @tf.function(jit_compile=True)
    def _grads(self, idx, keep):
        with tf.GradientTape() as tape:
            logits = self.model(tf.gather(self.x_train, idx), training=True)
            per = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.gather(self.y_train, idx), logits=logits)
            loss = tf.reduce_sum(per * keep) / tf.maximum(tf.reduce_sum(keep), 1.0)
        return tape.gradient(loss, self.model.trainable_variables)

    @tf.function
    def _step(self, idx, keep):
        # Forward and backward compiled with XLA; Adam's update outside it, as in trainer.train.
        self.optimizer.apply_gradients(zip(self._grads(idx, keep), self.model.trainable_variables))

    def train_on(self, idx: np.ndarray, keep: np.ndarray) -> None:
        """One update on the kept candidates (mean loss over them); none kept, no update
        (the step is still spent: the selector wasted it)."""
        if keep.any():
            self._step(tf.constant(idx, tf.int32), tf.constant(keep, tf.float32))

    @tf.function(jit_compile=True)
    def _val_probs(self):
        return tf.sigmoid(self.model(self.x_val, training=False))

    def val_auroc(self) -> float:
        return metrics.auroc(self.y_val, self._val_probs().numpy())
