"""The trainer's validated, frozen configuration (saved as ``JOB_DIR/config.json``).

Only ``trainer/task.py`` reads flags; it builds a ``TrainConfig`` with ``make_config`` and
passes it on. Library modules take the config or plain arguments.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
from typing import Any, Mapping, Sequence

from core import commit as commit_lib
from core.errors import ConfigError
from schemas import chexpert, job_spec
from schemas import manifest as manifest_lib

log = logging.getLogger(__name__)
BACKBONES = ("densenet121", "densenet169", "densenet201", "tiny")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# What --views may select: frontal images only, or every view (not the CSV's view names,
# schemas.chexpert.VIEWS, nor the per-record ones, core.views.VIEWS).
VIEW_CHOICES = job_spec.VIEW_CHOICES  # what --views takes


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on.

    Attributes:
        tasks: observation slugs the model predicts, in ``chexpert.OBSERVATIONS`` order.
        policy: slug -> uncertainty policy for all 14 observations (only ``tasks`` matter).
        batch_size: per replica; the global batch is ``batch_size * replicas``.
        steps_per_epoch: 0 means one full pass over the training split.
        steps_per_execution: optimizer steps per ``tf.function`` call (fewer host round trips).
        deterministic: read training records in a fixed order and run TensorFlow's ops
            deterministically, so the same ``seed`` gives the same weights (slower input).
        distill_from: job folders whose averaged predictions the model is distilled from
            (``trainer.distill``); empty for none.
    """

    tasks: tuple[str, ...]
    records_dir: str
    job_dir: str
    policy: Mapping[str, str]
    blank: str = "negative"
    image_size: int = 320
    backbone: str = "densenet121"
    weights: str = "none"
    batch_size: int = 16
    epochs: int = 3
    steps_per_epoch: int = 0
    steps_per_execution: int = 1
    learning_rate: float = 1e-4
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-8
    threshold: float = 0.35
    strategy: str = "auto"
    jit_compile: bool = True
    precision: str = "float32"
    seed: int = 0
    deterministic: bool = False
    augment: bool = True
    views: str = "frontal"
    skip_corrupt: bool = False
    patience: int = 3
    shuffle_buffer: int = 2048
    train_split: str = "train"
    eval_split: str = "valid"
    distill_from: tuple[str, ...] = ()
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    # How the records were made (from their manifest): what predict and serving repeat.
    records_image_size: int = 320
    records_encoding: str = "raw"
    records_resize: str = "squash"
    # Where the training data came from (``provenance_of``): every output that speaks for the
    # model says it, above all when the data was synthetic.
    provenance: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def head_kind(self, task: str) -> str:
        """``multiclass`` (3-way softmax) or ``binary`` (sigmoid) for a task."""
        return job_spec.head_kind_of(self.policy[task])

    def spec(self) -> job_spec.JobSpec:
        """What a scorer of this job's model needs (``schemas.job_spec``), written next to it."""
        return job_spec.from_train_config(dataclasses.asdict(self))

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["policy"] = dict(self.policy)
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        """Reads config.json; keys this version does not know (a newer trainer's) are
        ignored with a warning instead of failing inside a scoring worker."""
        d = json.loads(text)
        d["tasks"] = tuple(d["tasks"])
        # Jobs trained before --teacher became --distill_from saved the field as "teacher".
        old = d.pop("teacher", ())
        d["distill_from"] = tuple(d.get("distill_from", old))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            log.warning("config.json: ignoring keys this version does not know: %s", ", ".join(unknown))
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def synthetic(self) -> bool | None:
        """True when the model was trained on synthetic data; None when unknown (an older job)."""
        return self.provenance.get("synthetic")


# What a job folder's next run may change and still resume it: how long, how patiently and
# on what hardware it trains. Anything else would make config.json describe a model that
# was (partly) trained otherwise.
RESUMABLE = ("epochs", "patience", "skip_corrupt", "strategy", "jit_compile", "steps_per_execution", "job_dir")


def check_resumable(cfg: TrainConfig, previous: TrainConfig) -> None:
    """Raises ConfigError when ``cfg`` differs from the job folder's earlier config in
    anything but ``RESUMABLE`` (and the training date), naming each difference."""
    old, new = dataclasses.asdict(previous), dataclasses.asdict(cfg)
    for d in (old, new):
        d["provenance"] = {k: v for k, v in dict(d.get("provenance") or {}).items() if k != "trained"}
        d["policy"] = dict(d["policy"])
    changed = [k for k in new if k not in RESUMABLE and old.get(k) != new[k]]
    if changed:
        diffs = "; ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed[:4])
        raise ConfigError(f"--job_dir={cfg.job_dir} holds a job trained with other settings ({diffs}"
                          f"{'; ...' if len(changed) > 4 else ''}); a rerun there resumes it, which only works with "
                          f"the same settings (apart from {', '.join(RESUMABLE[:-1])}). Choose another --job_dir, "
                          "or delete that one to start over")


def provenance_of(records_dir: str, manifest: manifest_lib.Manifest) -> dict:
    """What a model trained on ``records_dir`` must say about its data."""
    return {"synthetic": manifest.synthetic, "records_dir": os.path.abspath(records_dir),
            "records_snapshot": manifest.snapshot or None, "records_created": manifest.created or None,
            "input_dir": manifest.options.get("input_dir"), "records": manifest.written, "dataset": manifest.format,
            "trained": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def parse_tasks(spec: str) -> tuple[str, ...]:
    """``atelectasis``, ``competition``, ``all`` or a comma list -> slugs in CSV order."""
    names: set[str] = set()
    for item in (s.strip().lower() for s in spec.split(",")):
        if not item:
            continue
        if item == "competition":
            names.update(chexpert.COMPETITION_TASKS)
        elif item == "all":
            names.update(chexpert.OBSERVATIONS)
        else:
            slug = item.replace(" ", "_")  # "Pleural Effusion" or "pleural effusion" (lower-cased above)
            if slug not in chexpert.OBSERVATION_INDEX:
                raise ConfigError(f"--pathology {item!r}: unknown; use a slug ({', '.join(chexpert.OBSERVATIONS)}), "
                                  "'competition' or 'all'")
            names.add(slug)
    if not names:
        raise ConfigError("--pathology is empty")
    return tuple(s for s in chexpert.OBSERVATIONS if s in names)


def load_config(job_dir: str) -> TrainConfig:
    """The config of a trainer.task job folder, or of the job a SavedModel folder was exported
    from (``JOB_DIR/saved_model``: the config is in the folder above).

    Raises:
        ConfigError: neither folder has a config.json.
    """
    for folder in (job_dir, os.path.dirname(os.path.abspath(job_dir))):
        path = os.path.join(folder, "config.json")
        if os.path.exists(path):
            with open(path) as f:
                return TrainConfig.from_json(f.read())
    raise ConfigError(f"{job_dir}: no config.json (nor in the folder above); the training settings of this model "
                      "are not here")


def read_manifest(records_dir: str) -> manifest_lib.Manifest:
    """The committed manifest of a records folder (``core.commit.read_records_manifest``).

    Raises:
        ConfigError: naming the folder, when it holds no manifest or a damaged one.
    """
    try:
        manifest = commit_lib.read_records_manifest(records_dir)
    except commit_lib.DamagedOutputError as e:
        raise ConfigError(f"--records_dir={records_dir}: {e}") from None
    if manifest is None:
        raise ConfigError(f"--records_dir={records_dir}: no manifest.json; build the records first with "
                          "`python -m pipeline.build_records --runner=DirectRunner`")
    return manifest


def make_config(*, pathology: str, records_dir: str, job_dir: str, policy: str = "", blank: str | None = None,
                **kw) -> TrainConfig:
    """Validates flag values and resolves the policy against the records' manifest.

    The policy starts from what the records were written with (manifest), then applies the
    ``--policy`` overrides; targets are recomputed in tf.data from the stored raw codes.

    Raises:
        ConfigError: naming the flag.
    """
    tasks = parse_tasks(pathology)
    manifest = read_manifest(records_dir)
    try:
        overrides = chexpert.parse_policy_overrides(policy)
        taught = set(manifest.labeller.observations if manifest.labeller else ())
        for slug, p in overrides.items():
            if p in chexpert.LABELLER_POLICIES and slug not in taught:
                raise chexpert.PolicyError(
                    f"--policy {slug}={p}: the records in {records_dir} hold no labeller targets for {slug}; build "
                    f"them with `python -m pipeline.build_records --labeller JOB_DIR --policy {slug}=self_trained`")
        resolved = dict(manifest.policy or chexpert.resolve_policies())
        resolved.update(overrides)
        blank = blank or manifest.blank
        chexpert.policy_matrix(resolved, blank)
    except chexpert.PolicyError as e:
        raise ConfigError(str(e)) from None
    cfg = TrainConfig(tasks=tasks, records_dir=records_dir, job_dir=job_dir, policy=resolved, blank=blank,
                      records_image_size=int(manifest.image_size),
                      records_encoding=manifest.encoding,
                      records_resize=manifest.options.get("resize", "squash"),
                      provenance=provenance_of(records_dir, manifest), **kw)
    checks: Sequence[tuple[bool, str]] = (
        (cfg.backbone in BACKBONES, f"--backbone={cfg.backbone}: expected one of {', '.join(BACKBONES)}"),
        (cfg.strategy in STRATEGIES, f"--strategy={cfg.strategy}: expected one of {', '.join(STRATEGIES)}"),
        (cfg.precision in PRECISIONS, f"--precision={cfg.precision}: expected one of {', '.join(PRECISIONS)}"),
        (cfg.views in VIEW_CHOICES, f"--views={cfg.views}: expected frontal or all"),
        (32 <= cfg.image_size <= 1024, f"--image_size={cfg.image_size}: expected 32..1024"),
        (cfg.image_size <= manifest.image_size,
         f"--image_size={cfg.image_size} is larger than the records' {manifest.image_size}; rebuild them"),
        (cfg.batch_size >= 1, "--batch_size must be >= 1"),
        (cfg.epochs >= 1, "--epochs must be >= 1"),
        (cfg.steps_per_epoch >= 0, "--steps_per_epoch must be >= 0"),
        (cfg.steps_per_execution >= 1, "--steps_per_execution must be >= 1"),
        (not (cfg.deterministic and cfg.jit_compile),
         "--deterministic needs --nojit_compile: XLA has no deterministic kernel for the max-pool gradient "
         "(DenseNet's stem), so TensorFlow refuses the compiled step"),
        (cfg.learning_rate > 0, "--learning_rate must be > 0"),
        (0 < cfg.threshold < 1, "--threshold must be in (0, 1)"),
        (cfg.weights in ("none", "imagenet") or os.path.exists(cfg.weights),
         f"--weights={cfg.weights}: expected none, imagenet or an existing weights file"),
        (0.0 <= cfg.distill_alpha <= 1.0, "--distill_alpha must be in [0, 1]"),
        (cfg.distill_temperature > 0, "--distill_temperature must be > 0"),
        (all(os.path.exists(os.path.join(t, "model.keras")) for t in cfg.distill_from),
         f"--distill_from: every job to distil from must be a trainer.task job folder with model.keras "
         f"({', '.join(cfg.distill_from)})"),
        (cfg.train_split in manifest.splits, f"the records have no '{cfg.train_split}' split"),
        (cfg.eval_split in manifest.splits, f"the records have no '{cfg.eval_split}' split"),
    )
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return cfg
