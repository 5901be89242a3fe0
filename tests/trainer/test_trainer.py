"""trainer/: heads, masked loss, XLA under MirroredStrategy, replica equivalence, outputs."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tests
from core import imaging
from pipeline import build_records, make_sample
from schemas import chexpert, job_spec
from serving import job as job_lib
from serving import preprocess
from trainer import config as config_lib
from trainer import model as model_lib
from trainer import predict, train

ROOT = tests.ROOT


def _cfg(records_dir, job_dir="/tmp/unused", **kw):
    kw.setdefault("pathology", "atelectasis,cardiomegaly")
    kw.setdefault("image_size", 32)
    kw.setdefault("backbone", "tiny")
    return config_lib.make_config(records_dir=records_dir, job_dir=str(job_dir), **kw)


def test_heads_binary_and_multiclass(records_dir):
    cfg = _cfg(records_dir)
    assert cfg.head_kind("cardiomegaly") == "multiclass" and cfg.head_kind("atelectasis") == "binary"
    model = model_lib.build_model(cfg)
    x = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 1)).astype(np.uint8)
    out = model(x)
    assert out["cardiomegaly"].shape == (3, 3) and out["atelectasis"].shape == (3, 1)
    probs = model_lib.probability_model(model, cfg)(x)
    z = out["cardiomegaly"].numpy()
    want = np.exp(z[:, 1]) / (np.exp(z[:, 0]) + np.exp(z[:, 1]))  # softmax over negative/positive only
    np.testing.assert_allclose(probs["cardiomegaly"].numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(probs["atelectasis"].numpy(), 1 / (1 + np.exp(-out["atelectasis"].numpy()[:, 0])),
                               rtol=1e-5)


def test_masked_loss_matches_a_hand_computation(records_dir):
    cfg = _cfg(records_dir)
    logits = {"cardiomegaly": tf.constant([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 3.0]]),
              "atelectasis": tf.constant([[1.0], [-2.0], [0.3]])}
    targets = tf.constant([[0.0, 1.0], [1.0, 0.7], [2.0, 0.0]])  # class index | soft target
    masks = tf.constant([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    denominators = tf.reduce_sum(masks, axis=0)
    got = float(model_lib.masked_loss(logits, targets, masks, denominators, cfg))

    def softmax_ce(z, k):
        z = np.array(z)
        return -(z[k] - np.log(np.exp(z).sum()))

    def bce(z, y):
        p = 1 / (1 + np.exp(-z))
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))

    card = (softmax_ce([2.0, 0.0, -1.0], 0) + softmax_ce([0.0, 1.0, 0.0], 1)) / 2  # row 3 masked
    atel = (bce(1.0, 1.0) + bce(0.3, 0.0)) / 2  # row 2 (soft 0.7) masked
    assert got == pytest.approx((card + atel) / 2, rel=1e-5)
    # A fully masked task contributes zero, not NaN.
    zero = model_lib.masked_loss(logits, targets, tf.zeros_like(masks), tf.zeros(2), cfg)
    assert float(zero) == 0.0


def _small_model(cfg):
    """No batch norm: its per-replica batch statistics would differ from one replica's."""
    image = keras.Input((cfg.image_size, cfg.image_size, 1), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255.0)(image)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = {t: keras.layers.Dense(model_lib.NUM_CLASSES[cfg.head_kind(t)], name=t)(x) for t in cfg.tasks}
    return keras.Model(image, outputs)


def test_one_step_on_two_replicas_equals_one_step_on_one(records_dir):
    # epsilon=1: Adam's first step is then ~lr * g / (|g| + 1), proportional to the gradient,
    # so a wrong loss scale across replicas would show (with eps=1e-8 it is ~lr * sign(g)).
    cfg = _cfg(records_dir, learning_rate=0.05, epsilon=1.0, jit_compile=True)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 255, (8, 32, 32, 1)).astype(np.uint8),
             "targets": np.stack([rng.integers(0, 3, 8), rng.random(8)], axis=1).astype(np.float32),
             "masks": np.array([[1, 1], [1, 0], [0, 1], [1, 1], [1, 1], [0, 0], [1, 1], [1, 0]], np.float32)}
    results = []
    for strategy in (tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
        keras.utils.set_random_seed(1)
        trainer = train.Trainer(cfg, strategy, model_fn=_small_model)
        ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
        loss = float(trainer.train_step(iter(ds)))
        results.append((loss, [w.numpy() for w in trainer.model.trainable_weights]))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)  # the global mean, not a per-replica one
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, atol=2e-6)  # float32 summation order only
    moved = max(np.abs(a - b).max() for a, b in zip(results[0][1], [w for w in _init_weights(cfg)]))
    assert moved > 25 * 2e-6  # the step moved weights far more than the tolerance: a 2x loss-scale error shows


@pytest.mark.parametrize("precision,compute,scale", [("float32", "float32", 1.0),
                                                     ("mixed_bfloat16", "bfloat16", 1.0),
                                                     ("mixed_float16", "float16", 2.0 ** 15)])
def test_each_precision_runs_the_step_in_its_dtype_and_trains(records_dir, precision, compute, scale):
    """--precision decides what the step computes in: the backbone's activations in the
    policy's compute dtype, variables and the heads' logits float32, and float16's loss scaled
    (Keras' dynamic scale starts at 2^15, halving after a step whose gradients overflow, which
    it skips) so that small gradients do not flush to zero; the step leaves finite, moved
    weights. A Trainer that ignored the flag fails here. Eager (the step's Python, not its
    tf.function): tracing the tiny DenseNet's step would cost seconds per policy."""
    cfg = _cfg(records_dir, precision=precision, jit_compile=False, augment=False, batch_size=4)
    keras.utils.set_random_seed(0)
    trainer = train.Trainer(cfg, tf.distribute.get_strategy())
    assert keras.mixed_precision.global_policy().name == "float32"  # the policy was put back
    x = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 1)).astype(np.uint8)
    backbone = next(layer for layer in trainer.model.layers if isinstance(layer, keras.Model))
    dtype = keras.backend.standardize_dtype
    assert dtype(backbone(trainer.model.get_layer("normalize")(x)).dtype) == compute
    assert {dtype(logits.dtype) for logits in trainer.model(x).values()} == {"float32"}
    assert {dtype(v.dtype) for v in trainer.model.variables} == {"float32"}
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "mixed_float16")
    assert float(trainer.optimizer.scale_loss(tf.constant(1.0))) == scale
    before = [w.numpy() for w in trainer.model.trainable_weights]
    targets, masks = tf.constant([[0, 1], [1, 0], [2, 1], [0, 0]], tf.float32), tf.ones((4, 2))
    for _ in range(8):  # float16: until the scale is low enough for a finite step
        loss, grads = trainer._forward_backward(tf.constant(x), targets, masks, tf.reduce_sum(masks, axis=0))
        trainer.optimizer.apply_gradients(zip(grads, trainer.model.trainable_variables))
        if int(trainer.optimizer.iterations.numpy()):
            break
    after = [w.numpy() for w in trainer.model.trainable_weights]
    assert int(trainer.optimizer.iterations.numpy()) == 1 and np.isfinite(float(loss))
    assert all(np.isfinite(w).all() for w in after)
    assert max(np.abs(a - b).max() for a, b in zip(after, before)) > 1e-4


def _init_weights(cfg):
    keras.utils.set_random_seed(1)
    return [w.numpy() for w in _small_model(cfg).trainable_weights]


def test_xla_really_compiles_the_step_on_both_replicas(records_dir, tmp_path):
    dump = tmp_path / "xla"
    env = dict(os.environ, XLA_FLAGS=f"--xla_dump_to={dump}", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "tests.xla_probe", records_dir], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and all(np.isfinite(result["losses"]))
    compiled = {f.split(".")[0] for f in os.listdir(dump)
                if "forward_backward" in f and f.endswith("cpu_after_optimizations.txt")}
    assert len(compiled) >= 2, sorted(os.listdir(dump))[:20]  # one XLA executable per replica device


def test_one_epoch_smoke_writes_every_output(records_dir, tmp_path):
    cfg = _cfg(records_dir, tmp_path / "job", epochs=1, steps_per_epoch=3, batch_size=4, jit_compile=False)
    report = train.run(cfg)
    job = tmp_path / "job"
    for name in ("config.json", "model.keras", "metrics.json", "history.csv", "saved_model", "logs", "backup"):
        assert (job / name).exists(), name
    # Trained on the synthetic sample, and both files a user reads first say so.
    for name in ("config.json", "metrics.json"):
        prov = json.loads((job / name).read_text())["provenance"]
        assert prov["synthetic"] is True and prov["records_dir"] == os.path.abspath(records_dir), name
    assert config_lib.TrainConfig.from_json((job / "config.json").read_text()) == cfg
    metrics = json.loads((job / "metrics.json").read_text())
    # What run() returned, as strict JSON holds it (an undefined NPV or AUROC is null there).
    from trainer import report as report_lib

    assert set(metrics["tasks"]) == {"cardiomegaly", "atelectasis"}
    assert metrics == json.loads(json.dumps(report_lib.strict_json(report), allow_nan=False))
    for r in metrics["tasks"].values():
        assert {"auroc", "auprc", "f1", "accuracy", "sensitivity", "specificity", "positives", "negatives"} <= set(r)
    model = keras.models.load_model(str(job / "model.keras"))
    x = np.zeros((2, 32, 32, 1), np.uint8)
    probs = model(x)
    assert set(probs) == {"cardiomegaly", "atelectasis"} and probs["atelectasis"].shape == (2,)
    served = tf.saved_model.load(str(job / "saved_model")).signatures["serving_default"]
    jpeg = imaging.encode(np.full((60, 40), 90, np.uint8), "jpeg")
    out = served(images=tf.constant([jpeg, jpeg]))
    assert set(out) == {"cardiomegaly", "atelectasis"}
    x = imaging.preprocess(jpeg, "x.jpg", 32)[None, :, :, None]
    np.testing.assert_allclose(out["atelectasis"].numpy()[0], model(x)["atelectasis"].numpy()[0], atol=2e-3)


def test_bad_flags_name_the_flag(records_dir):
    with pytest.raises(config_lib.ConfigError, match="--pathology 'atelectasiss'"):
        _cfg(records_dir, pathology="atelectasiss")
    with pytest.raises(config_lib.ConfigError, match="--image_size=640 is larger than the records' 32"):
        _cfg(records_dir, image_size=640)
    with pytest.raises(config_lib.ConfigError, match="hold no labeller targets for consolidation.*--labeller"):
        _cfg(records_dir, policy="consolidation=self_trained")
    with pytest.raises(config_lib.ConfigError, match="no manifest.json"):
        _cfg("/nonexistent")
    assert _cfg(records_dir, pathology="competition").tasks == (
        "cardiomegaly", "edema", "consolidation", "atelectasis", "pleural_effusion")
    assert len(_cfg(records_dir, pathology="all").tasks) == 14


def test_imagenet_weights_offline_fail_with_a_clear_message(records_dir):
    cfg = _cfg(records_dir, backbone="densenet121", weights="imagenet")
    with pytest.raises(model_lib.WeightsError, match="could not download.*--weights none"):
        model_lib.build_model(cfg)


def test_the_command_line_defaults_are_the_2019_projects_and_reach_the_optimizer(records_dir, tmp_path):
    """README: Adam lr 1e-4 (beta 0.9/0.999, eps 1e-8), batch 16 per replica, threshold 0.35,
    DenseNet121 at 320 px, XLA on; and each optimizer setting reaches Adam as given (not
    swapped: Adam's first step is the same whatever the betas, so the step tests cannot tell)."""
    from trainer import task

    try:
        task.FLAGS(["trainer.task", f"--records_dir={records_dir}", f"--job_dir={tmp_path / 'job'}",
                    "--image_size=32"])  # the test records' size; the default is checked below
        cfg = task.config_from_flags()
        assert task.FLAGS["image_size"].default == 320
    finally:
        task.FLAGS.unparse_flags()
    assert (cfg.learning_rate, cfg.beta_1, cfg.beta_2, cfg.epsilon) == (1e-4, 0.9, 0.999, 1e-8)
    assert (cfg.batch_size, cfg.threshold, cfg.backbone, cfg.weights) == (16, 0.35, "densenet121", "none")
    assert (cfg.tasks, cfg.policy["atelectasis"], cfg.jit_compile, cfg.augment, cfg.deterministic) == (
        ("atelectasis",), "ones", True, True, False)
    cfg = _cfg(records_dir, learning_rate=3e-4, beta_1=0.8, beta_2=0.95, epsilon=1e-6)
    opt = train.Trainer(cfg, tf.distribute.get_strategy(), model_fn=_small_model).optimizer
    assert (float(opt.learning_rate), opt.beta_1, opt.beta_2, opt.epsilon) == (
        pytest.approx(3e-4), 0.8, 0.95, 1e-6)


def test_deterministic_runs_with_one_seed_give_the_same_weights(records_dir, tmp_path):
    """--deterministic: two runs with one --seed end with the same weights, bit for bit (by
    default parallel reads hand records over in whatever order they finish, so they do
    not), and not merely the seed's initial weights; the process-wide op determinism is off
    again afterwards; XLA is refused with the reason."""
    from tensorflow.python.framework import config as tf_config

    def weights(name):
        cfg = _cfg(records_dir, tmp_path / name, epochs=1, steps_per_epoch=4, batch_size=4, jit_compile=False,
                   deterministic=True, seed=3)
        train.run(cfg)
        assert not tf_config.is_op_determinism_enabled()
        return cfg, keras.models.load_model(str(tmp_path / name / "model.keras")).get_weights()

    (cfg, a), (_, b) = weights("a"), weights("b")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    keras.utils.set_random_seed(3)
    initial = model_lib.build_model(cfg).get_weights()
    assert a[0].shape == initial[0].shape and not np.array_equal(a[0], initial[0])  # the stem's kernel trained
    with pytest.raises(config_lib.ConfigError, match="--deterministic needs --nojit_compile"):
        _cfg(records_dir, deterministic=True)


def test_model_keras_loads_with_plain_keras_in_a_fresh_interpreter(trained_job, sample_dir, tmp_path):
    """What a Keras user does with a shared .keras file: load_model, no project import, and
    the same P(positive) as our own inference path."""
    from pipeline import make_sample
    from serving import job as job_lib
    from serving import preprocess
    from serving.predict import predict_batch

    job = job_lib.load_job(trained_job)
    valid = os.path.join(sample_dir, make_sample.DATASET_DIR, "valid")
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(valid) for f in fs)[:4]
    batch = np.stack([preprocess.model_input(open(f, "rb").read(), f, job.spec) for f in files])
    np.save(tmp_path / "batch.npy", batch)
    code = ("import sys, json, keras, numpy as np\n"
            f"m = keras.models.load_model({os.path.join(trained_job, 'model.keras')!r})\n"
            f"out = m.predict(np.load({str(tmp_path / 'batch.npy')!r}), verbose=0)\n"
            "assert not [k for k in sys.modules if k.split('.')[0] in ('trainer', 'pipeline', 'schemas')]\n"
            "print(json.dumps({k: v.tolist() for k, v in out.items()}))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    want = predict_batch(job, batch)  # (B, T) in job.tasks order
    assert set(got) == set(job.tasks) == {"atelectasis", "cardiomegaly"}  # a binary and a 3-class head
    for i, task in enumerate(job.tasks):
        np.testing.assert_allclose(got[task], want[:, i], atol=1e-6)


def test_a_job_folder_is_resumed_only_with_its_own_settings(records_dir, tmp_path):
    """Training again into a job folder with other settings must not rewrite config.json
    over a model trained otherwise (a different pathology crashed mid-way and left the two
    disagreeing; a different learning rate silently resumed under the new one)."""
    # jit_compile=False in the runs of this test and of others that are not about XLA: the
    # tiny DenseNet's step compiles for ~10 s on 2 cores per run (the session's trained_job,
    # the Trainer-level tests and the multi-worker one train with XLA).
    cfg = _cfg(records_dir, tmp_path / "job", epochs=1, steps_per_epoch=2, batch_size=4, jit_compile=False)
    train.run(cfg)
    job = tmp_path / "job"
    before = {n: (job / n).read_bytes() for n in ("config.json", "model.keras", "metrics.json")}
    for change in ({"pathology": "cardiomegaly"}, {"learning_rate": 5e-2}):
        other = _cfg(records_dir, job, epochs=2, steps_per_epoch=2, batch_size=4, jit_compile=False, **change)
        with pytest.raises(config_lib.ConfigError, match="holds a job trained with other settings"):
            train.run(other)
        assert {n: (job / n).read_bytes() for n in before} == before
    longer = _cfg(records_dir, job, epochs=2, steps_per_epoch=2, batch_size=4, jit_compile=False)  # resumes
    assert train.run(longer)["best_epoch"] in (1, 2)


def _hand_written_rule(scores, patience):
    """The early stopping and best-model rule the callbacks replaced: (saved epochs, last epoch)."""
    best, wait, saved = -1.0, 0, []
    for epoch, s in enumerate(scores, 1):
        score = -np.inf if np.isnan(s) else s
        if score > best:
            best, wait = score, 0
            saved.append(epoch)
        else:
            wait += 1
        if wait >= patience:
            return saved, epoch
    return saved, len(scores)


def _drive_callbacks(job, scores, patience, kill_after=None):
    """What train.run does around its epochs, with ``scores`` as the validation mean AUROC;
    ``kill_after`` epochs it starts again from the state the checkpoint would hold."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    state = {"epochs_done": 0, "best": -1.0, "wait": 0, "report": {}}
    saved, last = [], 0
    for stop_at in (kill_after, None):
        saver = train.BestModel(str(job), state["best"], fields={"split": "valid"}, report=state["report"])
        stopper = train.ResumableEarlyStopping(patience, state["best"], state["wait"])
        history = train.HistoryCsv(str(job / "history.csv"), ["loss", "val_mean_auroc"], state["epochs_done"])
        callbacks = keras.callbacks.CallbackList([history, saver, stopper], model=model)
        model.stop_training = False
        callbacks.on_train_begin()
        for epoch in range(state["epochs_done"], len(scores)):
            if epoch == stop_at:
                break
            callbacks.on_epoch_begin(epoch)
            saver.evaluation = {"mean_auroc": scores[epoch], "tasks": {}, "images": 3}
            callbacks.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1), "val_mean_auroc": scores[epoch]})
            if saver.report.get("best_epoch") == epoch + 1:
                saved.append(epoch + 1)
            last = epoch + 1
            state.update(epochs_done=epoch + 1, best=saver.best, wait=stopper.wait, report=saver.report)
            if model.stop_training:
                break
        else:
            callbacks.on_train_end()
        if model.stop_training:
            break
    return saved, last


@pytest.mark.parametrize("seed", range(4))
def test_callbacks_keep_the_stopping_and_best_model_rule_across_a_restart(tmp_path, seed):
    rng = np.random.default_rng(seed)
    scores = [float("nan") if rng.random() < 0.15 else float(np.round(rng.random(), 2)) for _ in range(8)]
    scores[0] = 0.5  # an undefined first epoch with patience 1 is where Keras' rule differs (train.py says so)
    patience = int(rng.integers(1, 4))
    want_saved, want_last = _hand_written_rule(scores, patience)
    for kill_after in (None, 1, 3, 5):
        job = tmp_path / f"job-{kill_after}"
        job.mkdir()
        saved, last = _drive_callbacks(job, scores, patience, kill_after)
        assert (saved, last) == (want_saved, want_last), (scores, patience, kill_after)
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["best_epoch"] == want_saved[-1] and metrics["split"] == "valid"
        assert (job / "model.keras").exists()
        text = (job / "history.csv").read_text().splitlines()
        assert text[0] == "epoch,loss,val_mean_auroc"  # the order history.csv always had, epochs from 1
        assert [int(r.split(",")[0]) for r in text[1:]] == list(range(1, want_last + 1))


def test_a_restart_drops_history_rows_of_the_epoch_it_repeats(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n1,0.5\n2,0.4\n")  # epoch 2 logged, killed before its checkpoint
    history = train.HistoryCsv(str(path), ["loss"], epochs_done=1)
    history.on_train_begin()
    history.on_epoch_end(1, {"loss": 0.3})
    assert path.read_text().splitlines() == ["epoch,loss", "1,0.5", "2,0.3"]


def test_the_backup_holds_the_models_weights_and_the_optimizers_state(trained_job):
    """What a killed job resumes from (JOB_DIR/backup) restores the model and the optimizer,
    not only the epoch counters: restored into a fresh trainer, the weights score as the
    job's model.keras of the same epoch does, and Adam's step count and moments are back."""
    cfg = config_lib.load_config(trained_job)
    fresh = train.Trainer(cfg, tf.distribute.get_strategy())
    epoch, best, wait = (tf.Variable(0, dtype=tf.int64), tf.Variable(-1.0, dtype=tf.float64),
                         tf.Variable(0, dtype=tf.int64))
    ckpt = tf.train.Checkpoint(model=fresh.model, optimizer=fresh.optimizer, epoch=epoch, best=best, wait=wait)
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1), dtype=np.uint8)
    before = model_lib.probability_model(fresh.model, cfg)(x)
    ckpt.restore(tf.train.latest_checkpoint(os.path.join(trained_job, "backup"))).expect_partial()
    assert int(epoch.numpy()) == 1 and int(fresh.optimizer.iterations.numpy()) == cfg.steps_per_epoch == 8
    saved = keras.models.load_model(os.path.join(trained_job, "model.keras"))(x)  # epoch 1, the best
    restored = model_lib.probability_model(fresh.model, cfg)(x)
    for task in cfg.tasks:
        np.testing.assert_allclose(restored[task], saved[task], atol=1e-6)
        assert np.abs(np.asarray(before[task]) - np.asarray(saved[task])).max() > 1e-4  # a fresh model differs
    moments = [v for v in fresh.optimizer.variables if "momentum" in v.path or "velocity" in v.path]
    assert moments and all(np.any(v.numpy() != 0) for v in moments)


def test_a_job_on_pad_records_says_pad_and_its_scorers_pad(trained_job, tmp_path):
    """The records' --resize travels: a config made on pad records holds it, the spec the
    trainer writes from it (``cfg.spec()``, as ``train.run`` does) says ``pad``, and the
    scorers (serving's model input, trainer.predict) pad an input file as the records job
    did. The model is the fixture job's, with the spec of a job trained on pad records: no
    second model is trained."""
    root = str(tmp_path / "in")
    make_sample.generate(root, num_patients=2, num_valid_patients=1, seed=7, workers=1, progress=False)
    records = str(tmp_path / "pad")
    build_records.run([f"--input_dir={root}", f"--output_dir={records}", "--image_size=32", "--resize=pad",
                       "--runner=DirectRunner"])
    cfg = _cfg(records, tmp_path / "job", jit_compile=False)
    assert cfg.records_resize == "pad"
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "config.json").write_text(cfg.to_json())
    (job_dir / job_spec.FILE).write_text(cfg.spec().to_json())
    assert json.loads((job_dir / job_spec.FILE).read_text())["records_resize"] == "pad"
    (job_dir / "model.keras").write_bytes(open(os.path.join(trained_job, "model.keras"), "rb").read())
    job = job_lib.load_job(str(job_dir))
    assert job.spec.records_resize == "pad"
    valid = os.path.join(root, make_sample.DATASET_DIR, "valid")
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(valid) for f in fs)[:4]
    padded, squashed = [], []
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        decoded = imaging.decode(data, path, draft_size=32)
        assert decoded.shape[0] != decoded.shape[1]
        padded.append(imaging.resize(decoded, 32, "pad")[:, :, None])
        squashed.append(imaging.resize(decoded, 32, "squash")[:, :, None])
        np.testing.assert_array_equal(preprocess.model_input(data, path, job.spec), padded[-1])
    results, failures = predict.predict_files(job, files, threshold=job.spec.threshold)
    assert not failures
    want, other = job.model(np.stack(padded)), job.model(np.stack(squashed))
    for t in job.tasks:
        got = np.array([r["probs"][t] for r in results])
        np.testing.assert_allclose(got, want[t].numpy(), atol=1e-6)
    assert max(np.abs(want[t].numpy() - other[t].numpy()).max() for t in job.tasks) > 1e-5


def test_a_run_without_a_defined_validation_auroc_keeps_its_last_epoch_and_says_so(records_dir, tmp_path, caplog,
                                                                                   capsys):
    """The sample's valid split has no positive pneumothorax: the mean AUROC is NaN in every
    epoch, so no epoch can be selected. The run used to end in "File not found: model.keras";
    it now keeps (and exports) the last epoch's model, and metrics.json and the log say that it
    was not selected on validation."""
    job = tmp_path / "job"
    cfg = _cfg(records_dir, job, pathology="pneumothorax", epochs=1, steps_per_epoch=1, batch_size=4,
               jit_compile=False)
    with caplog.at_level("WARNING", logger="trainer.train"):
        report = train.run(cfg)
    assert report["tasks"]["pneumothorax"]["positives"] == 0 and np.isnan(report["mean_auroc"])
    assert (report["selected"], report["best_epoch"], report["epoch"]) == (False, None, 1)
    assert "not one selected on validation" in report["note"]
    def refuse(constant):
        raise ValueError(f"metrics.json holds {constant}, which is not JSON")

    saved = json.loads((job / "metrics.json").read_text(), parse_constant=refuse)  # strict, as jq reads it
    assert saved["selected"] is False and saved["mean_auroc"] is None
    assert saved["tasks"]["pneumothorax"]["auroc"] is None
    assert (job / "model.keras").exists() and (job / "saved_model").exists()
    assert "no epoch had a defined one: model.keras is this last epoch's model" in caplog.text
    from trainer import task

    task.print_report(report, str(job))
    out = capsys.readouterr().out
    assert "last epoch 1: not selected, no epoch had a defined validation mean AUROC" in out
    task.print_report(saved, str(job))  # a resumed, finished job's report: the file, nulls and all
    summary = out[out.index("\ntask"):]
    assert capsys.readouterr().out == summary and "mean AUROC               n/a" in summary


@pytest.mark.parametrize("scores,kill_after,want", [
    ([float("nan"), float("nan")], 1, (None, 2, False)),  # the last epoch's model, across a restart
    ([float("nan"), 0.6, float("nan")], 1, (2, 2, True)),  # a defined epoch replaces it, NaN never does
    ([0.6, float("nan"), 0.4], 2, (1, 1, True)),
])
def test_no_defined_auroc_keeps_the_last_epoch_until_one_is_defined(tmp_path, scores, kill_after, want):
    """The callbacks' side of the rule above: until an epoch has a defined mean AUROC each
    epoch's model is written unselected; after one, NaN is never better than it (restarts too)."""
    saved, last = _drive_callbacks(tmp_path, scores, patience=5, kill_after=kill_after)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["best_epoch"], metrics["epoch"], metrics["selected"]) == want
    assert (tmp_path / "model.keras").exists() and last == len(scores)
    assert saved == ([want[0]] if want[0] else [])


def test_a_resumed_job_keeps_the_best_model_from_before_its_restart(trained_job, tmp_path, monkeypatch):
    """The backup holds the best mean AUROC so far, and a resumed job compares its epochs
    with it: a worse epoch 2 leaves model.keras and metrics.json of epoch 1. A copy of the
    session's one-epoch job is rerun with --epochs 2, which restores JOB_DIR/backup as after
    a kill; epoch 2's validation score is set by hand to half of epoch 1's, the training,
    checkpoint and restore are real (without XLA: jit_compile may change on a resume)."""
    job = tmp_path / "job"
    shutil.copytree(trained_job, job)
    before = {n: (job / n).read_bytes() for n in ("model.keras", "metrics.json")}
    best = json.loads(before["metrics.json"])["mean_auroc"]
    assert json.loads(before["metrics.json"])["best_epoch"] == 1 and best > 0
    evaluate = train.evaluate_predictions
    monkeypatch.setattr(train, "evaluate_predictions", lambda pred, cfg: {**evaluate(pred, cfg),
                                                                          "mean_auroc": best / 2})
    cfg = dataclasses.replace(config_lib.load_config(str(job)), job_dir=str(job), epochs=2, jit_compile=False)
    report = train.run(cfg)
    with open(job / "history.csv") as f:
        assert [(r["epoch"], float(r["val_mean_auroc"])) for r in csv.DictReader(f)] == [
            ("1", pytest.approx(best)), ("2", pytest.approx(best / 2))]
    assert (report["best_epoch"], report["mean_auroc"]) == (1, best)
    assert {n: (job / n).read_bytes() for n in before} == before


def test_the_validation_mean_auroc_averages_every_task_with_a_defined_auroc():
    """Early stopping and best-model selection use the mean over all tasks (NaN ones left
    out), each on its known labels (uncertain codes left out)."""
    pos, neg, unc = int(chexpert.Code.POSITIVE), int(chexpert.Code.NEGATIVE), int(chexpert.Code.UNCERTAIN)
    cfg = config_lib.TrainConfig(tasks=("cardiomegaly", "edema", "atelectasis"), records_dir="", job_dir="",
                                 policy=chexpert.resolve_policies())
    raw = np.array([[pos, pos, neg], [neg, neg, neg], [pos, unc, neg], [neg, pos, neg]])
    probs = np.array([[0.9, 0.2, 0.5], [0.1, 0.5, 0.5], [0.8, 0.99, 0.5], [0.2, 0.9, 0.5]])
    out = train.evaluate_predictions({"probs": probs, "raw": raw}, cfg)
    # cardiomegaly ranks perfectly (1.0); edema on its 3 known labels: 1 of 2 pairs (0.5);
    # atelectasis has no positive (NaN).
    assert out["tasks"]["cardiomegaly"]["auroc"] == 1.0 and out["tasks"]["edema"]["auroc"] == 0.5
    assert np.isnan(out["tasks"]["atelectasis"]["auroc"])
    assert out["mean_auroc"] == pytest.approx(0.75) and out["images"] == 4
