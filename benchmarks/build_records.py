r"""Records-job throughput against the decode+resize floor, side by side in one run.

    python -m benchmarks.build_records [--patients 2400] [--full_patients 120] [--baseline DIR] [--repeats 3]

For each image set (small 390x320 JPEGs, and full-size ~2828x2320 originals) it measures,
on the same files in the same run:

    floor      one process, a plain loop: read + decode + resize to 320 (no encode, no I/O out)
    floor x2   the same loop split over two processes (how far the machine itself scales)
    + write    floor x2 also writing each image's pixels to a file (the bytes a raw record
               holds: what the output alone costs, before any label, encoding or Beam work)
    writer x2  the job's own shard writer (``WriteShardFn.process``) in two processes, each
               writing half of the shards the job writes, without Beam: the job less its
               runner, stages and driver
    beam x1    build_records on DirectRunner, 1 worker
    beam x2    build_records on DirectRunner, 2 workers (multi_processing)

(with ``--baseline DIR``, an earlier checkout's job too, on the same files, as "before")
and prints images/s, the ratios the goals are stated in (x2 / x1 >= 1.7; x2 within 1.3x of
2 x floor) and the job's peak RSS (the process tree, sampled every 0.1 s).
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

from benchmarks import measure
from core import imaging
from pipeline import make_sample


def _decode_all(files: list[str], size: int, out: str | None = None) -> None:
    sink = open(out, "wb") if out else None
    for path in files:
        with open(path, "rb") as f:
            pixels = imaging.preprocess(f.read(), path, size)
        if sink:
            sink.write(pixels.tobytes())
    if sink:
        sink.close()


def _two_processes(files: list[str], size: int, out: str | None = None) -> float:
    return _run_two(_decode_all, [(files[i::2], size, out and f"{out}.{i}") for i in range(2)])


def _run_two(target, args: list[tuple]) -> float:
    """Wall seconds of ``target(*args[i])`` in two forked processes at once."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=target, args=a) for a in args]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return time.perf_counter() - start


def _write_shards(root: str, out: str, groups: list, settings, k: int) -> None:
    from pipeline import transforms  # imported by writer_alone before the fork: not timed
    fn = transforms.WriteShardFn(root, out, settings)
    for key, items in groups[k::2]:
        for _ in fn.process((key, [items])):
            pass


def writer_alone(root: str, extra: list[str]) -> float:
    """Seconds of the job's shard writer over train.csv's rows in two processes, with the
    job's own settings for ``extra`` (its flags) and its shard plan
    (``transforms.shards_per_split``, ``shard_of``), without Beam."""
    import csv

    from core import cli
    from pipeline import build_config, build_records, shards
    from pipeline import transforms  # noqa: F401 (Beam: imported here, before the timed children)
    from schemas import chexpert
    with tempfile.TemporaryDirectory() as out:
        opts, _ = cli.parse_flags(build_records.make_parser(), [f"--input_dir={root}", f"--output_dir={out}", *extra])
        cfg, _ = build_config.configure(opts)
        rows = []
        with open(os.path.join(root, make_sample.DATASET_DIR, "train.csv"), newline="") as f:
            for cells in csv.DictReader(f):
                try:
                    rows.append(chexpert.parse_row(cells))
                except chexpert.RowError:
                    pass  # the job's dead letters: not written by the job either
        n = transforms.shards_per_split(cfg, len(rows))
        by_shard: dict = {}
        for line, row in enumerate(rows, 2):
            by_shard.setdefault(("train", shards.shard_of(row.path, n), n), []).append((row, "train.csv", line))
        groups = sorted(by_shard.items())
        return _run_two(_write_shards, [(root, out, groups, cfg.example_settings(), k) for k in range(2)])


def floor(dataset_dir: str, size: int) -> tuple[int, float, float, float]:
    """Images, and seconds of the plain loop in one process, split over two processes
    (what the machine itself gives two workers: 2 x floor assumes perfect scaling), and
    over two processes writing the pixels out (the output's own cost)."""
    files = sorted(glob.glob(os.path.join(dataset_dir, "*", "patient*", "study*", "*.jpg")))
    _decode_all(files[:200], size)  # the page cache warm, as for the jobs measured after it
    start = time.perf_counter()
    _decode_all(files, size)
    one = time.perf_counter() - start
    two = _two_processes(files, size)
    with tempfile.TemporaryDirectory() as out:
        two_write = _two_processes(files, size, os.path.join(out, "pixels"))
    return len(files), one, two, two_write


def beam_run(input_dir: str, workers: int, extra: list[str], cwd: str | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes of one build_records run (from the checkout at
    ``cwd``, default this one)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "pipeline.build_records", "--runner=DirectRunner", f"--input_dir={input_dir}",
               f"--output_dir={out}", f"--direct_num_workers={workers}", *extra]
        if workers > 1:
            cmd.append("--direct_running_mode=multi_processing")
        wall, peak, _ = measure.run_measured(cmd, cwd=cwd)
        return wall, peak


def bench(label: str, root: str, dataset_dir: str, size: int, extra: list[str], tiny_root: str,
          baseline: str | None = None, repeats: int = 1) -> None:
    revisions = ([(os.path.basename(baseline.rstrip("/")), baseline)] if baseline else []) + [("", None)]
    floors, runs, alone = [], {name: [] for name, _ in revisions}, []
    # Rounds alternate the floor and every revision's runs, so a machine that slows down
    # or speeds up during the benchmark moves them all alike; medians over the rounds.
    for _ in range(repeats):
        floors.append(floor(dataset_dir, size))
        alone.append(writer_alone(root, extra))
        for name, cwd in revisions:
            # The fixed cost of a run (interpreter, Beam, worker start-up, 15 stages) on a
            # 1-patient dataset: subtracted to give the steady-state rate a 224k-image job runs at.
            runs[name].append([beam_run(root, 1, extra, cwd), beam_run(root, 2, extra, cwd),
                               beam_run(tiny_root, 1, extra, cwd), beam_run(tiny_root, 2, extra, cwd)])
    med = statistics.median
    n = floors[0][0]
    f, f2, w2 = (n / med(fl[i] for fl in floors) for i in (1, 2, 3))
    rounds = f", median of {repeats} rounds" if repeats > 1 else ""
    print(f"\n{label}: {n} images -> {size}x{size}{rounds}; floor (1 process, decode+resize) {f:.0f} img/s; "
          f"2 processes {f2:.0f} img/s ({f2 / f:.2f}x: the machine's own scaling); 2 processes writing the "
          f"pixels {w2:.0f} img/s (2 x floor / that = {2 * f / w2:.2f}: the output's own cost)")
    wa = n / med(alone)
    print(f"  the job's shard writer alone, 2 processes, no Beam: {wa:.0f} img/s (2 x floor / that = {2 * f / wa:.2f}; "
          f"2 processes writing the pixels / that = {w2 / wa:.2f}: the writer's own cost)")
    print(f"  {'':40s} {'wall img/s':>11s} {'steady img/s':>13s} {'fixed s':>8s} {'peak RSS':>9s}")
    for name, _ in revisions:
        (t1, t2, z1, z2), (rss1, rss2) = ([med(r[i][0] for r in runs[name]) for i in range(4)],
                                          [max(r[i][1] for r in runs[name]) for i in range(2)])
        b1, b2 = n / t1, n / t2
        s1, s2 = n / max(t1 - z1, 1e-9), n / max(t2 - z2, 1e-9)
        job = f"build_records{' (' + name + ')' if name else ''}"
        print(f"  {job + ' DirectRunner x1':40s} {b1:11.0f} {s1:13.0f} {z1:8.1f} {rss1 / 2**20:6.0f} MiB")
        print(f"  {job + ' DirectRunner x2':40s} {b2:11.0f} {s2:13.0f} {z2:8.1f} {rss2 / 2**20:6.0f} MiB")
        print(f"    wall:   x2 / x1 = {b2 / b1:.2f} (goal >= 1.7);  2 x floor / x2 = {2 * f / b2:.2f} (goal <= 1.3)")
        print(f"    steady: x2 / x1 = {s2 / s1:.2f} (goal >= 1.7);  2 x floor / x2 = {2 * f / s2:.2f} (goal <= 1.3); "
              f"2-process floor / x2 = {f2 / s2:.2f}; 2 processes writing / x2 = {w2 / s2:.2f}; "
              f"writer alone / x2 = {wa / s2:.2f} (Beam's stages and the driver)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=2400, help="Train patients of the small set (~3.4 img each).")
    parser.add_argument("--full_patients", type=int, default=100, help="Train patients of the full-size set.")
    parser.add_argument("--encoding", default="raw", help="Passed to build_records.")
    parser.add_argument("--baseline", default=None,
                        help="Another checkout of this project (e.g. `git archive REV | tar -x -C DIR`): its job "
                             "is measured too, on the same files in the same run, as 'before'.")
    parser.add_argument("--repeats", type=int, default=1,
                        help="Rounds of every measurement, alternated; medians are printed (3 on a noisy machine).")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}  encoding: {args.encoding}")
    extra = [f"--encoding={args.encoding}", "--min_shards=8"]
    with tempfile.TemporaryDirectory() as tiny, tempfile.TemporaryDirectory() as root:
        make_sample.generate(tiny, num_patients=1, num_valid_patients=0, progress=False)
        ds = make_sample.generate(root, num_patients=args.patients, num_valid_patients=0, progress=False)
        bench("small (390x320 JPEG)", root, ds, 320, extra, tiny, args.baseline, args.repeats)
        if args.full_patients:
            with tempfile.TemporaryDirectory() as full:
                ds = make_sample.generate(full, num_patients=args.full_patients, num_valid_patients=0,
                                          full_size=True, progress=False)
                bench("full size (~2828x2320 JPEG)", full, ds, 320, extra, tiny, args.baseline, args.repeats)


if __name__ == "__main__":
    main()
