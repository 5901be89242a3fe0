r"""Distillation on the synthetic set: a student's AUROC as a fraction of its teacher's, and
its CPU scoring speed as a multiple, in one run.

    python -m benchmarks.distill [--teacher jobs/atelectasis] [--student_size 64]

The teacher is a trained job (``make demo`` leaves the tiny DenseNet at 128 px in
jobs/atelectasis). The student is the same architecture at a quarter of the pixels, trained
twice for the same epochs: on the labels alone, and distilled from the teacher. Goal: the
distilled student keeps >= 95% of the teacher's mean AUROC at >= 3x its images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from trainer import config as config_lib
from serving import job as job_lib
from trainer import train


def scoring_rate(job: job_lib.Job, n: int = 2048, batch: int = 256) -> float:
    """Model images/s on this CPU: a compiled call on device-resident batches, so the number
    is the network's cost, not Python's per-call overhead (which dominates tiny models)."""
    images = tf.constant(np.random.default_rng(0).integers(
        0, 255, (batch, job.spec.image_size, job.spec.image_size, 1), np.uint8))
    call = tf.function(lambda x: job.model(x, training=False))
    call(images)  # trace
    start = time.perf_counter()
    for _ in range(n // batch):
        out = call(images)
    float(next(iter(out.values()))[0])
    return n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="jobs/atelectasis")
    parser.add_argument("--student_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    try:
        teacher = job_lib.load_job(args.teacher)
    except job_lib.JobError as e:
        print(f"{e}\nrun `make demo` first", file=sys.stderr)
        return 2
    with open(os.path.join(args.teacher, "metrics.json")) as f:
        teacher_auroc = json.load(f)["mean_auroc"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, teachers in (("labels only", ()), ("distilled", (args.teacher,))):
            cfg = config_lib.make_config(
                pathology=",".join(teacher.tasks), records_dir=config_lib.load_config(args.teacher).records_dir,
                job_dir=os.path.join(tmp, name.replace(" ", "_")), backbone="tiny", image_size=args.student_size,
                learning_rate=1e-3, epochs=args.epochs, patience=args.epochs, distill_from=teachers,
                distill_alpha=0.5, distill_temperature=2.0)
            report = train.run(cfg)
            job = job_lib.load_job(cfg.job_dir)
            results[name] = (report["mean_auroc"], scoring_rate(job))
    t_rate = scoring_rate(teacher)
    print(f"\nteacher  {teacher.spec.backbone} @ {teacher.spec.image_size}px: mean AUROC {teacher_auroc:.4f}, "
          f"{t_rate:.0f} img/s")
    for name, (auroc, rate) in results.items():
        print(f"student  tiny @ {args.student_size}px, {name:11s}: mean AUROC {auroc:.4f} "
              f"({100 * auroc / teacher_auroc:.1f}% of the teacher), {rate:.0f} img/s ({rate / t_rate:.1f}x)")
    print("goal: distilled student >= 95% of the teacher's AUROC at >= 3x its speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
