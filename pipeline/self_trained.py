"""U-SelfTrained as a stage of the records job (``build_records --labeller JOB_DIR``).

The CheXpert paper's policy for Consolidation: a *labeller*, a trainer.task job trained with
that observation's uncertain labels ignored, predicts every row with an uncertain
``self_trained`` label, and its P(positive) becomes the soft target of exactly those entries
(``labels/teacher`` in the record; known labels are untouched).

    check_labeller     the job folder against the policy -> its model's sha256
    labeller_targets   Beam stage: rows -> (path, [P(positive) per self_trained observation])
    labeller_vector    a row's ``labels/teacher`` from those probabilities
    relabelled_counts  entries holding a labeller value, per observation
    labeller_info      the manifest's record of the labeller
"""

from __future__ import annotations

import json
import logging
import os
import posixpath

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from core import fingerprint
from core.errors import ConfigError
from pipeline import example_builder
from schemas import chexpert
from schemas import manifest as manifest_lib

log = logging.getLogger("build_records")
NAMESPACE = "build_records"


def check_labeller(job_dir: str, policy: dict) -> str:
    """Checks a --labeller job folder against the policy; returns its model's sha256.

    Raises:
        ConfigError: a remote folder, no model, no self_trained observation, or a labeller
            that does not predict one of them.
    """
    if "://" in job_dir:
        raise ConfigError(f"--labeller={job_dir}: the labeller is loaded from a local (or mounted) folder by every "
                          "worker; copy the job folder there (e.g. into the workers' container image)")
    observations = chexpert.labelled_observations(policy)
    if not observations:
        raise ConfigError(f"--labeller={job_dir}: no observation uses the self_trained policy, so the labeller would "
                          "change nothing; add e.g. --policy=consolidation=self_trained")
    paths = {name: os.path.join(job_dir, name) for name in ("config.json", "model.keras")}
    missing = [name for name, p in paths.items() if not os.path.exists(p)]
    if missing:
        raise ConfigError(f"--labeller={job_dir}: no {' or '.join(missing)}; expected a trainer.task --job_dir "
                          "that finished training")
    with open(paths["config.json"]) as f:
        job_cfg = json.load(f)
    absent = [s for s in observations if s not in job_cfg.get("tasks", ())]
    if absent:
        raise ConfigError(f"--labeller={job_dir} predicts {', '.join(job_cfg.get('tasks', ()))} but not "
                          f"{', '.join(absent)} (self_trained here); train it with --pathology including them")
    for slug in observations:
        if job_cfg.get("policy", {}).get(slug) not in ("ignore", None):
            log.warning("--labeller=%s was trained with %s=%s; U-SelfTrained expects a labeller trained with "
                        "%s=ignore", job_dir, slug, job_cfg["policy"][slug], slug)
    return fingerprint.file_sha256(paths["model.keras"])


def labeller_vector(codes, probs, indices: tuple[int, ...]) -> np.ndarray | None:
    """A row's ``labels/teacher``: the labeller's probability at each uncertain entry of a
    self_trained observation, ``NO_LABELLER_VALUE`` everywhere else.

    Args:
        codes: the row's 14 codes.
        probs: the labeller's P(positive) per entry of ``indices`` (None: not run on the row).
        indices: observation indices under the self_trained policy.

    Returns:
        float32 (14,), or None when the row has no labeller value.
    """
    if probs is None:
        return None
    out = chexpert.no_labeller_values()
    for i, p in zip(indices, probs):
        if codes[i] == chexpert.Code.UNCERTAIN:
            out[i] = p
    return out if (out >= 0).any() else None


def relabelled_counts(vectors: list) -> dict[str, int]:
    """{slug: entries holding a labeller value} over records' ``labels/teacher`` vectors
    (None for a record without one)."""
    counts: dict[str, int] = {}
    for soft in vectors:
        for i, v in enumerate(soft or ()):
            if v >= 0:
                counts[chexpert.OBSERVATIONS[i]] = counts.get(chexpert.OBSERVATIONS[i], 0) + 1
    return counts


def needs_labeller(codes, indices: tuple[int, ...]) -> bool:
    """True when a row has an uncertain label at one of ``indices``."""
    return any(codes[i] == chexpert.Code.UNCERTAIN for i in indices)


def _labeller_image_fn(input_root: str, job_dir: str, indices: tuple[int, ...]) -> beam.DoFn:
    """The DoFn of the LabellerImages stage (built here so that Beam's ML module and the
    scoring job's loader are imported only with --labeller)."""
    from pipeline.model_handler import LoadImageFn

    class LabellerImageFn(LoadImageFn):
        """(split, (Row, source, line)) -> (path, uint8 (S, S, 1)) as the labeller saw images
        in training (the scoring job's loader: same config, same preprocessing), for rows
        with an uncertain label under the self_trained policy.

        An image that cannot be read is skipped here (counted); WriteShards meets the same
        error and dead-letters the row with its reason, so each bad row is rejected once.
        """

        def __init__(self):
            super().__init__(job_dir)
            self.skipped = Metrics.counter(NAMESPACE, "labeller_skipped_unreadable")

        def process(self, element):
            _, (row, _, _) = element
            if not needs_labeller(row.codes, indices):
                return
            try:
                data = example_builder.read_image(posixpath.join(input_root, row.path), row.path)
                yield row.path, self.model_input(data, row.path)
            except chexpert.RowError:
                self.skipped.inc()

    return LabellerImageFn()


class LabellerTargets(beam.PTransform):
    """(split, (Row, source, line)) -> (path, [P(positive) per self_trained observation])
    for the rows that need it, scored in batches by RunInference."""

    def __init__(self, input_root: str, job_dir: str, policy: dict, batch_size: int):
        super().__init__()
        self.input_root, self.job_dir, self.batch_size = input_root, job_dir, batch_size
        self.slugs = chexpert.labelled_observations(policy)

    def expand(self, rows):
        from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

        from pipeline.model_handler import ChexpertModelHandler

        slugs = self.slugs
        indices = tuple(chexpert.OBSERVATION_INDEX[s] for s in slugs)
        handler = KeyedModelHandler(ChexpertModelHandler(self.job_dir, max_batch_size=self.batch_size))
        return (rows
                | "LabellerImages" >> beam.ParDo(_labeller_image_fn(self.input_root, self.job_dir, indices))
                | "Labeller" >> RunInference(handler)
                | "ToTargets" >> beam.MapTuple(lambda path, result: (path, [result.inference[s] for s in slugs])))


def labeller_info(job_dir: str, model_sha256: str, policy: dict,
                  stats: list[manifest_lib.ShardStats]) -> manifest_lib.LabellerInfo:
    """The manifest's record of the labeller: which model, which observations, how many
    uncertain entries it relabelled per split and observation."""
    with open(os.path.join(job_dir, "config.json")) as f:
        job_cfg = json.load(f)
    slugs = chexpert.labelled_observations(policy)
    relabelled: dict = {}
    for s in stats:
        per = relabelled.setdefault(s.split, {slug: 0 for slug in slugs})
        for slug in slugs:
            per[slug] += s.relabelled.get(slug, 0)
    return manifest_lib.LabellerInfo(
        job_dir=os.path.abspath(job_dir), model_sha256=model_sha256, tasks=job_cfg.get("tasks"),
        trained_policy={s: job_cfg.get("policy", {}).get(s) for s in slugs}, observations=list(slugs),
        relabelled=relabelled)
