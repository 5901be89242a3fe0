"""What a trained model carries for any scorer: the job spec (``JOB_DIR/job_spec.json``).

A scorer (``pipeline.score``, ``trainer.predict``, the web demo, ``serving``) needs to know
which observations the model predicts and how each head turns logits into P(positive), how
an image file becomes the model's input (the records' stored size and resize mode, then the
model's own size), which views it was trained on, its decision threshold, and what data it
was trained on. The trainer's ``TrainConfig`` holds all of that among fifty training
settings; this spec is the part that travels with the model, versioned and read tolerantly:

* keys this version does not know (a newer trainer's) are ignored with a warning naming
  them, never a ``TypeError`` inside a scoring worker;
* optional keys that are missing take their defaults;
* a spec of a newer *major* version is refused with a ``JobSpecError`` that says so.

Jobs trained before the spec existed have only ``config.json``: ``from_train_config``
derives the same spec from it (``serving.job.load_job`` does this on its own).

Every output that speaks for a model says what it was trained on (``provenance_line``) and
never shows a probability on the wrong side of the threshold (``format_probability``).

Pure Python: the Beam launcher and the web demo read it without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Mapping

from schemas import chexpert

log = logging.getLogger(__name__)

FILE = "job_spec.json"
# The trainer's own config, beside the spec; the only description jobs trained before it have.
CONFIG_FILE = "config.json"
# MAJOR.MINOR: a minor bump adds optional keys (older readers ignore them, with a warning);
# a major bump changes what an existing key means, and older readers refuse the spec.
SPEC_VERSION = "1.0"
MAJOR = 1
HEAD_KINDS = ("binary", "multiclass")
VIEW_CHOICES = ("frontal", "all")  # what a model was trained on (trainer.task --views)


MAX_IMAGE_SIZE = 4096  # build_records' --image_size bound


_WARNED: set[tuple[str, tuple[str, ...]]] = set()  # (file, unknown keys) already warned about


class JobSpecError(ValueError):
    """A job spec that cannot be read: not JSON, a required key missing or wrong, or a newer
    major version; the message names the file."""


def head_kind_of(policy: str) -> str:
    """The head an uncertainty policy trains: ``multiclass`` (3-way softmax, U-MultiClass) or
    ``binary`` (sigmoid)."""
    return "multiclass" if policy == chexpert.MULTICLASS else "binary"


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """What any scorer of a trained model needs.

    Attributes:
        tasks: observation slugs the model predicts, in ``chexpert.OBSERVATIONS`` order; the
            model's outputs are keyed by them.
        heads: task -> ``binary`` (sigmoid) or ``multiclass`` (3-way softmax; P(positive) is
            the softmax over negative and positive only).
        image_size: S, the side of the model's uint8 (B, S, S, 1) input.
        records_image_size: the side the records job stored images at (the first resize an
            image file goes through); then, if larger than S, an antialiased resize to S.
        records_resize: how the records job made images square (``squash``, ``crop``, ``pad``).
        views: ``frontal`` (trained on frontal views only) or ``all``.
        threshold: P(positive) at or above which a finding is called positive.
        backbone: the network's name (``densenet121``, ``tiny``, ...).
        policy: slug -> uncertainty policy the labels were trained under (label mode).
        provenance: what the training data was (``trainer.config.provenance_of``); its
            ``synthetic`` says whether it came from ``pipeline.make_sample``; empty for jobs
            from before provenance was recorded.
        spec_version: ``MAJOR.MINOR`` of this format.
    """

    tasks: tuple[str, ...]
    heads: Mapping[str, str]
    image_size: int
    records_image_size: int
    records_resize: str = "squash"
    views: str = "frontal"
    threshold: float = 0.35
    backbone: str = "densenet121"
    policy: Mapping[str, str] = dataclasses.field(default_factory=dict)
    provenance: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    spec_version: str = SPEC_VERSION

    def head_kind(self, task: str) -> str:
        """``binary`` or ``multiclass`` for one of ``tasks``."""
        return self.heads[task]

    @property
    def synthetic(self) -> bool | None:
        """True when the model was trained on synthetic data; None when unknown (an older job)."""
        return self.provenance.get("synthetic")

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d.update(tasks=list(self.tasks), heads=dict(self.heads), policy=dict(self.policy),
                 provenance=dict(self.provenance))
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = FILE) -> "JobSpec":
        """Reads a spec written by ``to_json`` of this or another version (module docstring).

        Args:
            text: the file's content.
            source: the file's name or path, for messages.

        Raises:
            JobSpecError: not a JSON object, a required key missing, or a newer major version.
        """
        d = _json_object(text, source, "a job spec")
        version = str(d.get("spec_version", SPEC_VERSION))
        try:
            major = int(version.split(".")[0])
        except ValueError:
            raise JobSpecError(f"{source}: spec_version {version!r} is not MAJOR.MINOR") from None
        if major > MAJOR:
            raise JobSpecError(f"{source}: spec_version {version} is newer than this code reads ({SPEC_VERSION}); "
                               "update the project to score with this model")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown and (source, tuple(unknown)) not in _WARNED:
            # Once per file and process: a scoring job reads the spec in its driver and again
            # in every worker's set-up, and one warning says it all.
            _WARNED.add((source, tuple(unknown)))
            log.warning("%s: ignoring keys this version (%s) does not know: %s", source, SPEC_VERSION,
                        ", ".join(unknown))
        return _build(cls, {k: v for k, v in d.items() if k in known}, source)


def generator_of(provenance: Mapping[str, Any] | None) -> str:
    """The command that makes the synthetic data a model was trained on, by its records'
    source format (``dataset``; absent in jobs from before it was recorded: CheXpert's)."""
    dataset = (provenance or {}).get("dataset") or "chexpert"
    return "pipeline.make_sample" if dataset == "chexpert" else "pipeline.make_external"


def provenance_line(provenance: Mapping[str, Any]) -> str:
    """One sentence for reports, logs, pages: what the model was trained on, and when."""
    if not provenance:
        return "training data unknown (a job from before provenance was recorded)"
    when = str(provenance.get("trained", ""))[:10]
    if provenance.get("synthetic"):
        return (f"trained {when} on SYNTHETIC data ({provenance.get('input_dir')}, made by {generator_of(provenance)}): "
                "its outputs say nothing about real radiographs")
    return f"trained {when} on records of {provenance.get('input_dir')} ({provenance.get('records')} images)"


def format_probability(p: float, threshold: float) -> str:
    """``p`` with 3 decimals, or more where 3 would put it on (or across) the threshold:
    0.349753 next to 0.35 reads "0.3498", not "0.350", which looks like a positive call."""
    for decimals in range(3, 11):
        shown = f"{p:.{decimals}f}"
        if (float(shown) >= threshold) == (p >= threshold) and float(shown) != threshold:
            return shown
    return repr(float(p))  # exactly the threshold (a positive call: calls are p >= threshold)


def from_train_config(config: Mapping[str, Any], source: str = CONFIG_FILE) -> JobSpec:
    """The spec of a job from its trainer config (``config.json``'s content, or
    ``dataclasses.asdict`` of a ``TrainConfig``): how jobs trained before the spec existed
    are read, and how the trainer makes the spec it writes (one derivation for both).

    Raises:
        JobSpecError: the config lacks ``tasks`` (not a trainer.task config).
    """
    policy = dict(config.get("policy") or {})
    tasks = config.get("tasks")
    if not tasks:
        raise JobSpecError(f"{source}: not a trainer.task config (no tasks)")
    image_size = config.get("image_size", 320)
    d = {"tasks": tasks, "heads": {t: head_kind_of(policy.get(t, "")) for t in tasks}, "image_size": image_size,
         "records_image_size": config.get("records_image_size", image_size), "policy": policy,
         "provenance": config.get("provenance") or {}}
    for key in ("records_resize", "views", "threshold", "backbone"):
        if key in config:
            d[key] = config[key]
    return _build(JobSpec, d, source)


def read(folder: str) -> JobSpec | None:
    """The spec of the job in ``folder``: its ``job_spec.json``, else derived from its
    ``config.json`` (a job trained before the spec existed); None when it has neither.

    Raises:
        JobSpecError: the file is there but cannot be read as a spec (the message names it).
    """
    spec_path, config_path = os.path.join(folder, FILE), os.path.join(folder, CONFIG_FILE)
    path = spec_path if os.path.exists(spec_path) else config_path if os.path.exists(config_path) else None
    if path is None:
        return None
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise JobSpecError(f"{path}: unreadable ({e})") from None
    if path == spec_path:
        return JobSpec.from_json(text, path)
    return from_train_config(_json_object(text, path, "a trainer.task config"), path)


def _json_object(text: str, source: str, what: str) -> dict:
    """``text`` parsed as a JSON object, else a JobSpecError naming ``source``."""
    try:
        d = json.loads(text)
    except ValueError as e:
        raise JobSpecError(f"{source}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise JobSpecError(f"{source}: not {what} (a JSON {type(d).__name__}, not an object)")
    return d


def _build(cls, d: dict, source: str) -> JobSpec:
    """A checked ``JobSpec`` from known keys; defaults for missing optional ones.

    Raises:
        JobSpecError: a required key missing, or a value of the wrong type or range; the
            message names the file and the key (a hand-edited spec must not fail later, as a
            traceback inside a scorer).
    """
    missing = [k for k in ("tasks", "image_size") if k not in d]
    if missing:
        raise JobSpecError(f"{source}: no {' or '.join(missing)}; not a job spec")

    def bad(key: str, expected: str) -> JobSpecError:
        return JobSpecError(f"{source}: {key}={d[key]!r}; expected {expected}")

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    tasks = d["tasks"]
    if not isinstance(tasks, (list, tuple)) or not tasks or not all(t in chexpert.OBSERVATION_INDEX for t in tasks):
        raise bad("tasks", "a non-empty list of observation slugs (e.g. ['atelectasis'])")
    d["tasks"] = tuple(tasks)
    d.setdefault("records_image_size", d["image_size"])
    for key in ("image_size", "records_image_size"):
        if not is_int(d[key]) or not 1 <= d[key] <= MAX_IMAGE_SIZE:
            raise bad(key, f"a whole number of pixels, 1..{MAX_IMAGE_SIZE}")
    for key in ("heads", "policy", "provenance"):
        if d.get(key) is not None and not isinstance(d[key], dict):
            raise bad(key, "a JSON object")
        d[key] = dict(d.get(key) or {})
    # A spec without heads (hand-written) means sigmoid heads, the trainer's default.
    for task in d["tasks"]:
        d["heads"].setdefault(task, "binary")
    wrong = {t: k for t, k in d["heads"].items() if k not in HEAD_KINDS}
    if wrong:
        raise JobSpecError(f"{source}: unknown head kind(s) {wrong}; expected {' or '.join(HEAD_KINDS)}")
    if d.get("views", "frontal") not in VIEW_CHOICES:
        raise bad("views", " or ".join(VIEW_CHOICES))
    if "threshold" in d:
        t = d["threshold"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t < 1.0:
            raise bad("threshold", "a probability strictly between 0 and 1")
        d["threshold"] = float(t)
    for key in ("records_resize", "backbone"):
        if key in d and not isinstance(d[key], str):
            raise bad(key, "a string")
    d["spec_version"] = str(d.get("spec_version", SPEC_VERSION))
    return cls(**d)
