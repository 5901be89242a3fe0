r"""Scoring throughput of trainer.predict on CPU: batched vs one image per model call.

    python -m benchmarks.predict [--job_dir jobs/atelectasis] [--folder data/synthetic/.../valid]

Same files, same job, one run: ``predict_files`` with ``--batch_size 32`` and with 1.
Needs a trained job (``make demo`` leaves one in jobs/atelectasis).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from core.inputs import list_inputs
from serving import job as job_lib
from trainer import predict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job_dir", default="jobs/atelectasis")
    parser.add_argument("--folder", default="data/synthetic/CheXpert-v1.0-small/valid")
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    try:
        job = job_lib.load_job(args.job_dir)
    except job_lib.JobError as e:
        print(f"{e}\nrun `make demo` first", file=sys.stderr)
        return 2
    files = list_inputs([args.folder])
    rates = {}
    for bs in (args.batch_size, 1):
        predict.predict_files(job, files[:bs], threshold=0.35, batch_size=bs)  # warm-up: trace this shape
        start = time.perf_counter()
        results, _ = predict.predict_files(job, files, threshold=0.35, batch_size=bs)
        rates[bs] = len(results) / (time.perf_counter() - start)
    print(f"cores: {os.cpu_count()}  {len(files)} images, {job.spec.backbone} at {job.spec.image_size}")
    print(f"  batch {args.batch_size:3d}   {rates[args.batch_size]:8.1f} img/s")
    print(f"  batch   1   {rates[1]:8.1f} img/s")
    print(f"  batched / one-per-call = {rates[args.batch_size] / rates[1]:.1f}x (goal >= 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
