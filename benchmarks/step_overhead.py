r"""Host overhead per training step: steps/s with --steps_per_execution 1 vs N, side by side.

    python -m benchmarks.step_overhead                     # tiny model at 32 px, batch 1,2,4
    python -m benchmarks.step_overhead --image_size 320 --batch_sizes 16 --steps 40   # a GPU

With the tiny DenseNet at 32x32 and batches of 1-4 the device work of a step is small, so
steps/s measures what the host adds per call (Python, the tf.function call, the distributed
iterator, the loss fetched back). The real ``Trainer.train_steps`` (augmentation in the
step, XLA as ``--jit_compile``) runs on device-resident batches, as ``run()`` calls it:
``--steps`` steps in calls of 1, then in calls of N, then both again (ABAB, so that a
drift of the shared machine shows); each configuration after a warm-up that traces and
compiles it. A third configuration is the step as it was before (calls of 1, the Adam
update outside XLA; only differs without a distribution strategy). Prints steps/s per
configuration and the ratios to it.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks import train_step
from benchmarks.train_step import _records_stub
from trainer import config as config_lib
from trainer import train


def _trainer(cfg, strategy, update_in_xla=None):
    keras.utils.set_random_seed(0)
    trainer = train.Trainer(cfg, strategy)
    if update_in_xla is not None:
        trainer.update_in_xla = update_in_xla and trainer.update_in_xla
    global_batch = cfg.batch_size * strategy.num_replicas_in_sync
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 255, (global_batch, cfg.image_size, cfg.image_size, 1)).astype(np.uint8),
             "targets": rng.integers(0, 2, (global_batch, len(cfg.tasks))).astype(np.float32),
             "masks": np.ones((global_batch, len(cfg.tasks)), np.float32)}
    it = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat()))
    return trainer, it


def steps_per_second(trainer, it, steps: int, per_call: int) -> float:
    start = time.perf_counter()
    done = 0
    while done < steps:
        n = min(per_call, steps - done)
        trainer.train_steps(it, n)  # returns the losses as numpy: waits for the device
        done += n
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_sizes", default="1,2,4", help="Per replica, comma list.")
    parser.add_argument("--steps", type=int, default=96, help="Timed steps per configuration and round.")
    parser.add_argument("--per_call", type=int, default=8, help="N, the steps per call compared with 1.")
    parser.add_argument("--jit_compile", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    device = train_step.device_name()
    strategy = train.make_strategy("auto")
    print(f"device: {device}  replicas: {strategy.num_replicas_in_sync}  {args.backbone} at {args.image_size}, "
          f"XLA {'on' if args.jit_compile else 'off'}, augmentation in the step, {args.steps} steps x 2 rounds")
    with tempfile.TemporaryDirectory() as tmp:
        records = _records_stub(tmp, args.image_size)
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            cfg = config_lib.make_config(pathology="atelectasis", records_dir=records, job_dir=tmp,
                                         backbone=args.backbone, image_size=args.image_size, batch_size=batch_size,
                                         jit_compile=args.jit_compile, learning_rate=1e-3)
            configs = {"before": (_trainer(cfg, strategy, update_in_xla=False), 1),
                       "1": (_trainer(cfg, strategy), 1), str(args.per_call): (_trainer(cfg, strategy), args.per_call)}
            for (trainer, it), n in configs.values():  # warm-up: trace and compile
                steps_per_second(trainer, it, 2 * n, n)
            rates = {k: [] for k in configs}
            for _ in range(2):
                for k, ((trainer, it), n) in configs.items():
                    rates[k].append(steps_per_second(trainer, it, args.steps, n))
            mean = {k: float(np.mean(v)) for k, v in rates.items()}
            runs = lambda k: "/".join(f"{r:.0f}" for r in rates[k])  # noqa: E731
            n = str(args.per_call)
            print(f"  batch {batch_size}: calls of 1, update outside XLA {mean['before']:6.1f} steps/s "
                  f"({runs('before')}); calls of 1 {mean['1']:6.1f} ({runs('1')}); calls of {n} {mean[n]:6.1f} "
                  f"({runs(n)}): {n} vs 1 {mean[n] / mean['1']:.2f}x, vs before {mean[n] / mean['before']:.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
