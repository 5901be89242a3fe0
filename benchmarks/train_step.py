r"""Training-step throughput of the real Trainer: XLA on/off x each precision, one run.

    python -m benchmarks.train_step                       # DenseNet121 at 320, this machine
    python -m benchmarks.train_step --batch_size 128 --steps 30   # on a GPU machine

Measures ``Trainer.train_step`` (the per-replica XLA forward+backward plus the optimizer
update under the strategy ``auto`` picks) on device-resident random batches, so the number
is the model's, not the input pipeline's (benchmarks/train_input.py measures that). Prints
images/s per configuration and the device.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from trainer import config as config_lib
from trainer import train


def device_name() -> str:
    """The first GPU's name, or the CPU's core count: the line every benchmark starts with."""
    gpus = tf.config.list_physical_devices("GPU")
    return (tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus
            else f"CPU x{os.cpu_count()}")


def _records_stub(tmp: str, size: int) -> str:
    """A manifest-only records folder: make_config validates against it; no data is read."""
    manifest = {"image_size": size, "policy": None, "blank": "negative",
                "splits": {"train": {"shards": [], "written": 0}, "valid": {"shards": [], "written": 0}}}
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return tmp


def measure(cfg, strategy, steps: int, warmup: int) -> float:
    global_batch = cfg.batch_size * strategy.num_replicas_in_sync
    with train._precision_policy(cfg.precision):
        trainer = train.Trainer(cfg, strategy)
        rng = np.random.default_rng(0)
        batch = {"image": rng.integers(0, 255, (global_batch, cfg.image_size, cfg.image_size, 1)).astype(np.uint8),
                 "targets": rng.integers(0, 2, (global_batch, len(cfg.tasks))).astype(np.float32),
                 "masks": np.ones((global_batch, len(cfg.tasks)), np.float32)}
        ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat())
        it = iter(ds)
        for _ in range(warmup):  # tracing and XLA compilation
            trainer.train_step(it)
        float(trainer.train_step(it))
        start = time.perf_counter()
        for _ in range(steps):
            loss = trainer.train_step(it)
        float(loss)  # wait for the device
        return steps * global_batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="densenet121")
    parser.add_argument("--image_size", type=int, default=320)
    parser.add_argument("--batch_size", type=int, default=16, help="Per replica.")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precisions", default="float32,mixed_bfloat16,mixed_float16")
    args = parser.parse_args()
    device = device_name()
    strategy = train.make_strategy("auto")
    print(f"device: {device}  replicas: {strategy.num_replicas_in_sync}  {args.backbone} at {args.image_size}, "
          f"batch {args.batch_size}/replica, {args.steps} timed steps")
    with tempfile.TemporaryDirectory() as tmp:
        records = _records_stub(tmp, args.image_size)
        for precision in args.precisions.split(","):
            for jit in (True, False):
                keras.utils.set_random_seed(0)
                cfg = config_lib.make_config(pathology="atelectasis", records_dir=records, job_dir=tmp,
                                             backbone=args.backbone, image_size=args.image_size,
                                             batch_size=args.batch_size, precision=precision, jit_compile=jit)
                rate = measure(cfg, strategy, args.steps, args.warmup)
                print(f"  {precision:15s} XLA {'on ' if jit else 'off'}  {rate:9.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
