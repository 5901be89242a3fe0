"""The records job's settings: flags turned into a validated ``BuildConfig``, and the input
folder found (a CheXpert copy, or the synthetic sample generated when there is none).

    make_config        flags -> BuildConfig, or ConfigError naming the flag
    configure          the same, and the NIH/MIMIC dataset found (``core.datasets``; None for CheXpert)
    find_dataset_root  the folder the CSVs' Path cells are relative to
    default_input      ./data if it holds CheXpert, else data/synthetic (generated once)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import posixpath

import numpy as np
from apache_beam.io.filesystems import FileSystems

from core import commit as commit_lib
from core import datasets, imaging
from core.errors import ConfigError
from pipeline import example_builder
from pipeline import make_sample
from pipeline import options as job_options
from pipeline import self_trained
from schemas import chexpert, sources

log = logging.getLogger("build_records")
DEFAULT_DATA = "data"
SYNTHETIC_DIR = "data/synthetic"
DATASET_DIRS = (make_sample.DATASET_DIR, make_sample.DATASET_DIR_FULL)
SOURCES = (("train.csv", "train"), ("valid.csv", "valid"))  # (CSV name, the split its rows go to)

# The manifest's ``options`` name the labeller settings as the flag was first called
# (``--teacher``): an incremental run compares them with the committed manifest's.
_MANIFEST_NAMES = {"labeller": "teacher", "labeller_sha256": "teacher_sha256",
                   "labeller_batch_size": "teacher_batch_size"}
# How a run treats existing output, not what it writes: left out of comparisons.
_TRANSIENT_OPTIONS = ("overwrite", "incremental", "max_reject_fraction", "max_shrink_fraction", "verbose")
# Where the data is, not what the records are: the output folder is the one whose manifest is
# read, and the input folder may be spelled another way (relative, absolute, through a link)
# or moved with its files. The input fingerprint and an incremental run's comparison leave
# them out (each kept row's cells digest and image size and mtime are checked anyway).
LOCATION_OPTIONS = ("input_dir", "output_dir")


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """Validated job settings (what the manifest records as ``options``)."""

    input_dir: str
    output_dir: str
    image_size: int
    resize: str
    policy: dict
    blank: str
    holdout_fraction: float
    num_shards: int
    shard_size_mb: float
    min_shards: int
    encoding: str
    seed: int
    overwrite: bool
    synthetic: bool
    incremental: bool = False
    labeller: str = ""  # U-SelfTrained labeller's job folder; "" = none
    labeller_sha256: str = ""  # of its model.keras: a retrained labeller is a changed input
    labeller_batch_size: int = 32
    max_reject_fraction: float = 0.05
    max_shrink_fraction: float = 0.05
    patient_overlap: str = "reject"
    verbose: bool = False
    format: str = sources.CHEXPERT  # the dataset input_dir holds (schemas.sources.FORMATS)

    @property
    def table(self) -> np.ndarray:
        """float32 (14, 4, 4): the policy as a lookup table (``chexpert.policy_matrix``)."""
        return chexpert.policy_matrix(self.policy, self.blank)

    @property
    def labeller_indices(self) -> tuple[int, ...]:
        """Observation indices whose uncertain entries take the labeller's probability."""
        if not self.labeller:
            return ()
        return tuple(chexpert.OBSERVATION_INDEX[s] for s in chexpert.labelled_observations(self.policy))

    def example_settings(self) -> example_builder.ExampleSettings:
        return example_builder.ExampleSettings(self.image_size, self.resize, self.encoding, self.table, self.seed)

    @property
    def external(self) -> bool:
        """True for an NIH or MIMIC input (``core.datasets``), False for CheXpert's CSVs."""
        return self.format != sources.CHEXPERT

    def manifest_options(self) -> dict:
        """The manifest's ``options``: every setting but the policy (recorded on its own).
        ``format`` only for an external dataset: a CheXpert build's options (and so its
        fingerprint, and an incremental run's comparison) are what they were before the flag."""
        options = dataclasses.asdict(self)
        options.pop("policy")
        if not self.external:
            options.pop("format")
        return {_MANIFEST_NAMES.get(k, k): v for k, v in options.items()}


def output_options(options: dict) -> dict:
    """The manifest ``options`` that determine the records (less the transient ones)."""
    return {k: v for k, v in options.items() if k not in _TRANSIENT_OPTIONS}


def find_dataset_root(input_dir: str) -> str:
    """The folder that CSV paths (``CheXpert-v1.0-small/train/...``) are relative to.

    Accepts the folder holding the dataset or the dataset folder itself.

    Raises:
        ConfigError: neither holds train.csv or valid.csv.
    """
    if FileSystems.exists(posixpath.join(input_dir, "train.csv")) or FileSystems.exists(
        posixpath.join(input_dir, "valid.csv")
    ):
        return posixpath.dirname(input_dir.rstrip("/")) or "."
    for name in DATASET_DIRS:
        if FileSystems.exists(posixpath.join(input_dir, name, "train.csv")) or FileSystems.exists(
            posixpath.join(input_dir, name, "valid.csv")
        ):
            return input_dir
    raise ConfigError(
        f"--input_dir={input_dir}: no train.csv or valid.csv in it or in {' or '.join(DATASET_DIRS)}/ under it"
    )


def dataset_dir(root: str) -> str:
    """The dataset folder under ``root`` (``CheXpert-v1.0-small``), or ``root`` itself."""
    for name in DATASET_DIRS:
        if FileSystems.exists(posixpath.join(root, name)):
            return posixpath.join(root, name)
    return root


def default_input(sample_patients: int) -> tuple[str, bool]:
    """``(input folder, synthetic)``: ./data if it holds CheXpert; else a synthetic sample
    (generated once, with ``sample_patients`` train patients)."""
    for name in DATASET_DIRS:
        if os.path.exists(os.path.join(DEFAULT_DATA, name, "train.csv")):
            log.info("using the CheXpert copy in %s", os.path.join(DEFAULT_DATA, name))
            return DEFAULT_DATA, False
    if os.path.exists(os.path.join(SYNTHETIC_DIR, make_sample.DATASET_DIR, "train.csv")):
        log.warning("No CheXpert under ./%s: using the synthetic sample in %s", DEFAULT_DATA, SYNTHETIC_DIR)
    else:
        log.warning("No CheXpert under ./%s: generating a synthetic sample (%d train patients) in %s",
                    DEFAULT_DATA, sample_patients, SYNTHETIC_DIR)
        make_sample.generate(SYNTHETIC_DIR, num_patients=sample_patients)
    return SYNTHETIC_DIR, True


def find_input(input_dir: str, fmt: str | None) -> tuple[str, str, datasets.Dataset | None]:
    """``(folder, format, dataset)`` for ``--input_dir`` and ``--format`` (None: told from
    the folder). CheXpert: the folder its CSVs' paths are relative to (``find_dataset_root``,
    exactly as before the flag), no dataset; NIH/MIMIC: the dataset folder and its
    ``core.datasets.Dataset``.

    Raises:
        ConfigError: naming the folder, and ``--format`` when it was given: the folder holds
            no dataset, several, or not the format given.
    """
    if fmt is not None and fmt not in sources.FORMATS:
        raise ConfigError(f"--format={fmt}: expected one of {', '.join(sources.FORMATS)}")
    if fmt == sources.CHEXPERT:
        try:
            return find_dataset_root(input_dir), fmt, None
        except ConfigError as e:
            raise ConfigError(f"--format=chexpert: {e}") from None
    if fmt is None:
        try:
            return find_dataset_root(input_dir), sources.CHEXPERT, None
        except ConfigError as chexpert_error:
            try:
                found = datasets.find_dataset(input_dir, None)  # its error names every format's files
            except ConfigError as e:
                said = str(e)  # "FOLDER: ...": said as the flag's value
                raise ConfigError(f"--input_dir={said}" if said.startswith(input_dir)
                                  else f"--input_dir={input_dir}: {said}") from None
            if found is None:
                raise chexpert_error from None
            return found.folder, found.format, found
    found = datasets.find_dataset(input_dir, fmt)
    if found is None:  # find_dataset answers only "chexpert" with None
        raise ConfigError(f"--format={fmt}: {input_dir} holds CheXpert's train.csv/valid.csv")
    return found.folder, found.format, found


def make_config(opts: argparse.Namespace) -> BuildConfig:
    """Turns flags (``pipeline.options.build_records_parser``) into a validated config.

    Raises:
        ConfigError: naming the flag.
    """
    return configure(opts)[0]


def configure(opts: argparse.Namespace) -> tuple[BuildConfig, datasets.Dataset | None]:
    """``make_config``, and the NIH/MIMIC dataset it found (None for CheXpert): the driver
    lists its rows without finding it (listing its images) a second time.

    Raises:
        ConfigError: naming the flag.
    """
    if opts.image_size < 16 or opts.image_size > 4096:
        raise ConfigError(f"--image_size={opts.image_size}: expected 16..4096")
    if opts.resize not in imaging.RESIZE_MODES:
        raise ConfigError(f"--resize={opts.resize}: expected one of {', '.join(imaging.RESIZE_MODES)}")
    if opts.encoding not in imaging.ENCODINGS:
        raise ConfigError(f"--encoding={opts.encoding}: expected one of {', '.join(imaging.ENCODINGS)}")
    if not 0.0 <= opts.holdout_fraction < 1.0:
        raise ConfigError(f"--holdout_fraction={opts.holdout_fraction}: expected 0 <= f < 1")
    if opts.num_shards < 0 or opts.min_shards < 1 or opts.shard_size_mb <= 0:
        raise ConfigError("--num_shards must be >= 0, --min_shards >= 1 and --shard_size_mb > 0")
    try:
        policy = chexpert.resolve_policies(chexpert.parse_policy_overrides(opts.policy),
                                           have_labeller=bool(opts.labeller))
        chexpert.policy_matrix(policy, opts.blank)
    except chexpert.PolicyError as e:
        raise ConfigError(str(e)) from None
    labeller_sha256 = self_trained.check_labeller(opts.labeller, policy) if opts.labeller else ""
    if opts.labeller_batch_size < 1:
        raise ConfigError("--labeller_batch_size must be >= 1")
    if opts.patient_overlap not in job_options.PATIENT_OVERLAP:
        raise ConfigError(f"--patient_overlap={opts.patient_overlap}: expected one of "
                          f"{', '.join(job_options.PATIENT_OVERLAP)}")
    try:
        commit_lib.check_output_dir(opts.output_dir)
    except commit_lib.OutputError as e:
        raise ConfigError(str(e)) from None
    fmt = getattr(opts, "format", None)
    synthetic = False
    input_dir = opts.input_dir
    if input_dir is None:
        if fmt not in (None, sources.CHEXPERT):
            raise ConfigError(f"--format={fmt} needs --input_dir (the folder holding the dataset); without it the "
                              "job builds CheXpert's ./data or a synthetic CheXpert sample")
        input_dir, synthetic = default_input(opts.sample_patients)
    root, fmt, dataset = find_input(input_dir, fmt)
    if dataset is not None and opts.labeller:
        raise ConfigError(f"--labeller: U-SelfTrained relabels CheXpert's uncertain labels; not supported with "
                          f"--format={fmt} (build the {fmt} records without it)")
    # The synthetic sets' hidden truth: beside CheXpert's folder; above an NIH/MIMIC one
    # (pipeline.make_external writes it next to the dataset folder).
    synthetic = synthetic or any(FileSystems.exists(posixpath.join(folder, make_sample.TRUTH_FILE))
                                 for folder in ((root, posixpath.dirname(root.rstrip("/")) or ".")
                                                if dataset is not None else (root,)))
    return BuildConfig(
        input_dir=root, output_dir=opts.output_dir, image_size=opts.image_size, resize=opts.resize,
        policy=policy, blank=opts.blank, holdout_fraction=opts.holdout_fraction, num_shards=opts.num_shards,
        shard_size_mb=opts.shard_size_mb, min_shards=opts.min_shards, encoding=opts.encoding, seed=opts.seed,
        overwrite=opts.overwrite, synthetic=synthetic, incremental=opts.incremental,
        labeller=opts.labeller, labeller_sha256=labeller_sha256, labeller_batch_size=opts.labeller_batch_size,
        max_reject_fraction=opts.max_reject_fraction, max_shrink_fraction=opts.max_shrink_fraction,
        patient_overlap=opts.patient_overlap, verbose=opts.verbose, format=fmt,
    ), dataset
