"""The training loop: one design for the default, Mirrored and MultiWorkerMirrored strategies.

Why a ``strategy.run`` loop and not ``Model.fit`` (measured on Keras 3.15, TF 2.21; see
BUILD_NOTES.md):

* ``fit(jit_compile=True)`` under MirroredStrategy fails ("Trying to access resource ...
  located in device CPU:1 from device CPU:0"), and ``jit_compile="auto"`` silently turns
  XLA off under any strategy;
* ``fit`` under MultiWorkerMirroredStrategy fails (keras#20585).

So each replica runs ``forward_backward``, a ``tf.function(jit_compile=True)`` that augments
the batch (``trainer.augment``: a random affine per image, drawn statelessly from
``--seed``, the step and the replica) and returns the loss and gradients, and the optimizer
applies them outside XLA, where Keras' optimizer all-reduces (sums) them across replicas.
Without a distribution strategy (one device) the update is compiled with the step, as
Keras' own ``fit(jit_compile=True)`` does there. Each replica's loss is divided by *global*
per-task counts of unmasked labels (an all-reduce before the XLA call), so the sum over
replicas is exactly the global-batch mean: one step on N replicas equals one step on one
replica with the same global batch (tested).

``--steps_per_execution N`` runs N steps in one ``tf.function`` call (a ``tf.range`` loop
over the distributed iterator) to save the host's per-call overhead; an epoch's steps are
still exactly ``steps_per_epoch`` (the last call of an epoch runs the remainder), and each
step's loss is returned, so history.csv and the progress bar see the same losses.

Per-epoch outputs, best-model saving and early stopping are Keras callbacks driven from the
loop through ``keras.callbacks.CallbackList`` (``HistoryCsv``, ``EpochSummaries``,
``BestModel``, ``ResumableEarlyStopping``). Fault tolerance: a ``tf.train.CheckpointManager``
in ``JOB_DIR/backup`` holds model, optimizer, epoch, best score and early-stopping patience
after every epoch; a restarted job resumes at the next epoch with the callbacks' state.
Best model: ``JOB_DIR/model.keras`` (P(positive) per task), ``JOB_DIR/saved_model/``
(serving signature on encoded image bytes), ``metrics.json``, ``history.csv`` and
TensorBoard logs in ``JOB_DIR/logs``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
# is_op_determinism_enabled / disable_op_determinism: not in tf.config's public API (TF 2.21).
from tensorflow.python.framework import config as tf_config

from core import storage
from schemas import chexpert, job_spec
from serving import export, heads
from trainer import augment
from trainer import distill
from trainer import input as input_lib
from trainer import metrics as metrics_lib
from trainer import model as model_lib
from trainer import report as report_lib
from trainer import config as config_lib
from trainer.config import TrainConfig, read_manifest

log = logging.getLogger(__name__)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The one place a strategy is created.

    ``auto``: MultiWorkerMirrored when TF_CONFIG names several workers, Mirrored over all
    GPUs when there are several, else the default strategy.
    """
    if name == "auto":
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
        if sum(len(v) for k, v in cluster.items() if k in ("chief", "worker")) > 1:
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().jobs


class Trainer:
    """Model, optimizer and the distributed, XLA-compiled train step."""

    def __init__(self, cfg: TrainConfig, strategy: tf.distribute.Strategy, model_fn=model_lib.build_model):
        """Builds model and optimizer inside ``strategy.scope()``, the model under
        ``cfg.precision``'s Keras dtype policy (and Adam in a ``LossScaleOptimizer`` for
        ``mixed_float16``).

        Args:
            cfg: the configuration.
            strategy: where to train.
            model_fn: ``cfg -> keras.Model`` with the outputs of ``model_lib.build_model``.
        """
        self.cfg = cfg
        self.strategy = strategy
        with strategy.scope():
            # Layers take their compute dtype from the policy in force when they are built:
            # --precision's, whoever builds the trainer (run, the benchmarks, the tests).
            with _precision_policy(cfg.precision):
                self.model = model_fn(cfg)
            optimizer = keras.optimizers.Adam(learning_rate=cfg.learning_rate, beta_1=cfg.beta_1,
                                              beta_2=cfg.beta_2, epsilon=cfg.epsilon)
            if cfg.precision == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            self.optimizer.build(self.model.trainable_variables)
            # Keras compiles the optimizer update with the step only without a distribution
            # strategy: under one, apply_gradients all-reduces through a merge_call, which an
            # XLA function cannot hold (and fit disables XLA there).
            self.update_in_xla = cfg.jit_compile and not tf.distribute.has_strategy()
        self.forward_backward = tf.function(self._forward_backward, jit_compile=cfg.jit_compile)
        self.forward_backward_update = tf.function(self._forward_backward_update, jit_compile=True)
        self._step = tf.function(self._distributed_step)
        self._steps = tf.function(self._distributed_steps)
        self._predict = tf.function(self._predict_fn, jit_compile=cfg.jit_compile, reduce_retracing=True)

    def _forward_backward(self, image, targets, masks, denominators, teacher=None, augment_key=None):
        if augment_key is not None:
            image = augment.random_affine(image, augment_key, xla=self.cfg.jit_compile,
                                          replicas=self.strategy.num_replicas_in_sync)
        with tf.GradientTape() as tape:
            logits = self.model(image, training=True)
            loss = model_lib.masked_loss(logits, targets, masks, denominators, self.cfg)
            if teacher is not None:
                soft = distill.distill_loss(distill.student_logits(logits, self.cfg), teacher,
                                            self.cfg.distill_temperature,
                                            self.cfg.batch_size * self.strategy.num_replicas_in_sync)
                # masked_loss is this replica's share of a mean; so is soft: the sum is the mix.
                loss = (1.0 - self.cfg.distill_alpha) * loss + self.cfg.distill_alpha * soft
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, self.model.trainable_variables)
        return loss, grads

    def _forward_backward_update(self, *args):
        loss, grads = self._forward_backward(*args)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return loss

    def augment_key(self) -> tf.Tensor:
        """This replica's ``augment.step_key`` for this step (in a replica context).

        The step is the optimizer's iteration count: checkpointed, so a resumed job draws
        what an uninterrupted one would have drawn (with LossScaleOptimizer a skipped,
        non-finite step leaves it, and the next batch reuses its draws).
        """
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return augment.step_key(self.cfg.seed, self.optimizer.iterations, replica)

    def _replica_step(self, batch):
        ctx = tf.distribute.get_replica_context()
        denominators = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(batch["masks"], axis=0))
        key = self.augment_key() if self.cfg.augment else None
        args = (batch["image"], batch["targets"], batch["masks"], denominators, batch.get("teacher"), key)
        if self.update_in_xla:
            return self.forward_backward_update(*args)
        loss, grads = self.forward_backward(*args)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return loss

    def _distributed_step(self, iterator):
        per_replica = self.strategy.run(self._replica_step, args=(next(iterator),))
        return tf.cast(self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None), tf.float32)

    def _distributed_steps(self, iterator, n):
        losses = tf.TensorArray(tf.float32, size=n)
        for i in tf.range(n):
            losses = losses.write(i, self._distributed_step(iterator))
        return losses.stack()

    def train_step(self, iterator) -> tf.Tensor:
        """One optimizer step on the next global batch; returns the global mean loss."""
        return self._step(iterator)

    def train_steps(self, iterator, n: int) -> np.ndarray:
        """``n`` optimizer steps in one ``tf.function`` call (one trace for every ``n`` > 1);
        returns each step's global mean loss, float32 (n,)."""
        if n == 1:
            return np.array([self._step(iterator).numpy()], np.float32)
        return self._steps(iterator, tf.constant(n, tf.int32)).numpy()

    def _predict_fn(self, image):
        logits = self.model(image, training=False)
        return tf.stack([heads.positive_probability(logits[t], self.cfg.head_kind(t)) for t in self.cfg.tasks],
                        axis=-1)

    def predict(self, dataset: tf.data.Dataset, files: list[str]) -> dict:
        """P(positive) (n, T), raw codes (n, T), paths and studies (n,) over an eval dataset
        read from ``files`` (named in the error if one is corrupt)."""
        probs, raw, paths, studies = [], [], [], []
        for batch in input_lib.checked(dataset, files):
            probs.append(self._predict(batch["image"]).numpy())
            raw.append(batch["raw"].numpy())
            paths.append(batch["path"].numpy())
            studies.append(batch["study"].numpy())
        t = len(self.cfg.tasks)
        return {"probs": np.concatenate(probs) if probs else np.zeros((0, t)),
                "raw": np.concatenate(raw) if raw else np.zeros((0, t), np.int64),
                "paths": np.concatenate(paths) if paths else np.zeros((0,), object),
                "studies": np.concatenate(studies) if studies else np.zeros((0,), object)}


def evaluate_predictions(pred: dict, cfg: TrainConfig) -> dict:
    """Per-task metrics at ``cfg.threshold`` on known labels (uncertain codes left out; blank
    counts as negative, as in the CheXpert valid set where nothing is blank)."""
    tasks = {}
    for i, task in enumerate(cfg.tasks):
        raw = pred["raw"][:, i]
        known = raw != int(chexpert.Code.UNCERTAIN)
        y = (raw[known] == int(chexpert.Code.POSITIVE)).astype(int)
        tasks[task] = metrics_lib.task_report(y, pred["probs"][known, i], cfg.threshold)
    return {"tasks": tasks, "mean_auroc": metrics_lib.nanmean(t["auroc"] for t in tasks.values()),
            "images": int(len(pred["probs"]))}


@contextlib.contextmanager
def _precision_policy(name: str):
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


class HistoryCsv(keras.callbacks.Callback):
    """Appends one row per epoch to ``history.csv``: ``epoch`` (1-based), then ``columns``.

    Not ``keras.callbacks.CSVLogger``: that one sorts its columns by name and numbers
    epochs from 0, and history.csv keeps the order and numbering it always had. A resumed
    job first drops the rows after its restored epoch: one killed after logging an epoch but
    before checkpointing it repeats that epoch, and must not log it twice.
    """

    def __init__(self, path: str, columns: list[str], epochs_done: int):
        super().__init__()
        self.path, self.columns, self.epochs_done = path, columns, epochs_done

    def on_train_begin(self, logs=None):
        if not os.path.exists(self.path):
            return
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(r for r in rows if int(r["epoch"]) <= self.epochs_done)

    def on_epoch_end(self, epoch, logs=None):
        new = not os.path.exists(self.path)
        # Opened per epoch, not held open as CSVLogger does: a killed job leaves whole rows.
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["epoch"] + self.columns)
            if new:
                w.writeheader()
            w.writerow({"epoch": epoch + 1, **{k: logs[k] for k in self.columns}})


class EpochSummaries(keras.callbacks.Callback):
    """Writes each epoch's logs as TensorBoard scalars (step = 1-based epoch), NaNs left out.

    Not ``keras.callbacks.TensorBoard``: that one files scalars under ``train/`` and
    ``validation/`` with ``epoch_`` prefixes, which would rename every curve of ``logs/``.
    """

    def __init__(self, writer):
        super().__init__()
        self.writer = writer

    def on_epoch_end(self, epoch, logs=None):
        with self.writer.as_default(step=epoch + 1):
            for k, v in logs.items():
                if not math.isnan(v):
                    tf.summary.scalar(k, v)

    def on_train_end(self, logs=None):
        self.writer.flush()


class BestModel(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint(save_best_only=True)`` on the validation mean AUROC that also writes
    the saved epoch's ``metrics.json``, so the two always describe the same model.

    Keras flattens nested logs, so the per-task metrics come through ``evaluation`` (the
    ended epoch's ``evaluate_predictions`` result), which the loop sets before each
    ``on_epoch_end``. An undefined (NaN) mean AUROC is never an improvement: ``best``
    starts at -1, below any AUROC, instead of at the first epoch's value as Keras' default.

    Until some epoch has a defined mean AUROC (``best`` still -1: e.g. every task has one
    class only in the validation split) nothing can be selected, so each epoch's model is
    written as it ends, with ``metrics.json`` saying ``"selected": false`` and
    ``"best_epoch": null``: the run ends with the last epoch's model, said to be that,
    instead of without any model.keras. The first epoch with a defined mean AUROC replaces
    it as a selected best.
    """

    def __init__(self, job_dir: str, best: float, fields: dict, report: dict):
        """Args:
            job_dir: where model.keras and metrics.json go.
            best: the best mean AUROC so far (-1 for none; a resumed job's checkpoint).
            fields: what metrics.json says besides the epoch's metrics (split, threshold, ...).
            report: metrics.json's content so far (a resumed job's file, else empty).
        """
        super().__init__(os.path.join(job_dir, "model.keras"), monitor="val_mean_auroc", mode="max",
                         save_best_only=True, initial_value_threshold=best)
        self.metrics_path = os.path.join(job_dir, "metrics.json")
        self.fields, self.report, self.evaluation = fields, report, None

    @property
    def selected(self) -> bool:
        """Whether some epoch (of this run or before a restart) had a defined mean AUROC."""
        return self.best > -1

    def on_epoch_end(self, epoch, logs=None):
        before = self.best
        super().on_epoch_end(epoch, logs)
        if self.best != before:  # saved: this epoch is the new best
            self._write_report(epoch, selected=True)
        elif not self.selected:
            log.warning("epoch %d: validation mean AUROC undefined (every task has one class only in the %s split) "
                        "and no epoch had a defined one: model.keras is this last epoch's model, not one selected "
                        "on validation", epoch + 1, self.fields.get("split"))
            self.model.save(self.filepath, overwrite=True)
            self._write_report(epoch, selected=False)

    def _write_report(self, epoch: int, selected: bool):
        e = self.evaluation
        self.report = {"best_epoch": epoch + 1 if selected else None, "epoch": epoch + 1, "selected": selected,
                       "mean_auroc": e["mean_auroc"], "tasks": e["tasks"], "images": e["images"], **self.fields}
        if not selected:
            self.report["note"] = ("no epoch had a defined validation mean AUROC (every task had one class only in "
                                   f"the {self.fields.get('split')} split): model.keras is the last epoch's model, "
                                   "not one selected on validation")
        report_lib.write_metrics(self.metrics_path, self.report)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """``EarlyStopping`` whose patience survives a restart.

    Keras resets ``wait`` and ``best`` at ``on_train_begin``, so a resumed job would wait a
    full ``patience`` again; this one starts from the checkpoint's values. ``best`` starts
    at -1 rather than Keras' None for the reason ``BestModel`` gives. The best weights are
    not restored in memory (``restore_best_weights``): the run reloads ``model.keras``, which
    also holds the best epoch of a run that was killed and resumed.

    Keras' rule is the hand-written one it replaced (stop once ``patience`` epochs in a row
    brought no better mean AUROC) except at the edges, where Keras' is the sensible one:
    ``--patience 0`` stops at the first epoch without improvement (it stopped after the
    first epoch), and the first epoch never stops a run (with ``--patience 1`` and no
    defined AUROC in epoch 1, a run stopped without any model.keras to export).
    """

    def __init__(self, patience: int, best: float, wait: int):
        super().__init__(monitor="val_mean_auroc", mode="max", patience=patience)
        self.resume_from = (best, wait)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.best, self.wait = self.resume_from


@contextlib.contextmanager
def _op_determinism(on: bool):
    """TensorFlow's deterministic ops (``--deterministic``) for the duration of a run. The
    setting is process-wide, so a run that turned it on turns it off again (a library caller
    or the test process goes on as before); TF's public API can only turn it on."""
    was = tf_config.is_op_determinism_enabled()
    if on and not was:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if on and not was:
            tf_config.disable_op_determinism()


def run(cfg: TrainConfig, strategy: tf.distribute.Strategy | None = None) -> dict:
    """Trains, evaluates and exports; returns the contents of metrics.json.

    Args:
        cfg: the validated configuration.
        strategy: a ready strategy (tests pass one over logical CPUs); default from
            ``cfg.strategy``.
    """
    with _op_determinism(cfg.deterministic):
        return _run(cfg, strategy)


def _run(cfg: TrainConfig, strategy: tf.distribute.Strategy | None) -> dict:
    keras.utils.set_random_seed(cfg.seed)
    strategy = strategy or make_strategy(cfg.strategy)
    chief = is_chief(strategy)
    # Non-chief workers write their (identical) copies to scratch: every worker must take
    # part in saving a distributed checkpoint, only the chief's lands in JOB_DIR.
    job_dir = cfg.job_dir if chief else tempfile.mkdtemp(prefix="worker-")
    os.makedirs(job_dir, exist_ok=True)
    if chief:
        config_path = os.path.join(job_dir, "config.json")
        if os.path.exists(config_path):  # a rerun resumes this job: only with its settings
            with open(config_path) as f:
                config_lib.check_resumable(cfg, TrainConfig.from_json(f.read()))
        with open(config_path, "w") as f:
            f.write(cfg.to_json())
        storage.write_bytes(os.path.join(job_dir, job_spec.FILE), cfg.spec().to_json().encode())
    manifest = read_manifest(cfg.records_dir)
    train_files = input_lib.shard_files(cfg.records_dir, cfg.train_split, manifest)
    eval_files = input_lib.shard_files(cfg.records_dir, cfg.eval_split, manifest)
    skipped: dict[str, str] = {}
    if cfg.skip_corrupt:
        train_files, bad = input_lib.drop_corrupt(train_files)
        eval_files, bad_eval = input_lib.drop_corrupt(eval_files)
        skipped = {**bad, **bad_eval}
    replicas = strategy.num_replicas_in_sync
    global_batch = cfg.batch_size * replicas
    n_train = input_lib.count_examples(manifest, cfg.train_split, cfg.views)
    steps = cfg.steps_per_epoch or max(n_train // global_batch, 1)
    if cfg.synthetic:
        log.warning("training on SYNTHETIC records (%s, from %s); the model will say so in config.json, "
                    "metrics.json and every report, score and page it produces", cfg.records_dir,
                    job_spec.generator_of(cfg.provenance))
    log.info("%d replicas, global batch %d (%d per replica), %d steps/epoch over %d %s images (%d per call), "
             "XLA %s, %s", replicas, global_batch, cfg.batch_size, steps, n_train, cfg.views, cfg.steps_per_execution,
             "on" if cfg.jit_compile else "off", cfg.precision)

    teacher = None
    if cfg.distill_from:
        paths, logits = distill.teacher_cache(cfg, job_dir)
        teacher = distill.lookup(paths, logits)
        log.info("distilling from %s: %d cached teacher predictions, alpha %.2f, T %.1f", ", ".join(cfg.distill_from),
                 len(paths), cfg.distill_alpha, cfg.distill_temperature)
    with _precision_policy(cfg.precision):
        trainer = Trainer(cfg, strategy)
        prob_model = model_lib.probability_model(trainer.model, cfg)
        train_ds = strategy.distribute_datasets_from_function(
            lambda ctx: input_lib.make_dataset(train_files, cfg, training=True,
                                               batch_size=ctx.get_per_replica_batch_size(global_batch),
                                               input_context=ctx, skip_errors=cfg.skip_corrupt, teacher=teacher))
        eval_ds = input_lib.make_dataset(eval_files, cfg, training=False, batch_size=max(cfg.batch_size, 32),
                                         skip_errors=cfg.skip_corrupt)
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        best_var = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
        wait_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        ckpt = tf.train.Checkpoint(model=trainer.model, optimizer=trainer.optimizer, epoch=epoch_var,
                                   best=best_var, wait=wait_var)
        backup = tf.train.CheckpointManager(ckpt, os.path.join(job_dir, "backup"), max_to_keep=1)
        if backup.latest_checkpoint:
            ckpt.restore(backup.latest_checkpoint).expect_partial()
            log.info("resuming from %s at epoch %d", backup.latest_checkpoint, int(epoch_var.numpy()) + 1)
        epochs_done = int(epoch_var.numpy())
        report: dict = {}
        metrics_path = os.path.join(job_dir, "metrics.json")
        if os.path.exists(metrics_path):
            with open(metrics_path) as f:
                report = json.load(f)
        columns = ["loss", "val_mean_auroc", *(f"val_auroc_{t}" for t in cfg.tasks), "seconds", "images_per_sec"]
        saver = BestModel(job_dir, float(best_var.numpy()), report=report, fields={
            "split": cfg.eval_split, "threshold": cfg.threshold, "skipped_shards": skipped, "replicas": replicas,
            "global_batch": global_batch, "provenance": dict(cfg.provenance)})
        stopper = ResumableEarlyStopping(cfg.patience, float(best_var.numpy()), int(wait_var.numpy()))
        # Only the chief writes history and TensorBoard logs; every worker saves (to scratch
        # when not the chief), as every worker takes part in the checkpoint.
        per_epoch = [HistoryCsv(os.path.join(job_dir, "history.csv"), columns, epochs_done),
                     EpochSummaries(tf.summary.create_file_writer(os.path.join(job_dir, "logs")))] if chief else []
        callbacks = keras.callbacks.CallbackList(per_epoch + [saver, stopper], model=prob_model)
        prob_model.stop_training = False
        callbacks.on_train_begin()
        iterator = iter(train_ds)
        for epoch in range(epochs_done, cfg.epochs):
            callbacks.on_epoch_begin(epoch)
            start = time.perf_counter()
            # A live bar on a terminal; one line per epoch in log files (cron, CI).
            bar = keras.utils.Progbar(steps, stateful_metrics=["loss"],
                                      verbose=(1 if sys.stdout.isatty() else 2) if chief else 0)
            losses: list[float] = []
            while len(losses) < steps:
                # The last call of an epoch runs what is left: epochs stay steps_per_epoch long.
                n = min(cfg.steps_per_execution, steps - len(losses))
                try:
                    losses.extend(float(x) for x in trainer.train_steps(iterator, n))
                except input_lib.READ_ERRORS as e:
                    raise input_lib.corrupt_error(train_files, e) from None
                bar.update(len(losses), [("loss", float(np.mean(losses[-20:])))])
            seconds = time.perf_counter() - start
            result = evaluate_predictions(trainer.predict(eval_ds, eval_files), cfg)
            logs = {"loss": float(np.mean(losses)), "val_mean_auroc": result["mean_auroc"],
                    **{f"val_auroc_{t}": r["auroc"] for t, r in result["tasks"].items()},
                    "seconds": round(seconds, 2), "images_per_sec": round(steps * global_batch / seconds, 1)}
            log.info("epoch %d/%d  loss %.4f  val mean AUROC %.4f  (%s)  %.0f img/s", epoch + 1, cfg.epochs,
                     logs["loss"], result["mean_auroc"],
                     ", ".join(f"{t} {r['auroc']:.3f}" for t, r in result["tasks"].items()), logs["images_per_sec"])
            saver.evaluation = result
            callbacks.on_epoch_end(epoch, logs)
            epoch_var.assign(epoch + 1)
            best_var.assign(saver.best)
            wait_var.assign(stopper.wait)
            backup.save()
            if prob_model.stop_training:
                log.info("early stopping: no better validation mean AUROC for %d epochs", cfg.patience)
                break
        callbacks.on_train_end()
        report = saver.report
        best = keras.models.load_model(os.path.join(job_dir, "model.keras"))
        export.export_saved_model(best, cfg.spec(), os.path.join(job_dir, "saved_model"))
        # The training config travels too: trainer.evaluate reads from it which records the
        # model was trained and tuned on, so a copied export evaluates on its own, as it did
        # before the job spec existed (scorers read only the spec).
        with open(os.path.join(job_dir, "saved_model", "config.json"), "w") as f:
            f.write(cfg.to_json())
    if not chief:
        shutil.rmtree(job_dir, ignore_errors=True)
    return report
