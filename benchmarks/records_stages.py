r"""Where one build_records run spends its time: each driver step and each DoFn, timed in place.

    python -m benchmarks.records_stages BUILD_RECORDS_FLAGS...

e.g. an incremental run at full scale (``benchmarks.full_scale`` leaves the data there)::

    python -m benchmarks.records_stages --input_dir=data/fullscale \
        --output_dir=data/fullscale-records --incremental

or the per-element cost of a full build on small images, DoFns in this process::

    python -m benchmarks.records_stages --input_dir=DIR --output_dir=OUT --min_shards=8

It wraps the driver's functions (``pipeline.inputs``, ``incremental``, ``index``,
``manifest_builder``, ``core.commit``, ``pipeline.in_process``) and the DoFns' ``process``
(and ``imaging.preprocess``, the floor's work inside the writer) with wall-clock timers, runs
``build_records.run`` with the flags given, and prints seconds and ms per record. DoFn times
are only seen for work done in this process (DirectRunner with one in-memory worker, or the
in-process incremental path); "rest" is Beam's own work, the Maps and what is not wrapped.
"""

from __future__ import annotations

import collections
import functools
import sys
import time

TIMES: dict[str, float] = collections.defaultdict(float)


def _timed(label: str, fn, materialize: bool = False):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            out = fn(*args, **kwargs)
            return list(out or ()) if materialize else out
        finally:
            TIMES[label] += time.perf_counter() - start
    return wrapper


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    start = time.perf_counter()
    from core import commit, imaging
    from pipeline import build_records, in_process, incremental, index, inputs, manifest_builder, transforms
    imports = time.perf_counter() - start
    driver = [(inputs, ("list_sources", "scan_rows", "list_dataset", "check_image_folders", "check_patient_overlap",
                        "check_held_out", "input_fingerprint")),
              (incremental, ("carry_over",)), (index, ("read_index", "write_index")),
              (manifest_builder, ("fill_missing_shards", "summarize", "describe_dataset", "write_snapshot")),
              (commit, ("committed", "commit")), (in_process, ("run",))]
    for module, names in driver:
        for name in names:
            setattr(module, name, _timed(f"{module.__name__}.{name}", getattr(module, name)))
    dofns = (transforms.ReadCsvFn, transforms.ParseRowFn, transforms.ReadDatasetFn, transforms.RejectDuplicatesFn,
             transforms.WriteShardFn)
    for cls in dofns:
        cls.process = _timed(cls.__name__, cls.process, materialize=True)
    imaging.preprocess = _timed("  decode+resize (imaging.preprocess)", imaging.preprocess)
    start = time.perf_counter()
    result = build_records.run(argv)
    wall = time.perf_counter() - start
    n = max(result.get("incremental", {}) and result["incremental"]["processed"] or result["written"], 1)
    print(f"imports {imports:.2f} s; build_records.run {wall:.2f} s; {n} records processed")
    # Nested timers (scan inside list_inputs, read_index inside carry_over, the DoFns inside
    # in_process.run) are listed, not added up.
    for label, seconds in sorted(TIMES.items(), key=lambda kv: -kv[1]):
        print(f"  {label:44s} {seconds:7.2f} s  {seconds / n * 1e3:8.3f} ms/record")


if __name__ == "__main__":
    main()
