r"""Scores image files with a trained job; optional Grad-CAM heatmaps.

    python -m trainer.predict --job_dir jobs/atelectasis xray1.jpg scans/ study.dcm
    python -m trainer.predict --job_dir jobs/atelectasis --heatmap atelectasis --out_dir out/ xray.jpg

Accepts JPEG, PNG (8/16-bit), DICOM or a folder of them; preprocessing is the records job's
own (``trainer.inference.model_input``). Prints a table and writes ``predictions.csv`` and
``predictions.json`` (per-observation P(positive), the positive calls at the thresholds,
and any file that could not be read, with the reason) to ``--out_dir``. A lateral view given
to a frontal-only model is scored with a warning. ``--job_dir`` may also name a SavedModel
folder the trainer exported (``JOB_DIR/saved_model``, on its own: it carries its
``config.json``); heatmaps need ``model.keras``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time
from typing import Callable, Iterable

import keras
import matplotlib

matplotlib.use("Agg")

import matplotlib.cm  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline import imaging  # noqa: E402
from schemas import chexpert  # noqa: E402
from trainer import inference  # noqa: E402
from trainer import model as model_lib  # noqa: E402

log = logging.getLogger(__name__)

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Declares the command-line flags; called only when run as a program, so importing this
    module as a library (tests, other entry points) declares nothing."""
    flags.DEFINE_string("job_dir", None, "trainer.task job folder (model.keras + config.json).")
    flags.DEFINE_string("out_dir", "predictions", "Where predictions.csv/.json and heatmaps go.")
    flags.DEFINE_string("heatmap", None, "Observation slug to draw Grad-CAM overlays for.")
    flags.DEFINE_float("threshold", None, "Decision threshold (default: the job's, 0.35).")
    flags.DEFINE_integer("batch_size", 32, "Images per model call.")



def list_inputs(paths: Iterable[str]) -> list[str]:
    """Files as given, and image files (by suffix) found under folders, sorted."""
    return imaging.list_image_files(paths)


def _grad_cam_function(job: inference.Job, task: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """Grad-CAM for ``task`` as one graph: uint8 (S, S, 1) -> float32 (S, S) in [0, 1]."""
    model = job.model
    backbone = next(l for l in model.layers if isinstance(l, keras.Model))
    features = keras.Model(backbone.input, backbone.get_layer(model_lib.LAST_CONV_LAYER).output)
    normalize, head = model.get_layer("normalize"), model.get_layer(task)
    prob = model_lib.probability_of(model, task)
    size = job.cfg.image_size

    @tf.function(input_signature=[tf.TensorSpec([size, size, 1], tf.uint8, name="image")])
    def cam_of(image):
        fmap = features(normalize(image[None]), training=False)
        # Only the head is differentiated: a tape that watched the backbone's variables would
        # keep all its activations for a backward pass nobody takes. The backbone ends in
        # global average pooling of fmap, recomputed here from the watched tensor so that
        # the gradient flows through the feature map.
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(fmap)
            p = prob(head(tf.reduce_mean(fmap, axis=[1, 2])))
        grads = tape.gradient(p, fmap)[0]
        weights = tf.reduce_mean(grads, axis=[0, 1])
        cam = tf.nn.relu(tf.reduce_sum(fmap[0] * weights, axis=-1))
        cam = cam / (tf.reduce_max(cam) + 1e-8)
        return tf.image.resize(cam[..., None], [size, size], method="bilinear")[..., 0]

    return cam_of


def grad_cam(job: inference.Job, image: np.ndarray, task: str) -> np.ndarray:
    """Grad-CAM of P(positive) for ``task`` on the last dense block's activation.

    One image per call, through a ``tf.function`` built once per job and task and kept with
    the job: DenseNet121 at 320 px peaks at ~0.95 GB RSS on CPU and takes ~0.2 s an image
    after the first; the eager version, which taped the whole backbone, 1.4 GB and 1-2 s
    (BUILD_NOTES.md, "Inference memory").

    Args:
        job: a job loaded with ``inference.load_job``.
        image: uint8 (S, S, 1), S = ``job.cfg.image_size``.
        task: one of ``job.tasks``.

    Returns:
        float32 (S, S) in [0, 1].

    Raises:
        inference.JobError: the job is a SavedModel (no layers to take gradients at).
    """
    if not job.is_keras:
        raise inference.JobError(f"{job.job_dir}: Grad-CAM needs the job's model.keras; a SavedModel has no layers "
                                 "to take gradients at")
    fn = job.compiled(f"grad_cam/{task}", lambda: _grad_cam_function(job, task))
    return fn(tf.convert_to_tensor(image)).numpy()


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Gray image (S, S, 1) uint8 with a jet-coloured heatmap blended on top."""
    gray = np.repeat(image.astype(np.float32) / 255.0, 3, axis=-1)
    heat = matplotlib.colormaps["jet"](cam)[..., :3]
    mix = (1 - alpha * cam[..., None]) * gray + alpha * cam[..., None] * heat
    return Image.fromarray(np.clip(mix * 255, 0, 255).astype(np.uint8))


def predict_files(job: inference.Job, files: list[str], *, threshold: float, batch_size: int = 32) -> tuple[list, list]:
    """Scores files in batches.

    Returns:
        ``(results, failures)``: per file ``{"path", "probs": {task: p}, "positive": [tasks],
        "warnings": [...]}``; failures ``{"path", "reason", "detail"}``.
    """
    results, failures, batch = [], [], []

    def flush():
        if not batch:
            return
        probs = inference.predict_batch(job, np.stack([b[1] for b in batch]))
        for (r, _), p in zip(batch, probs):
            r["probs"] = {t: float(v) for t, v in zip(job.tasks, p)}
            r["positive"] = [t for t, v in r["probs"].items() if v >= threshold]
            results.append(r)
        batch.clear()

    for path in files:
        try:
            with open(path, "rb") as f:
                data = f.read()
            image = inference.model_input(data, path, job.cfg)
        except chexpert.RowError as e:
            failures.append({"path": path, "reason": e.reason, "detail": e.detail})
            continue
        except OSError as e:
            failures.append({"path": path, "reason": "unreadable_file", "detail": f"{path}: {e}"})
            continue
        warnings = []
        if job.cfg.views == "frontal" and inference.is_lateral(path, data):
            warnings.append("lateral view given to a model trained on frontal views only")
        batch.append(({"path": path, "warnings": warnings}, image))
        if len(batch) >= batch_size:
            flush()
    flush()
    return results, failures


def main(argv) -> int:
    paths = argv[1:]
    if not FLAGS.job_dir or not paths:
        print("usage: python -m trainer.predict --job_dir JOB_DIR FILE_OR_FOLDER...", file=sys.stderr)
        return 2
    try:
        job = inference.load_job(FLAGS.job_dir)
    except inference.JobError as e:
        print(f"trainer.predict: error: {e}", file=sys.stderr)
        return 2
    if FLAGS.heatmap and not job.is_keras:
        print(f"trainer.predict: error: --heatmap needs model.keras; {FLAGS.job_dir} is a SavedModel folder (use "
              "its job folder)", file=sys.stderr)
        return 2
    if FLAGS.heatmap and FLAGS.heatmap not in job.tasks:
        print(f"trainer.predict: error: --heatmap {FLAGS.heatmap}: the model predicts {', '.join(job.tasks)}",
              file=sys.stderr)
        return 2
    threshold = FLAGS.threshold if FLAGS.threshold is not None else job.cfg.threshold
    files = list_inputs(paths)
    start = time.perf_counter()
    results, failures = predict_files(job, files, threshold=threshold, batch_size=FLAGS.batch_size)
    seconds = time.perf_counter() - start
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    with open(os.path.join(FLAGS.out_dir, "predictions.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path"] + [f"p_{t}" for t in job.tasks] + ["positive", "warnings"])
        for r in results:
            w.writerow([r["path"]] + [f"{r['probs'][t]:.6f}" for t in job.tasks]
                       + [";".join(r["positive"]), ";".join(r["warnings"])])
    with open(os.path.join(FLAGS.out_dir, "predictions.json"), "w") as f:
        json.dump({"job_dir": FLAGS.job_dir, "threshold": threshold, "results": results, "failures": failures}, f,
                  indent=2)
    if FLAGS.heatmap:
        for r in results:
            with open(r["path"], "rb") as fh:
                image = inference.model_input(fh.read(), r["path"], job.cfg)
            name = os.path.splitext(os.path.basename(r["path"]))[0]
            overlay(image, grad_cam(job, image, FLAGS.heatmap)).save(
                os.path.join(FLAGS.out_dir, f"{name}.gradcam_{FLAGS.heatmap}.png"))
    width = max([len(os.path.basename(r["path"])) for r in results] + [4])
    print(f"{'file':{width}s} " + " ".join(f"{t[:12]:>12s}" for t in job.tasks) + "   positive")
    for r in results:
        print(f"{os.path.basename(r['path']):{width}s} " + " ".join(f"{r['probs'][t]:12.3f}" for t in job.tasks)
              + "   " + (", ".join(r["positive"]) or "-") + ("   WARNING: " + "; ".join(r["warnings"])
                                                            if r["warnings"] else ""))
    for fl in failures:
        print(f"could not read {fl['path']}: {fl['reason']}: {fl['detail']}", file=sys.stderr)
    print(f"{len(results)} scored, {len(failures)} unreadable, {len(results) / max(seconds, 1e-9):.0f} img/s; "
          f"wrote {FLAGS.out_dir}/predictions.csv and .json")
    return 1 if failures and not results else 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
