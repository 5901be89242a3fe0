r"""build_records at CheXpert's full size on this machine (not run in CI).

    python -m benchmarks.full_scale [--data_dir data/fullscale]

1. Generates (once; reused if present) a synthetic CheXpert-small with 223,414 train rows
   (the real train.csv's count and prevalence) and 200 valid patients (~240 rows; the real
   valid.csv has 234), plus 1% more rows kept
   aside for step 3.
2. Full build on DirectRunner with both cores: wall time, images/s, peak RSS of the process
   tree, disk size of the records.
3. Appends the 1% new rows to train.csv and reruns with ``--incremental`` twice, each from
   its own (hard-linked) copy of the full build: through the Beam runner as before
   (``--in_process_rows=0``) and in process (the default for a small delta); wall time of
   each and its fraction of the full build, measured in the same run.
4. Reruns once more on unchanged input ("nothing new").

Goals: full build <= 15 min, peak RSS <= 4 GB, incremental rerun <= 5% of the full time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from benchmarks import measure
from pipeline import make_sample

TRAIN_ROWS = 223_414
NEW_FRACTION = 0.01


def run_job(args: list[str], cwd: str | None = None) -> tuple[float, int, str]:
    """One build_records run (from the checkout at ``cwd``, default this one)."""
    return measure.run_measured([sys.executable, "-m", "pipeline.build_records", "--runner=DirectRunner",
                                 "--direct_num_workers=2", "--direct_running_mode=multi_processing", *args], cwd=cwd)


def _write_csv(src: str, dst: str, rows: int) -> None:
    with open(src) as f:
        lines = f.read().splitlines()
    with open(dst, "w") as f:
        f.write("\n".join(lines[: rows + 1]) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="data/fullscale")
    parser.add_argument("--records_dir", default="data/fullscale-records")
    parser.add_argument("--train_rows", type=int, default=TRAIN_ROWS,
                        help="train.csv rows of the full build (default: the real train.csv's count); a smaller "
                             "set in its own --data_dir measures the same steps on a shared machine")
    parser.add_argument("--baseline", default=None,
                        help="Another checkout of this project (e.g. `git archive REV | tar -x -C DIR`): its "
                             "incremental run is measured too, side by side, as 'before'")
    args = parser.parse_args()
    train_rows = args.train_rows
    args.data_dir, args.records_dir = os.path.abspath(args.data_dir), os.path.abspath(args.records_dir)
    ds = os.path.join(args.data_dir, make_sample.DATASET_DIR)
    all_rows = os.path.join(args.data_dir, "train-all.csv")
    need = int(train_rows * (1 + NEW_FRACTION)) + 10
    if not os.path.exists(all_rows):
        start = time.perf_counter()
        # ~3.43 images per patient; a margin so that the 1% extra rows exist.
        make_sample.generate(args.data_dir, num_patients=int(need / 3.3), num_valid_patients=200, seed=42)
        shutil.move(os.path.join(ds, "train.csv"), all_rows)
        print(f"generated in {time.perf_counter() - start:.0f}s")
    with open(all_rows) as f:
        have = sum(1 for _ in f) - 1
    assert have >= need, f"only {have} rows generated"
    _write_csv(all_rows, os.path.join(ds, "train.csv"), train_rows)
    with open(os.path.join(ds, "valid.csv")) as f:
        valid_rows = sum(1 for _ in f) - 1
    print(f"train rows {train_rows}, valid rows {valid_rows} (200 valid patients)")
    shutil.rmtree(args.records_dir, ignore_errors=True)
    job = [f"--input_dir={args.data_dir}", f"--output_dir={args.records_dir}"]
    full, rss, _ = run_job(job)
    with open(os.path.join(args.records_dir, "manifest.json")) as f:
        size = sum(json.load(f)["files"].values())
    images = train_rows + valid_rows
    print(f"{'full build':30s} {full:7.1f} s  {images / full:6.0f} img/s  peak RSS {rss / 2**30:.2f} GiB  "
          f"records {size / 2**30:.1f} GiB")
    new_rows = int(train_rows * NEW_FRACTION)
    _write_csv(all_rows, os.path.join(ds, "train.csv"), train_rows + new_rows)
    # The same incremental run twice, side by side, each from the committed full build
    # (restored from hard links in between: a committed file is never modified, and the
    # output folder must keep its name, an option of the build): through the Beam runner as
    # before (--in_process_rows=0), then in this process (the default for a small delta).
    base = args.records_dir + "-full"
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(args.records_dir, base, copy_function=os.link)
    runs = [("incremental, Beam runner", ["--in_process_rows=0"], None), ("incremental, in process", [], None)]
    if args.baseline:
        runs.insert(0, (f"incremental, {os.path.basename(args.baseline.rstrip('/'))}", [], args.baseline))
    for i, (label, flags, cwd) in enumerate(runs):
        if i:
            shutil.rmtree(args.records_dir)
            shutil.copytree(base, args.records_dir, copy_function=os.link)
        inc, rss_inc, out = run_job(job + ["--incremental", *flags], cwd)
        print(f"{label:30s} {inc:7.1f} s  (+{new_rows} rows)  peak RSS {rss_inc / 2**30:.2f} GiB  "
              f"= {100 * inc / full:.1f}% of the full build (goal <= 5%)")
    shutil.rmtree(base, ignore_errors=True)
    same, _, out = run_job(job + ["--incremental"])
    print(f"{'unchanged rerun':30s} {same:7.1f} s  ({'nothing new' if 'nothing new' in out else 'REBUILT'})  "
          f"= {100 * same / full:.1f}%")


if __name__ == "__main__":
    main()
