r"""Uncertainty policies on the synthetic set: U-Ignore, U-Zeros, U-Ones and U-SelfTrained
against the oracle that knows the hidden truth of every uncertain label.

    python -m benchmarks.uncertainty [--seeds 0,1,2] [--signal_noise 0.15]

One dataset (``make_sample --signal_noise``: the image shows each severity with noise, so
the truth of a borderline study is not readable off its image), three observations whose
uncertain labels mean different things in the generator: Consolidation (30% of its
uncertain labels are truly positive), Atelectasis (85%) and Edema (80%). Per seed:

1. labeller = U-Ignore: trainer.task on the records, uncertain entries masked;
2. U-Zeros, U-Ones: the same records, ``--policy`` overrides (no rebuild);
3. U-SelfTrained: ``build_records --labeller`` (the labeller of step 1 relabels every
   uncertain entry inside the Beam job), then a student on those records;
4. oracle: records built from a copy of train.csv whose uncertain cells hold the hidden truth.

Every model: the tiny DenseNet at --image_size, the same epochs, seed and schedule; the
epoch kept is the best on the holdout split's known labels; the figure reported is the
image-level AUROC on the valid split (radiologist-style labels = the hidden truth).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from pipeline import build_records, make_sample
from schemas import chexpert
from trainer import config as config_lib
from trainer import evaluate, metrics, train

OBSERVATIONS = ("consolidation", "atelectasis", "edema")
POLICIES = ("ignore", "zeros", "ones", "self_trained", "oracle")


def oracle_copy(sample_root: str, dest: str, observations=OBSERVATIONS) -> str:
    """A dataset folder whose train.csv has each uncertain cell of ``observations`` replaced
    by the hidden truth; images are hard-linked, not copied. (Not symlinked: the records job
    refuses a link that leads out of the dataset folder, see imaging.refuse_link_outside; a
    hard link is a file of this folder. ``dest`` must be on the same filesystem.)"""
    src = os.path.join(sample_root, make_sample.DATASET_DIR)
    dst = os.path.join(dest, make_sample.DATASET_DIR)
    os.makedirs(dst)
    for name in ("train", "valid"):
        shutil.copytree(os.path.join(src, name), os.path.join(dst, name), copy_function=os.link)
    shutil.copy(os.path.join(src, "valid.csv"), dst)
    with open(os.path.join(sample_root, make_sample.TRUTH_FILE)) as f:
        truth = {r["Path"]: r for r in csv.DictReader(f)}
    with open(os.path.join(src, "train.csv")) as f, open(os.path.join(dst, "train.csv"), "w", newline="") as g:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(g, reader.fieldnames, lineterminator="\n")
        writer.writeheader()
        for row in reader:
            for slug in observations:
                name = chexpert.SLUG_TO_NAME[slug]
                if row[name] in ("-1.0", "-1"):
                    row[name] = "1.0" if truth[row["Path"]][f"truth_{slug}"] == "1" else "0.0"
            writer.writerow(row)
    return dest


def build(input_dir: str, out: str, args, *extra: str) -> dict:
    return build_records.run([f"--input_dir={input_dir}", f"--output_dir={out}", f"--image_size={args.image_size}",
                              "--holdout_fraction=0.15", "--num_shards=4", "--runner=DirectRunner",
                              "--direct_num_workers=2", "--direct_running_mode=multi_processing", *extra],
                             save_main_session=False)


def fit(records_dir: str, job_dir: str, args, seed: int, policy: str = "") -> float:
    """Trains one model; returns its valid AUROC per observation and the train seconds."""
    cfg = config_lib.make_config(
        pathology=",".join(OBSERVATIONS), records_dir=records_dir, job_dir=job_dir, policy=policy, backbone="tiny",
        image_size=args.image_size, batch_size=32, learning_rate=1e-3, epochs=args.epochs, patience=args.epochs,
        eval_split="holdout", seed=seed, augment=False)
    start = time.perf_counter()
    train.run(cfg)
    seconds = time.perf_counter() - start
    job = evaluate.load_member(job_dir)
    scored = evaluate.aggregate(evaluate.predict_records(job, "valid", "frontal", tta=False), list(job.tasks), "image")
    return {t: metrics.auroc(*scored[t]) for t in OBSERVATIONS}, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="Training seeds (the data stays the same).")
    parser.add_argument("--num_patients", type=int, default=1500)
    parser.add_argument("--num_valid_patients", type=int, default=600)
    parser.add_argument("--signal_noise", type=float, default=0.15)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--work_dir", default=None, help="Keep the data and jobs here (default: a temp folder).")
    parser.add_argument("--out", default=None, help="Also write the per-run results as JSON here.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("apache_beam").setLevel(logging.ERROR)  # the runner's worker chatter
    seeds = [int(s) for s in args.seeds.split(",")]
    work = args.work_dir or tempfile.mkdtemp(prefix="uncertainty-")
    sample = os.path.join(work, "sample")
    if not os.path.exists(os.path.join(sample, make_sample.DATASET_DIR, "train.csv")):
        make_sample.generate(sample, num_patients=args.num_patients, num_valid_patients=args.num_valid_patients,
                             seed=0, signal_noise=args.signal_noise)
    base, oracle = os.path.join(work, "records"), os.path.join(work, "records-oracle")
    for src, out in ((sample, base), (oracle_copy(sample, os.path.join(work, "oracle-data"))
                                      if not os.path.exists(os.path.join(work, "oracle-data")) else
                                      os.path.join(work, "oracle-data"), oracle)):
        if not os.path.exists(os.path.join(out, "manifest.json")):
            build(src, out, args)
    with open(os.path.join(base, "manifest.json")) as f:
        counts = json.load(f)["splits"]["train"]["raw_counts"]
    results = []  # (seed, policy, {obs: auroc}, seconds)
    for seed in seeds:
        jobs = os.path.join(work, f"seed{seed}")
        labeller = os.path.join(jobs, "ignore")
        results.append((seed, "ignore", *fit(base, labeller, args, seed)))
        for policy in ("zeros", "ones"):
            spec = ",".join(f"{o}={policy}" for o in OBSERVATIONS)
            results.append((seed, policy, *fit(base, os.path.join(jobs, policy), args, seed, spec)))
        taught = os.path.join(jobs, "records-self_trained")
        start = time.perf_counter()
        build(sample, taught, args, f"--labeller={labeller}",
              "--policy=" + ",".join(f"{o}=self_trained" for o in OBSERVATIONS), "--overwrite")
        build_s = time.perf_counter() - start
        results.append((seed, "self_trained", *fit(taught, os.path.join(jobs, "self_trained"), args, seed)))
        results.append((seed, "oracle", *fit(oracle, os.path.join(jobs, "oracle"), args, seed)))
        print(f"seed {seed}: records job with the labeller stage took {build_s:.0f}s", flush=True)
        for s, policy, aurocs, secs in results[-5:]:
            print(f"  {policy:13s} " + "  ".join(f"{o} {aurocs[o]:.4f}" for o in OBSERVATIONS) + f"  ({secs:.0f}s)",
                  flush=True)
    print(f"\nValid AUROC (image level, frontal), mean +- SD over seeds {args.seeds}; "
          f"signal_noise {args.signal_noise}, {args.num_patients} train patients, tiny DenseNet @ {args.image_size}px, "
          f"{args.epochs} epochs")
    print("train uncertain labels: " + ", ".join(f"{o} {counts[o].get('-1', 0)}" for o in OBSERVATIONS))
    print(f"| policy | {' | '.join(OBSERVATIONS)} | mean |")
    print("|---" * (len(OBSERVATIONS) + 2) + "|")
    for policy in POLICIES:
        rows = np.array([[a[o] for o in OBSERVATIONS] for _, p, a, _ in results if p == policy])
        means = rows.mean(axis=1)
        cells = [f"{rows[:, i].mean():.4f} ± {rows[:, i].std(ddof=1) if len(rows) > 1 else 0:.4f}"
                 for i in range(len(OBSERVATIONS))]
        print(f"| {policy} | {' | '.join(cells)} | {means.mean():.4f} ± "
              f"{means.std(ddof=1) if len(means) > 1 else 0:.4f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump([{"seed": s, "policy": p, "auroc": a, "seconds": t} for s, p, a, t in results], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
