r"""Scores image files with a trained job; optional Grad-CAM heatmaps.

    python -m trainer.predict --job_dir jobs/atelectasis xray1.jpg scans/ study.dcm
    python -m trainer.predict --job_dir jobs/atelectasis --heatmap atelectasis --out_dir out/ CheXpert-v1.0-small/valid

Accepts JPEG, PNG (8/16-bit), DICOM or a folder of them; preprocessing is the records job's
own (``serving.preprocess.model_input``). Writes to ``--out_dir``:

* ``predictions.csv``: one row per image: its path, its view (``frontal``, ``lateral`` or
  ``unknown``: ``core.studies.input_view``; for a folder holding an NIH or MIMIC label file,
  its ViewPosition column), P(positive) per observation, the positive
  calls at the threshold, warnings, the overlay's file name (``--heatmap``) and
  ``model_data`` (``synthetic``, ``real`` or ``unknown``: what the model was trained on).
* ``predictions.json``: the same, the model's provenance, unreadable files with the reason,
  and the study table's details.
* ``predictions_studies.csv``: the CheXpert competition's format, ``Study,<observations>``,
  one row per study (the max over its frontal images; ``core.studies``): CheXpert's
  ``patientNNNNN/studyM`` and MIMIC-CXR-JPG's ``pSUBJECT/sSTUDY`` folders; images in no
  such folder (NIH's, which has one image per follow-up) are left out and counted.
* with ``--heatmap TASK``: one ``<path>.gradcam_TASK.png`` per image, named by the image's
  path below the inputs' common folder (``patient00001_study1_view1_frontal.gradcam_...``),
  never one file for two images. Each shows the film at its own resolution, the Grad-CAM
  mapped back through the resize the model's input went through, a colour bar and a caption
  (task, probability, threshold, call, geometry, provenance).

The console table names inputs by their path below that common folder. A lateral view
given to a frontal-only model is scored with a warning; a model trained on synthetic data
is said to be, in every output. ``--job_dir`` may also name a SavedModel folder the trainer
exported (``JOB_DIR/saved_model``, on its own: it carries its ``job_spec.json``); heatmaps
need ``model.keras``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import sys
import time
from typing import Sequence

from core import cli

cli.require_extra("train", "trainer.predict")  # before absl: a Beam-only install says what is missing

from absl import app, flags  # noqa: E402

from serving import startup

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Declares the command-line flags; called only when run as a program, so importing this
    module as a library (tests, other entry points) declares nothing."""
    flags.DEFINE_string("job_dir", None, "trainer.task job folder (model.keras + job_spec.json, or config.json for "
                                        "jobs trained before the spec), or its SavedModel export.")
    flags.DEFINE_string("out_dir", "predictions", "Where predictions.csv/.json, the study CSV and heatmaps go.")
    flags.DEFINE_string("heatmap", None, "Observation slug to draw Grad-CAM overlays for (one per input image).")
    flags.DEFINE_float("threshold", None, "Decision threshold (default: the job's, 0.35).")
    flags.DEFINE_integer("batch_size", 32, "Images per model call.")
    flags.DEFINE_boolean("overwrite", False, "Replace an earlier run's predictions in --out_dir (and remove its "
                                             "overlays); without it such a folder is refused.")
    flags.DEFINE_boolean("verbose", False, "Show TensorFlow's own start-up lines (hidden by default).")


if __name__ == "__main__":  # flags first, then TensorFlow, quietly (serving/startup.py)
    define_flags()
    startup.begin(sys.argv)

from core import datasets, studies  # noqa: E402
from core.errors import ConfigError  # noqa: E402
from core.inputs import list_inputs  # noqa: E402
from schemas import chexpert, sources  # noqa: E402
from schemas.job_spec import format_probability, generator_of, provenance_line  # noqa: E402
from serving import heatmap as heatmap_lib  # noqa: E402
from serving import job as job_lib  # noqa: E402
from serving import preprocess  # noqa: E402
from serving.predict import predict_batch, score_in_batches  # noqa: E402

log = logging.getLogger(__name__)


PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
STUDIES_CSV = "predictions_studies.csv"
LATERAL_WARNING = "lateral view given to a model trained on frontal views only"
# Characters kept in overlay file names; the rest (separators, spaces, quotes) become "_".
_UNSAFE = re.compile(r"[^\w.\-]+")


# --- Naming ---------------------------------------------------------------------------------


def common_root(paths: Sequence[str]) -> str:
    """The deepest folder holding every path (absolute); the current folder for none."""
    if not paths:
        return os.getcwd()
    return os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])


def overlay_names(paths: Sequence[str], task: str, root: str | None = None) -> dict[str, str]:
    """A distinct overlay file name for every path.

    The name is the path below ``root`` (default: ``common_root(paths)``) with its separators
    as ``_`` and its suffix dropped, and at least a CheXpert path's ``patientN/studyM/file``
    (so a single ``view1_frontal.jpg`` still says whose it is):
    ``.../in/patient00001/study1/view1_frontal.jpg`` -> ``patient00001_study1_view1_frontal.gradcam_TASK.png``.
    Names that would repeat one already given, compared case-blind (macOS and Windows disks
    are), get ``~`` and 8 hex digits of the path's SHA-1, then a counter if need be: no two
    paths ever share a file.

    Args:
        paths: the images, in the order names are given out (sorted, for names that do not
            depend on the run).
        task: the observation slug.
        root: the folder names are taken relative to.

    Returns:
        {path: file name}.
    """
    root = common_root(paths) if root is None else root
    names: dict[str, str] = {}
    taken: set[str] = set()
    for path in paths:
        if path in names:
            continue
        absolute = os.path.abspath(path)
        parts = os.path.relpath(absolute, root).split(os.sep)
        if studies.study_of(absolute) and len(parts) < 3:
            parts = absolute.split(os.sep)[-3:]
        stem = _UNSAFE.sub("_", "_".join(parts[:-1] + [os.path.splitext(parts[-1])[0]])) or "image"
        name = f"{stem}.gradcam_{task}.png"
        if name.lower() in taken:
            digest = hashlib.sha1(absolute.encode()).hexdigest()[:8]
            name, n = f"{stem}~{digest}.gradcam_{task}.png", 2
            while name.lower() in taken:
                name, n = f"{stem}~{digest}-{n}.gradcam_{task}.png", n + 1
        taken.add(name.lower())
        names[path] = name
    return names


# --- Scoring --------------------------------------------------------------------------------


def dataset_views(inputs: Sequence[str]) -> dict[str, str]:
    """{absolute image path: view} for the images of each NIH ChestX-ray14 or MIMIC-CXR-JPG
    folder among ``inputs`` (the folder holding its label file), from its ViewPosition
    column: a JPEG or PNG states no view, and MIMIC's study rule needs them. Read from the
    view column alone (``Dataset.image_views``): an image whose labels row is bad keeps its
    view, since scoring needs no labels. A dataset folder that cannot be read is logged and
    its images are judged as any others."""
    views: dict[str, str] = {}
    for item in inputs:
        if not os.path.isdir(item):
            continue
        try:
            if sources.detect_format(os.listdir(item), item) == sources.CHEXPERT:
                continue  # CheXpert's file names state their views
            ds = datasets.find_dataset(item)
        except sources.FormatError:
            continue  # not a dataset folder
        except ConfigError as e:
            log.warning("%s: views not read from its label file: %s", item, e)
            continue
        for image, view in ds.image_views().items():
            views[os.path.abspath(os.path.join(ds.folder, image))] = view
    return views


def predict_files(job: job_lib.Job, files: list[str], *, threshold: float, batch_size: int = 32,
                  views: dict[str, str] | None = None) -> tuple[list, list]:
    """Scores files in batches (``serving.predict.score_in_batches``).

    ``views``: {absolute path: view} a dataset's label file states (``dataset_views``),
    used after a DICOM's own tag and before the file name.

    Returns:
        ``(results, failures)``: per file ``{"path", "view", "probs": {task: p}, "positive":
        [tasks], "warnings": [...]}`` (``view``: ``frontal``, ``lateral`` or ``unknown``,
        ``core.studies.input_view``); failures ``{"path", "reason", "detail"}``.
    """
    failures = []

    def readable():
        for path in files:
            try:
                with open(path, "rb") as f:
                    data = f.read()
                image = preprocess.model_input(data, path, job.spec)
            except chexpert.RowError as e:
                failures.append({"path": path, "reason": e.reason, "detail": e.detail})
                continue
            except OSError as e:
                failures.append({"path": path, "reason": chexpert.unreadable_reason(os.path.exists(path)),
                                 "detail": f"{path}: {e}"})
                continue
            view = studies.input_view(path, data, (views or {}).get(os.path.abspath(path)))
            # Only a view the file states: a free name or a silent header is "unknown", and a
            # warning there would be a guess.
            warnings = [LATERAL_WARNING] if job.spec.views == "frontal" and view == studies.LATERAL else []
            yield {"path": path, "view": view, "warnings": warnings}, image

    results = []
    for r, p in score_in_batches(readable(), lambda images: predict_batch(job, images), batch_size):
        r["probs"] = {t: float(v) for t, v in zip(job.tasks, p)}
        r["positive"] = [t for t, v in r["probs"].items() if v >= threshold]
        results.append(r)
    return results, failures


class OutputExistsError(ValueError):
    """The output folder holds an earlier run's predictions; the message says what to do."""


def clear_earlier_run(out_dir: str, overwrite: bool) -> None:
    """An output folder with an earlier run's predictions is refused, unless ``overwrite``:
    then that run's files (its tables and the overlays its predictions.json lists) are
    removed first, so no overlay of another model or input set is left beside the new ones.

    Raises:
        OutputExistsError: the folder holds predictions and ``overwrite`` is False.
    """
    tables = [os.path.join(out_dir, n) for n in (PREDICTIONS_JSON, PREDICTIONS_CSV, STUDIES_CSV)]
    if not any(os.path.exists(t) for t in tables):
        return
    if not overwrite:
        raise OutputExistsError(f"--out_dir={out_dir} holds the predictions of an earlier run; pass --overwrite to "
                                "replace them (their overlays are removed too), or choose another --out_dir")
    try:
        with open(tables[0]) as f:
            overlays = [r["overlay"] for r in json.load(f).get("results", []) if r.get("overlay")]
    except (OSError, ValueError, AttributeError, TypeError) as e:
        log.warning("%s: unreadable (%s); removing only the tables", tables[0], e)
        overlays = []
    for path in tables + [os.path.join(out_dir, os.path.basename(o)) for o in overlays]:
        if os.path.exists(path):
            os.remove(path)


def run(job: job_lib.Job, inputs: Sequence[str], out_dir: str, *, threshold: float | None = None,
        heatmap_task: str | None = None, batch_size: int = 32, overwrite: bool = False) -> dict:
    """Scores ``inputs`` and writes every output into ``out_dir``.

    Args:
        job: a loaded job.
        inputs: image files and folders (searched for images).
        out_dir: created if missing; files of an earlier run with the same names are replaced.
        threshold: the decision threshold (default: the job's).
        heatmap_task: an observation to draw Grad-CAM overlays for, or None.
        batch_size: images per model call.
        overwrite: replace an earlier run's predictions in ``out_dir`` (``clear_earlier_run``).

    Returns:
        The document written as ``predictions.json``: ``results`` (with ``overlay``, a file
        name in ``out_dir``, or None), ``failures``, ``studies``, provenance, ``input_root``.

    Raises:
        job_lib.JobError: ``heatmap_task`` on a SavedModel.
        ValueError: ``heatmap_task`` is not one of the job's tasks.
    """
    if heatmap_task and heatmap_task not in job.tasks:
        raise ValueError(f"--heatmap {heatmap_task}: the model predicts {', '.join(job.tasks)}")
    clear_earlier_run(out_dir, overwrite)
    threshold = job.spec.threshold if threshold is None else threshold
    files = list_inputs(inputs)  # sorted, each once: a file named twice is scored (and drawn) once
    results, failures = predict_files(job, files, threshold=threshold, batch_size=batch_size,
                                      views=dataset_views(inputs))
    root = common_root([r["path"] for r in results] + [f["path"] for f in failures])
    os.makedirs(out_dir, exist_ok=True)
    names = overlay_names([r["path"] for r in results], heatmap_task, root) if heatmap_task else {}
    for r in results:
        r["overlay"] = None
        if not heatmap_task:
            continue
        try:
            picture, info = heatmap_lib.heatmap(job, r["path"], heatmap_task, r["probs"][heatmap_task], threshold,
                                    label=os.path.relpath(os.path.abspath(r["path"]), root), view=r["view"],
                                    warnings=r["warnings"])
        except (chexpert.RowError, OSError) as e:  # changed on disk since it was scored
            r["warnings"].append(f"no heatmap: {e}")
            continue
        heatmap_lib.save_png(picture, info, os.path.join(out_dir, names[r["path"]]))
        r["overlay"] = names[r["path"]]
    table = studies.aggregate(((r["path"], r["view"], r["probs"]) for r in results), job.tasks)
    with open(os.path.join(out_dir, STUDIES_CSV), "w", newline="") as f:
        f.write(studies.to_csv(table, job.tasks))
    data = studies.model_data(job.spec.provenance)
    with open(os.path.join(out_dir, PREDICTIONS_CSV), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "view"] + [f"p_{t}" for t in job.tasks] + ["positive", "warnings", "overlay", "model_data"])
        for r in results:
            w.writerow([r["path"], r["view"]] + [f"{r['probs'][t]:.6f}" for t in job.tasks]
                       + [";".join(r["positive"]), ";".join(r["warnings"]), r["overlay"] or "", data])
    doc = {
        "job_dir": job.job_dir, "threshold": threshold, "model_data": data,
        "model_provenance": dict(job.spec.provenance), "provenance": provenance_line(job.spec.provenance),
        "input_root": root, "heatmap": heatmap_task, "results": results, "failures": failures,
        "studies": {"csv": STUDIES_CSV, "rule": "max over the study's frontal images; a study without one: max over "
                                               "its other images",
                    "count": len(table.studies), "without_frontal": table.without_frontal,
                    "outside": list(table.outside), "summary": studies.summary(table),
                    "rows": [{"study": s.study, "basis": s.basis, "paths": list(s.paths), "left_out": list(s.left_out)}
                             for s in table.studies]},
    }
    with open(os.path.join(out_dir, PREDICTIONS_JSON), "w") as f:
        json.dump(doc, f, indent=2)
    return doc


def report(doc: dict, tasks: Sequence[str], out_dir: str, seconds: float, out=sys.stdout, err=sys.stderr) -> None:
    """Prints the table (paths below the inputs' common folder), the study summary and the
    provenance warning."""
    if doc["model_data"] == "synthetic":
        print(f"WARNING: the model was trained on SYNTHETIC data ({generator_of(doc['model_provenance'])}): these "
              "predictions say nothing about real radiographs", file=err)
    results, root = doc["results"], doc["input_root"]
    rel = {r["path"]: os.path.relpath(os.path.abspath(r["path"]), root) for r in results}
    width = max([len(p) for p in rel.values()] + [4])
    print(f"model: {doc['provenance']}", file=out)
    print(f"paths below {root}", file=out)
    print(f"{'file':{width}s} {'view':8s} " + " ".join(f"{t[:12]:>12s}" for t in tasks) + "   positive", file=out)
    for r in results:
        shown = [format_probability(r["probs"][t], doc["threshold"]) for t in tasks]
        print(f"{rel[r['path']]:{width}s} {r['view']:8s} " + " ".join(f"{v:>12s}" for v in shown)
              + "   " + (", ".join(r["positive"]) or "-")
              + ("   WARNING: " + "; ".join(r["warnings"]) if r["warnings"] else ""), file=out)
    unknown = sum(r["view"] == studies.UNKNOWN for r in results)
    if unknown:
        print(f"view unknown for {unknown} image(s): no DICOM ViewPosition and not named view<N>_frontal/lateral",
              file=out)
    for fl in doc["failures"]:
        print(f"could not read {fl['path']}: {fl['reason']}: {fl['detail']}", file=err)
    print(f"studies: {doc['studies']['summary']}; wrote {os.path.join(out_dir, STUDIES_CSV)}", file=out)
    if doc["heatmap"]:
        drawn = sum(r["overlay"] is not None for r in results)
        print(f"{drawn} Grad-CAM overlays for {doc['heatmap']} at each film's own resolution in {out_dir}/ "
              f"(file names in {PREDICTIONS_CSV}'s overlay column)", file=out)
    print(f"{len(results)} scored, {len(doc['failures'])} unreadable in {seconds:.1f} s; wrote "
          f"{os.path.join(out_dir, PREDICTIONS_CSV)} and .json", file=out)


def main(argv) -> int:
    paths = argv[1:]
    if not FLAGS.job_dir or not paths:
        print("usage: python -m trainer.predict --job_dir JOB_DIR FILE_OR_FOLDER...", file=sys.stderr)
        return 2
    try:
        job = job_lib.load_job(FLAGS.job_dir)
    except job_lib.JobError as e:
        print(f"trainer.predict: error: {e}", file=sys.stderr)
        return 2
    if FLAGS.heatmap and not job.is_keras:
        print(f"trainer.predict: error: --heatmap needs model.keras; {FLAGS.job_dir} is a SavedModel folder (use "
              "its job folder)", file=sys.stderr)
        return 2
    if FLAGS.heatmap and FLAGS.heatmap not in job.tasks:
        print(f"trainer.predict: error: --heatmap {FLAGS.heatmap}: the model predicts {', '.join(job.tasks)}",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        doc = run(job, paths, FLAGS.out_dir, threshold=FLAGS.threshold, heatmap_task=FLAGS.heatmap,
                  batch_size=FLAGS.batch_size, overwrite=FLAGS.overwrite)
    except OutputExistsError as e:
        print(f"trainer.predict: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # one line, not a traceback (--verbose shows it)
        return cli.unexpected("trainer.predict", e, FLAGS.verbose)
    report(doc, job.tasks, FLAGS.out_dir, time.perf_counter() - start)
    return 1 if doc["failures"] and not doc["results"] else 0


if __name__ == "__main__":
    app.run(main)
