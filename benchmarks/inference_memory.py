r"""Peak memory and speed of inference on CPU: the compiled path against the eager call it
replaced, per backbone and batch size.

    python -m benchmarks.inference_memory
    python -m benchmarks.inference_memory --backbones tiny,densenet121 --batch_sizes 1,8,32,64 \
        --image_size 320 --rss_limit_gb 6

Every cell is a fresh subprocess (``--child``) that builds the untrained model (the weights do
not change the memory), scores one warm-up batch (which traces the graph) and then timed
batches of the same random uint8 images:

* ``eager``: ``job.model(x, training=False)``, what ``serving.predict.predict_batch`` replaced
  before it was compiled;
* ``compiled``: ``serving.predict.predict_batch`` (one ``tf.function``, calls of at most
  ``images_per_call`` images).

and the same for Grad-CAM of one image (eager: what ``serving.gradcam.grad_cam`` replaced).
Peak RSS is the child's own high-water mark (``ru_maxrss``), or the sampled one of
``benchmarks.measure.run_measured`` where that is higher; a child passing ``--rss_limit_gb``
is killed and shown as "> limit" (eager DenseNet at batch 32 wants ~13 GB, at 64 ~26 GB).
``max |diff|`` compares the two paths' probabilities on the same images.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np

from benchmarks import measure

TASKS = ("atelectasis", "cardiomegaly")  # a binary and a 3-class head
GiB = 2**30


# --- Child: one measurement in a fresh process ------------------------------------------------


def _job(backbone: str, size: int):
    import keras

    from serving import job as job_lib
    from trainer import model as model_lib
    from trainer.config import TrainConfig

    cfg = TrainConfig(tasks=TASKS, records_dir="", job_dir="", policy={"atelectasis": "ones",
                                                                       "cardiomegaly": "multiclass"},
                      backbone=backbone, image_size=size)
    keras.utils.set_random_seed(0)
    return job_lib.Job("untrained", cfg.spec(), model_lib.probability_model(model_lib.build_model(cfg), cfg))


def eager_probabilities(job, images: np.ndarray) -> np.ndarray:
    """The eager call ``serving.predict.predict_batch`` replaced: uint8 (B, S, S, 1) -> float32 (B, T)."""
    import tensorflow as tf

    out = job.model(tf.convert_to_tensor(images), training=False)
    return np.stack([np.asarray(out[t]) for t in job.tasks], axis=-1)


def eager_grad_cam(job, image: np.ndarray, task: str) -> np.ndarray:
    """The eager Grad-CAM ``serving.gradcam.grad_cam`` replaced: uint8 (S, S, 1) -> float32 (S, S)."""
    import keras
    import tensorflow as tf

    from serving import heads

    model = job.model
    backbone = heads.backbone_of(model)
    conv_model = keras.Model(backbone.input, [backbone.get_layer(heads.LAST_CONV_LAYER).output, backbone.output])
    normalize, head = model.get_layer("normalize"), model.get_layer(task)
    prob = heads.probability_of(model, task)
    x = normalize(tf.convert_to_tensor(image[None]))
    with tf.GradientTape() as tape:
        fmap, _ = conv_model(x, training=False)
        tape.watch(fmap)
        p = prob(head(tf.reduce_mean(fmap, axis=[1, 2])))
    grads = tape.gradient(p, fmap)[0]
    weights = tf.reduce_mean(grads, axis=[0, 1])
    cam = tf.nn.relu(tf.reduce_sum(fmap[0] * weights, axis=-1))
    cam = cam / (tf.reduce_max(cam) + 1e-8)
    size = image.shape[0]
    return tf.image.resize(cam[..., None], [size, size], method="bilinear")[..., 0].numpy()


def child(mode: str, backbone: str, size: int, batch: int, out_path: str) -> None:
    """Prints one JSON line: model-loaded and peak RSS (bytes), images/s after warm-up; saves
    the last batch's outputs to ``out_path`` (.npy)."""
    from serving import gradcam, predict

    job = _job(backbone, size)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 1), dtype=np.uint8)
    if mode.endswith("grad_cam"):
        fn = eager_grad_cam if mode == "eager_grad_cam" else gradcam.grad_cam
        call = lambda: np.stack([fn(job, im, "cardiomegaly") for im in images])  # noqa: E731
        calls = 3
    else:
        fn = eager_probabilities if mode == "eager" else predict.predict_batch
        call = lambda: fn(job, images)  # noqa: E731
        calls = max(1, 16 // batch)  # at least 16 images timed
    out = call()  # warm-up: traces the graph (compiled) or builds the layers' call caches (eager)
    start = time.perf_counter()
    for _ in range(calls):
        out = call()
    seconds = time.perf_counter() - start
    np.save(out_path, out)
    print(json.dumps({"loaded": loaded, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "ips": calls * batch / seconds}))


# --- Parent: the table ---------------------------------------------------------------------------


def measure_cell(mode: str, backbone: str, size: int, batch: int, rss_limit: int, tmp: str) -> dict:
    """One fresh child; {"peak", "loaded", "ips", "out"} or {"peak", "killed": True}."""
    out_path = os.path.join(tmp, f"{mode}-{backbone}-{size}-{batch}.npy")
    cmd = [sys.executable, "-m", "benchmarks.inference_memory", "--child", mode, backbone, str(size), str(batch),
           out_path]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    try:
        _, sampled, output = measure.run_measured(cmd, rss_limit=rss_limit, env=env)
    except measure.RssLimitExceeded as e:
        return {"peak": e.peak, "killed": True}
    r = json.loads(output.strip().splitlines()[-1])
    return {**r, "peak": max(r["peak"], sampled), "out": np.load(out_path)}


def _gib(cell: dict, limit: int) -> str:
    return f"> {limit / GiB:.1f}" if cell.get("killed") else f"{cell['peak'] / GiB:.2f}"


def _ratio(a: dict, b: dict, key: str, limit: int) -> str:
    if a.get("killed"):
        return f"> {limit / b[key]:.1f}x" if key == "peak" else "—"
    return f"{a[key] / b[key]:.1f}x"


def _diff(a: dict, b: dict) -> str:
    return "—" if a.get("killed") else f"{np.abs(a['out'] - b['out']).max():.1e}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="tiny,densenet121,densenet169", help="Comma-separated backbones.")
    parser.add_argument("--batch_sizes", default="1,8,32,64", help="Comma-separated batch sizes.")
    parser.add_argument("--image_size", type=int, default=320, help="Model input side, pixels.")
    parser.add_argument("--rss_limit_gb", type=float, default=6.0,
                        help="A child whose RSS passes this (GiB) is killed and shown as '> limit'.")
    parser.add_argument("--child", nargs=5, metavar=("MODE", "BACKBONE", "SIZE", "BATCH", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, backbone, size, batch, out = args.child
        child(mode, backbone, int(size), int(batch), out)
        return 0
    limit = int(args.rss_limit_gb * GiB)
    backbones, sizes = args.backbones.split(","), [int(b) for b in args.batch_sizes.split(",")]
    start = time.perf_counter()
    print(f"cores: {os.cpu_count()}  image size {args.image_size}  peak RSS in GiB of a fresh process "
          f"(model loaded: RSS before the first image)\n")
    print("| backbone | batch | model loaded | peak eager | peak compiled | eager / compiled | img/s eager "
          "| img/s compiled | compiled / eager | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    cams = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in backbones:
            for batch in sizes:
                e = measure_cell("eager", backbone, args.image_size, batch, limit, tmp)
                c = measure_cell("compiled", backbone, args.image_size, batch, limit, tmp)
                eager_ips = "—" if e.get("killed") else f"{e['ips']:.1f}"
                print(f"| {backbone} | {batch} | {c['loaded'] / GiB:.2f} | {_gib(e, limit)} | {_gib(c, limit)} | "
                      f"{_ratio(e, c, 'peak', limit)} | {eager_ips} | {c['ips']:.1f} | "
                      f"{'—' if e.get('killed') else _ratio(c, e, 'ips', limit)} | {_diff(e, c)} |", flush=True)
            e = measure_cell("eager_grad_cam", backbone, args.image_size, 1, limit, tmp)
            c = measure_cell("compiled_grad_cam", backbone, args.image_size, 1, limit, tmp)
            cams.append((backbone, e, c))
    print("\nGrad-CAM, one image per call (3 timed after a warm-up):\n")
    print("| backbone | model loaded | peak eager | peak compiled | s/image eager | s/image compiled "
          "| max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for backbone, e, c in cams:
        eager_s = "—" if e.get("killed") else f"{1 / e['ips']:.2f}"
        print(f"| {backbone} | {c['loaded'] / GiB:.2f} | {_gib(e, limit)} | {_gib(c, limit)} | {eager_s} | "
              f"{1 / c['ips']:.2f} | {_diff(e, c)} |")
    print(f"\n{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
