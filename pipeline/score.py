r"""Beam job: batch-scores radiographs with a trained model through RunInference.

    python -m pipeline.score --runner=DirectRunner --job_dir=jobs/atelectasis \
        --input_pattern='data/incoming/**/*.jpg' --output_dir=data/scores
    python -m pipeline.score --runner=DirectRunner --job_dir=jobs/atelectasis \
        --csv=data/synthetic/CheXpert-v1.0-small/valid.csv --output_dir=data/scores --incremental
    python -m pipeline.score --runner=DirectRunner --job_dir=jobs/atelectasis \
        --input_dir=/data/ChestX-ray14 --output_dir=data/scores-nih      # or MIMIC-CXR-JPG; --format to say which

Each input is read and preprocessed with the records job's own code (JPEG, PNG, DICOM),
scored in batches by ``RunInference`` with the job's ``model.keras`` (or its SavedModel,
``--model_format=saved_model``), and written as ``scores.csv`` and ``scores.jsonl`` (one row
per input, sorted by path: P(positive) per observation and the positive calls at the
model's threshold; the JSON rows also carry each image's view), ``studies.csv`` (the CheXpert
competition's format, ``Study,<observations>``, one row per ``.../patientN/studyM`` study
(MIMIC's ``.../pSUBJECT/sSTUDY``; with ``--input_dir`` of an NIH folder, its
``PATIENT/FOLLOWUP`` ids): the max over its frontal images, ``core.studies``; inputs in no
study are left out and counted in the manifest) and ``rejected.jsonl`` (unreadable inputs with the reason), in a new
snapshot folder ``OUTPUT/snapshot-.../`` that ``OUTPUT/manifest.json`` (counts, model,
threshold, input fingerprint, ``outputs``: where the files are) commits. Inputs = scored +
rejected, or nothing is committed.

Scheduled use: the output folder is locked while a run is in progress; a run writes only
new files and commits them in one atomic step (``core.commit``); more than
``--max_reject_fraction`` rejects, or a shrink past ``--max_shrink_fraction``, commits
nothing; ``--incremental`` scores only inputs whose path, size or mtime changed since the
committed run and carries the other rows over; a rerun on unchanged inputs says "nothing
new" and changes nothing. Same code on Dataflow or Flink.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import glob
import hashlib
import io
import json
import logging
import os
import posixpath
import sys
from typing import Sequence

from pipeline import options as job_options

if __name__ == "__main__":  # --help and flag typos answered before Beam loads
    job_options.score_parser(__doc__).parse_known_args()

import apache_beam as beam  # noqa: E402
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions  # noqa: E402

from core import commit as commit_lib  # noqa: E402
from core import cli, fingerprint, storage, studies  # noqa: E402
from core import csv_reader  # noqa: E402
from core import datasets  # noqa: E402
from core import inputs as core_inputs  # noqa: E402
from core.errors import ConfigError  # noqa: E402
from pipeline import build_config, runs  # noqa: E402
from core.studies import model_data  # noqa: E402
from pipeline.model_handler import REJECTED, ChexpertModelHandler, Input, LoadImageFn  # noqa: E402
from schemas import chexpert, job_spec  # noqa: E402

log = logging.getLogger("score")
# Part of every run's fingerprint; raised when a run writes outputs its predecessors did
# not (2: studies.csv and the rows' views), so that no older commit counts as "nothing new".
OUTPUTS_VERSION = "outputs=2"


def make_parser() -> argparse.ArgumentParser:
    """The job's own flags (``pipeline.options``)."""
    return job_options.score_parser(__doc__)


def list_inputs(opts: argparse.Namespace) -> tuple[list[Input], list[dict], dict[str, str]]:
    """The inputs named by --input_pattern, --csv or --input_dir, the rows of the CSV or
    label file rejected before any image is read, and {key: study} where the dataset's own
    files name an image's study (NIH). Fails fast when not exactly one is given, or nothing
    matches."""
    if sum(bool(x) for x in (opts.input_pattern, opts.csv, opts.input_dir)) != 1:
        raise ConfigError("give exactly one of --input_pattern, --csv and --input_dir")
    if opts.input_pattern:
        paths = core_inputs.list_inputs(opts.input_pattern.split(","), patterns=True)
        if not paths:
            raise ConfigError(f"--input_pattern={opts.input_pattern}: no files match (give a folder, a glob such as "
                              f"'DIR/**/*.jpg' in quotes, or --csv)")
        return [Input(p, p, fingerprint.file_stat(p)) for p in paths], [], {}
    if opts.input_dir:
        return dataset_inputs(opts.input_dir, opts.format)
    if not os.path.exists(opts.csv):
        raise ConfigError(f"--csv={opts.csv}: no such file")
    root = opts.image_root or os.path.dirname(os.path.dirname(os.path.abspath(opts.csv)))
    inputs, rejected = csv_inputs(opts.csv, root, set(), f"--csv={opts.csv}")
    return inputs, rejected, {}


def csv_inputs(csv_path: str, root: str, seen: set[str], flag: str, source: bool = False
               ) -> tuple[list[Input], list[dict]]:
    """The images a CheXpert-format CSV lists (keys: its Path cells, relative to ``root``)
    and its rejected rows; a path already in ``seen`` is a ``duplicate_path`` dead letter.
    ``source`` names the CSV in each dead letter (when several CSVs are read)."""
    inputs, rejected = [], []
    name = os.path.basename(csv_path)
    extra = {"source": name} if source else {}
    with open(csv_path, "rb") as f:
        try:
            items = list(csv_reader.read_csv_rows(f, name))
        except chexpert.CsvHeaderError as e:
            raise ConfigError(str(e)) from None
    for item in items:
        if isinstance(item, csv_reader.Reject):
            rejected.append({"key": item.path, "row": item.row, "reason": item.reason, "detail": item.detail, **extra})
            continue
        try:
            path = chexpert.normalize_path(item.cells.get(chexpert.COL_PATH) or "")
        except chexpert.RowError as e:
            rejected.append({"key": item.cells.get(chexpert.COL_PATH), "row": item.line, "reason": e.reason,
                             "detail": e.detail, **extra})
            continue
        if path in seen:
            rejected.append({"key": path, "row": item.line, "reason": "duplicate_path",
                             "detail": f"Path {path!r} is listed twice", **extra})
            continue
        seen.add(path)
        full = os.path.join(root, path)
        inputs.append(Input(path, full, fingerprint.file_stat(full),
                            studies.csv_view(item.cells.get(chexpert.COL_VIEW))))
    _check_mounted(inputs, root, flag)
    return inputs, rejected


def _check_mounted(inputs: list[Input], root: str, flag: str) -> None:
    if inputs and all(i.stat == "missing" for i in inputs):
        state = "does not exist" if not os.path.isdir(root) else "holds none of them"
        raise ConfigError(f"{root}: the {len(inputs)} images {flag} lists are relative to this folder, but "
                          f"it {state}; is the image folder mounted? (set it with --image_root)")


def dataset_inputs(folder: str, fmt: str | None) -> tuple[list[Input], list[dict], dict[str, str]]:
    """The images a dataset folder's label file lists (``core.datasets``), every row.

    NIH and MIMIC: keys are the image paths relative to the folder (the records' keys), each
    input's view is its row's ViewPosition (``frontal``, ``lateral``, ``unknown``), rows that
    do not fit the format are dead letters (``source``, ``row``, ``reason``, ``detail``),
    and NIH's study ids (``PATIENT/FOLLOWUP``) are returned by key (MIMIC's study folders
    name theirs). CheXpert: the images its train.csv and valid.csv list, as ``--csv`` reads
    one (keys are the CSVs' Path cells).

    Raises:
        ConfigError: no dataset there, several, or one whose files cannot be read.
    """
    ds = datasets.find_dataset(folder, fmt)
    if ds is None:
        root = build_config.find_dataset_root(folder)
        inputs, rejected, seen = [], [], set()
        for name in ("train.csv", "valid.csv"):
            path = posixpath.join(build_config.dataset_dir(root), name)
            if os.path.exists(path):
                more, bad = csv_inputs(path, root, seen, f"--input_dir={folder} ({name})", source=True)
                inputs += more
                rejected += bad
        return inputs, rejected, {}
    inputs, rejected, study_ids, seen = [], [], {}, set()
    for item in ds.rows():
        if isinstance(item, csv_reader.Reject):
            rejected.append({"key": item.path, "source": item.source, "row": item.row, "reason": item.reason,
                             "detail": item.detail})
            continue
        if item.image in seen:
            rejected.append({"key": item.image, "source": item.source, "row": item.line, "reason": "duplicate_path",
                             "detail": f"{item.image} is listed twice"})
            continue
        seen.add(item.image)
        full = storage.join(ds.folder, item.image)
        inputs.append(Input(item.image, full, fingerprint.file_stat(full), item.row.view))
        if studies.study_of(item.image) is None:
            study_ids[item.image] = item.row.study_id
    _check_mounted(inputs, ds.folder, f"--input_dir={folder} ({ds.label_file.name})")
    return inputs, rejected, study_ids


def score_row(key: str, probs: dict, threshold: float, view: str = studies.UNKNOWN) -> dict:
    """One output row: probabilities rounded to 6 decimals (stable across batchings), and the
    image's view, which ``studies.csv`` needs (an incremental run carries rows over)."""
    rounded = {t: round(float(p), 6) for t, p in probs.items()}
    return {"path": key, "probabilities": rounded, "positive": [t for t, p in rounded.items() if p >= threshold],
            "view": view}


def build_pipeline(p, inputs: list[Input], job_dir: str, model_format: str, threshold: float, batch_size: int,
                   snapshot_dir: str) -> None:
    loaded = (p | "ListInputs" >> beam.Create(inputs)
                | "Reshuffle" >> beam.Reshuffle()
                | "LoadImages" >> beam.ParDo(LoadImageFn(job_dir)).with_outputs(REJECTED, main="images"))
    (loaded.images
     | "RunInference" >> RunInference(KeyedModelHandler(ChexpertModelHandler(job_dir, model_format, batch_size)))
     | "ToRows" >> beam.MapTuple(lambda key_view, result: json.dumps(
         score_row(key_view[0], result.inference, threshold, view=key_view[1])))
     | "WriteScores" >> beam.io.WriteToText(posixpath.join(snapshot_dir, "scores"), file_name_suffix=".jsonl"))
    (loaded[REJECTED]
     | "RejectsToJson" >> beam.Map(json.dumps)
     | "WriteRejects" >> beam.io.WriteToText(posixpath.join(snapshot_dir, "rejects"), file_name_suffix=".jsonl"))


def _model_digest(job_dir: str, model_format: str) -> str:
    """sha256 over the bytes of the model's files, then its job spec and config, in order.

    One hash over the files' concatenated bytes (read in 1 MiB blocks), not
    ``hashlib.file_digest`` per file: this is the digest earlier releases committed, so a job
    folder that has not changed (an old one has no job_spec.json, which is then skipped) keeps
    its digest across an upgrade and an incremental run carries its scores over.
    """
    h = hashlib.sha256()
    files = ([os.path.join(job_dir, "model.keras")] if model_format == "keras"
             else sorted(glob.glob(os.path.join(job_dir, "saved_model", "**", "*"), recursive=True)))
    for path in files + [os.path.join(job_dir, job_spec.FILE), os.path.join(job_dir, job_spec.CONFIG_FILE)]:
        if os.path.isfile(path):
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def study_table(rows: list[dict], tasks: Sequence[str], study_ids: dict[str, str] | None = None
                ) -> studies.StudyTable:
    """The score rows as studies (``core.studies.aggregate``; ``study_ids``: the studies a
    dataset's files name, by key). A row committed before rows carried their view (none is
    carried over any more, see ``_score_into``) would be judged by its file name."""
    return studies.aggregate(((r["path"], r.get("view") or studies.input_view(r["path"]), r["probabilities"])
                              for r in rows), tasks, study_ids)


def write_outputs(output_dir: str, snapshot: str, rows: list[dict], rejected: list[dict],
                  tasks: Sequence[str], provenance: dict | None = None,
                  study_ids: dict[str, str] | None = None) -> dict[str, str]:
    """Writes scores, the study CSV and dead letters into the run's snapshot folder. Every
    score row says what data the model was trained on (``model_data``), so a CSV passed on
    alone still does.

    Returns:
        {"scores_jsonl" | "scores_csv" | "studies_csv" | "rejected": path relative to
        ``output_dir``}.
    """
    rel = {"scores_jsonl": f"{snapshot}/scores.jsonl", "scores_csv": f"{snapshot}/scores.csv",
           "studies_csv": f"{snapshot}/studies.csv", "rejected": f"{snapshot}/rejected.jsonl"}
    data = model_data(provenance)
    storage.write_bytes(storage.join(output_dir, rel["scores_jsonl"]),
                        "".join(json.dumps({**r, "model_data": data}, sort_keys=True) + "\n" for r in rows).encode())
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path"] + [f"p_{t}" for t in tasks] + ["positive", "model_data"])
    for r in rows:
        writer.writerow([r["path"]] + [f"{r['probabilities'][t]:.6f}" for t in tasks] + [";".join(r["positive"]), data])
    storage.write_bytes(storage.join(output_dir, rel["scores_csv"]), buf.getvalue().encode())
    storage.write_bytes(storage.join(output_dir, rel["studies_csv"]),
                        studies.to_csv(study_table(rows, tasks, study_ids), tasks).encode())
    storage.write_bytes(storage.join(output_dir, rel["rejected"]),
                        "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejected).encode())
    return rel


def read_job_spec(job_dir: str, model_format: str) -> job_spec.JobSpec:
    """The job's spec (``job_spec.json``, or derived from an older job's ``config.json``),
    checked before any work, and the model file it needs present and not empty.

    Raises:
        ConfigError: naming the file.
    """
    try:
        spec = job_spec.read(job_dir)
    except job_spec.JobSpecError as e:
        raise ConfigError(str(e)) from None
    if spec is None:
        raise ConfigError(f"--job_dir={job_dir}: no config.json (nor {job_spec.FILE}); train a model with "
                          "trainer.task first")
    # The model the format names, or the folder itself being a SavedModel export.
    candidates = [os.path.join(job_dir, "model.keras") if model_format == "keras"
                  else os.path.join(job_dir, "saved_model", "saved_model.pb"), os.path.join(job_dir, "saved_model.pb")]
    if not any(os.path.isfile(c) and os.path.getsize(c) > 0 for c in candidates):
        raise ConfigError(f"{candidates[0]}: missing or empty; the job did not finish training (or give "
                          "--model_format=saved_model for an export)")
    return spec


def run(argv: Sequence[str] | None = None, save_main_session: bool = True) -> dict:
    """Scores the inputs; returns the committed manifest (or the unchanged one).

    Raises:
        ConfigError: a bad flag or input, before any work.
        commit_lib.LockedError, commit_lib.DamagedOutputError, commit_lib.GuardError: see
            ``core.commit``; nothing is committed.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    opts, pipeline_args = cli.parse_flags(make_parser(), argv)
    options = PipelineOptions(runs.runner_args(pipeline_args))
    options.view_as(SetupOptions).save_main_session = save_main_session
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "DirectRunner"
    if options.view_as(StandardOptions).runner in cli.LOCAL_RUNNERS and cli.missing_extra("serving"):
        # Local workers load the model in this environment: say so before any work.
        raise ConfigError(cli.missing_extra("serving"))
    if opts.model_format not in ("keras", "saved_model"):
        raise ConfigError(f"--model_format={opts.model_format}: expected keras or saved_model")
    try:
        commit_lib.check_output_dir(opts.output_dir)
    except commit_lib.OutputError as e:
        raise ConfigError(str(e)) from None
    if opts.batch_size < 1:
        raise ConfigError(f"--batch_size={opts.batch_size}: expected >= 1")
    if opts.threshold is not None and not 0.0 < opts.threshold < 1.0:  # also refuses nan
        raise ConfigError(f"--threshold={opts.threshold}: expected a probability strictly between 0 and 1")
    spec = read_job_spec(opts.job_dir, opts.model_format)
    tasks, threshold = list(spec.tasks), opts.threshold if opts.threshold is not None else spec.threshold
    inputs, csv_rejects, study_ids = list_inputs(opts)
    model = _model_digest(opts.job_dir, opts.model_format)
    # OUTPUTS_VERSION: a run committed before studies.csv existed is never "nothing new". A
    # CSV's view column, and a dataset's view and study of an image, are part of an input:
    # editing them changes studies.csv.
    fp = fingerprint.fingerprint([model, str(threshold), opts.model_format, json.dumps(csv_rejects, sort_keys=True),
                           OUTPUTS_VERSION]
                          + [f"{i.key}\t{i.stat}" + (f"\t{i.view}" if i.view else "")
                             + (f"\t{study_ids[i.key]}" if i.key in study_ids else "") for i in inputs])
    out = opts.output_dir
    with commit_lib.exclusive(out):
        previous = commit_lib.committed(out, opts.overwrite)
        # Another job's scores are not this job's to replace (a retrained model of the same
        # job is: its new scores replace the old ones, as build_records' rebuilds do).
        if previous and not opts.overwrite and previous.get("job_dir") is not None \
                and os.path.abspath(previous["job_dir"]) != os.path.abspath(opts.job_dir):
            raise ConfigError(f"--output_dir={out} holds the committed scores of another model "
                              f"({previous['job_dir']}); pass --overwrite to replace them, or choose another "
                              "--output_dir")
        if previous and previous.get("fingerprint") == fp and not opts.overwrite:
            log.info("nothing new: inputs, model and threshold unchanged since %s", previous.get("created"))
            previous["nothing_new"] = True
            return previous
        with commit_lib.new_snapshot(out) as (snapshot, snapshot_dir):
            manifest = _score_into(opts, options, previous or {}, inputs, csv_rejects, model, tasks, threshold, fp,
                                   snapshot, snapshot_dir, dict(spec.provenance) or None, study_ids)
    manifest["nothing_new"] = False
    return manifest


def _carries(row: dict | None, item: Input) -> bool:
    """Whether an unchanged input's committed row can be carried over as it is: not when it
    predates rows' views (studies.csv needs them), nor when the CSV now gives another view
    than the row holds (an edited Frontal/Lateral cell; also, every run, a DICOM whose
    ViewPosition contradicts its CSV row, which is rare and costs one image)."""
    if row is None or "view" not in row:
        return False
    return item.view not in (studies.FRONTAL, studies.LATERAL) or row["view"] == item.view


def _score_into(opts, options, previous: dict, inputs: list[Input], csv_rejects: list[dict], model: str,
                tasks: Sequence[str], threshold: float, fp: str, snapshot: str, snapshot_dir: str,
                provenance: dict | None, study_ids: dict[str, str] | None = None) -> dict:
    out = opts.output_dir
    carried: dict[str, dict] = {}
    todo = inputs
    if opts.incremental and not opts.overwrite and previous.get("model") == model \
            and previous.get("threshold") == threshold:
        old_rows = {r["path"]: r for r in runs.read_jsonl(storage.join(out, previous["outputs"]["scores_jsonl"]))}
        old_rejects = {r["key"]: r for r in runs.read_jsonl(storage.join(out, previous["outputs"]["rejected"]))}
        index = previous.get("index", {})
        todo = []
        for i in inputs:
            if index.get(i.key) == i.stat and (_carries(old_rows.get(i.key), i) or i.key in old_rejects):
                carried[i.key] = old_rows.get(i.key) or {"rejected": old_rejects[i.key]}
            else:
                todo.append(i)
        log.info("incremental: %d new or changed inputs, %d carried over", len(todo), len(carried))
    elif opts.incremental and previous:
        log.info("incremental: the model or threshold changed since the committed run; scoring everything")
    if todo:
        with runs.quiet_workers(opts.verbose), beam.Pipeline(options=options) as p:
            build_pipeline(p, todo, opts.job_dir, opts.model_format, threshold, opts.batch_size, snapshot_dir)
    rows = runs.take_jsonl(storage.join(snapshot_dir, "scores*.jsonl"))
    rejects = runs.take_jsonl(storage.join(snapshot_dir, "rejects*.jsonl"))
    rows += [c for c in carried.values() if "rejected" not in c]
    rejects += [c["rejected"] for c in carried.values() if "rejected" in c] + csv_rejects
    rows.sort(key=lambda r: r["path"])
    rejects.sort(key=lambda r: (str(r.get("key")), r.get("row", 0)))
    n_in = len(inputs) + len(csv_rejects)
    if n_in != len(rows) + len(rejects):
        raise RuntimeError(f"counts do not reconcile, nothing committed: {n_in} inputs, {len(rows)} scored + "
                           f"{len(rejects)} rejected")
    commit_lib.check_rejected(len(rejects), n_in, opts.max_reject_fraction, "inputs", "--max_reject_fraction")
    if previous:
        commit_lib.check_shrink(len(rows), previous.get("scored", 0), opts.max_shrink_fraction, "scores",
                                "--max_shrink_fraction")
    by_reason: dict[str, int] = {}
    for r in rejects:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    outputs = write_outputs(out, snapshot, rows, rejects, tasks, provenance, study_ids)
    table = study_table(rows, tasks, study_ids)
    manifest = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "output_dir": out, "job_dir": opts.job_dir, "model_format": opts.model_format, "model": model, "tasks": tasks,
        "threshold": threshold, "inputs": n_in, "scored": len(rows), "rejected": len(rejects),
        "rejected_by_reason": by_reason, "scored_this_run": len(todo), "carried_over": len(carried),
        "fingerprint": fp, "index": {i.key: i.stat for i in inputs},
        "positives": {t: sum(t in r["positive"] for r in rows) for t in tasks},
        "studies": {"studies": len(table.studies), "without_frontal": table.without_frontal,
                    "outside": len(table.outside)},
        "model_provenance": provenance, "model_data": model_data(provenance),
        "snapshot": snapshot, "outputs": outputs, "files": commit_lib.file_sizes(out, sorted(outputs.values())),
    }
    commit_lib.commit(out, manifest)
    return manifest


def counts_line(m: dict) -> str:
    """The run's counts in one sentence whose numbers add up: inputs = scored + rejected,
    and inputs = read this run (``scored_this_run``: the inputs sent to the model, some of
    them rejected there) + carried over (rows and dead letters of the committed run) + rows
    of a label file rejected before any image was read."""
    unread = m["inputs"] - m["scored_this_run"] - m["carried_over"]
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(m["rejected_by_reason"].items()))
    how = [f"{m['scored_this_run']} read this run", f"{m['carried_over']} carried over from the committed run"]
    if unread:
        how.append(f"{unread} label-file row{'s' if unread != 1 else ''} rejected before any image was read")
    return (f"{m['inputs']} inputs: {m['scored']} scored, {m['rejected']} rejected" + (f" ({reasons})" if reasons else "")
            + "; of the inputs, " + ", ".join(how))


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: one line per error (exit 2 for flags, inputs and a held lock, 1
    for everything else), never a traceback unless ``--verbose``."""
    runs.configure_logging()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        m = run(argv)
    except (ConfigError, commit_lib.LockedError, commit_lib.OutputError) as e:
        print(f"score: error: {e}", file=sys.stderr)
        return 2
    except (commit_lib.DamagedOutputError, commit_lib.GuardError) as e:
        print(f"score: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a full disk, a model that fails to load...: one line, nothing committed
        return cli.unexpected("score", e, "--verbose" in argv, "; nothing committed")
    if m.get("model_data") == "synthetic":
        print("WARNING: the model was trained on SYNTHETIC data (pipeline.make_sample): these scores say nothing "
              "about real radiographs", file=sys.stderr)
    if m.get("nothing_new"):
        print(f"nothing new: inputs, model and threshold unchanged; {m['scored']} scores left as they are")
        return 0
    print(counts_line(m))
    print("positive calls: " + ", ".join(f"{t} {n}" for t, n in m["positives"].items()))
    out, m_dir = m["outputs"], m["output_dir"]
    s = m["studies"]
    print(f"studies: {s['studies']} (max over frontal images)"
          + (f", {s['without_frontal']} without a frontal image (max over their other views)" if s["without_frontal"]
             else "")
          + (f"; {s['outside']} input(s) not in a .../patientNNNNN/studyM/ folder (nor MIMIC's .../pSUBJECT/sSTUDY/) "
             "left out of studies.csv"
             if s["outside"] else ""))
    print(f"scores in {storage.join(m_dir, out['scores_csv'])} and {storage.join(m_dir, out['scores_jsonl'])}, "
          f"studies in {storage.join(m_dir, out['studies_csv'])}, rejects in {storage.join(m_dir, out['rejected'])} (committed by {storage.join(m_dir, 'manifest.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
