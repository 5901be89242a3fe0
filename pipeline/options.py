"""The two Beam jobs' own flags (``pipeline.build_records``, ``pipeline.score``), in a
module that imports no Beam: ``--help`` and a misspelt flag are answered before Beam (about a
second to import) loads. The kit they are built with (``job_parser``, ``parse_flags``, the
guard flags) is ``core.cli``.
"""

from __future__ import annotations

import argparse

from core import cli
from schemas import chexpert, sources

DEFAULT_RECORDS = "data/records"
PATIENT_OVERLAP = ("reject", "fail")


# An incremental delta of at most this many rows runs in the driver (pipeline.in_process):
# there it saves Beam's start-up (~3 s for two local workers) but writes at about one
# core's rate (threads share the GIL outside decoding), so past ~5k images the two local
# workers win. Covers a nightly +1% of CheXpert (2,234 rows; BUILD_NOTES, full_scale).
IN_PROCESS_ROWS = 5_000


def build_records_parser(doc: str, warn: bool = True) -> argparse.ArgumentParser:
    """``pipeline.build_records``' flags; ``doc`` is its module docstring (for --help).
    ``warn``: say so on stderr when a renamed flag's old name is used (``cli.add_renamed_flag``)."""
    parser = cli.job_parser("python -m pipeline.build_records", doc)
    parser.add_argument("--input_dir", default=None,
                        help="Folder holding CheXpert-v1.0-small/ or CheXpert-v1.0/ (or that folder itself), or an "
                             "NIH ChestX-ray14 or MIMIC-CXR-JPG folder (see --format). Default: ./data, else a "
                             "synthetic CheXpert sample generated in data/synthetic.")
    parser.add_argument("--format", default=None,
                        help="The dataset --input_dir holds: chexpert (train.csv/valid.csv), nih (NIH ChestX-ray14: "
                             "Data_Entry_2017.csv, images_*/images/) or mimic (MIMIC-CXR-JPG 2.x: "
                             "mimic-cxr-2.0.0-metadata.csv(.gz), files/). Default: told from the folder's files "
                             f"({'|'.join(sources.FORMATS)}).")
    parser.add_argument("--output_dir", default=DEFAULT_RECORDS, help="Where shards and manifest.json go.")
    parser.add_argument("--image_size", type=int, default=320, help="Side of the stored square image, pixels.")
    parser.add_argument("--resize", default="squash", help="squash (as the seed's target_size), crop or pad.")
    parser.add_argument("--policy", default="",
                        help="Uncertainty policy overrides, e.g. atelectasis=ones,cardiomegaly=multiclass. "
                             f"Policies: {', '.join(chexpert.POLICIES)}.")
    parser.add_argument("--blank", default="negative", help="Blank labels: negative (default) or ignore.")
    parser.add_argument("--holdout_fraction", type=float, default=0.0,
                        help="Patient-level fraction of train.csv kept apart as 'holdout' for tuning.")
    parser.add_argument("--num_shards", type=int, default=0,
                        help="Shards per split; 0 picks from --shard_size_mb and --min_shards.")
    parser.add_argument("--shard_size_mb", type=float, default=256.0, help="Target shard size when --num_shards=0.")
    parser.add_argument("--min_shards", type=int, default=4,
                        help="At least this many shards per split (parallel writers), rows permitting.")
    parser.add_argument("--encoding", default="raw",
                        help="Stored pixels: raw (lossless, default, fastest), png (lossless, ~35%% smaller) "
                             "or jpeg (lossy, q=95).")
    parser.add_argument("--seed", type=int, default=0, help="Seeds the label-smoothing draws.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Rebuild and replace the committed output whatever it holds (also when nothing "
                             "changed, or it is damaged).")
    parser.add_argument("--incremental", action="store_true",
                        help="Encode only rows whose image (size, mtime) or CSV cells are new or changed; keep "
                             "the committed shards for the rest (same options required, else a full rebuild).")
    parser.add_argument("--in_process_rows", type=int, default=IN_PROCESS_ROWS,
                        help="--incremental on a local runner: a delta of at most this many rows runs in this "
                             "process (the job's own DoFns, threads for the shards) instead of starting the Beam "
                             "runner and its workers; 0 always starts Beam. The records are the same either way.")
    parser.add_argument("--labeller", default="",
                        help="A trainer.task job folder (model.keras) whose P(positive) becomes the target of "
                             "every uncertain label under the self_trained policy (U-SelfTrained).")
    parser.add_argument("--labeller_batch_size", type=int, default=32, help="RunInference batch for --labeller.")
    cli.add_renamed_flag(parser, "--teacher", "--labeller", warn=warn)
    cli.add_renamed_flag(parser, "--teacher_batch_size", "--labeller_batch_size", warn=warn)
    parser.add_argument("--sample_patients", type=int, default=1000,
                        help="Train patients of the synthetic sample generated when no data is found.")
    cli.add_guard_flags(parser, inputs="CSV rows", outputs="records",
                    why=" (an unmounted image folder rejects them all)")
    parser.add_argument("--patient_overlap", default="reject",
                        help="A train.csv row whose patient also appears in valid.csv (valid-set leakage), or an "
                             "NIH/MIMIC image whose patient also has images on the dataset's test (or validate) "
                             "list: reject (dead letter patient_in_valid / patient_in_test, the default) or fail "
                             "(stop before any work).")
    parser.add_argument("--verbose", action="store_true",
                        help="Show the local worker processes' own start-up and log lines (hidden by default).")
    return parser


def score_parser(doc: str) -> argparse.ArgumentParser:
    """``pipeline.score``'s flags; ``doc`` is its module docstring (for --help)."""
    parser = cli.job_parser("python -m pipeline.score", doc)
    parser.add_argument("--job_dir", default="jobs/atelectasis", help="trainer.task job folder (the model).")
    parser.add_argument("--model_format", default="keras", help="keras (model.keras) or saved_model.")
    parser.add_argument("--input_pattern", default=None,
                        help="Image files to score: glob(s), comma-separated ('**' recurses), or a folder (every "
                             "JPEG, PNG and DICOM file below it).")
    parser.add_argument("--csv", default=None, help="A CheXpert-format CSV listing the inputs instead.")
    parser.add_argument("--input_dir", default=None,
                        help="A dataset folder whose label file lists the inputs instead: NIH ChestX-ray14 or "
                             "MIMIC-CXR-JPG (every row; views from its ViewPosition, studies.csv by its studies), "
                             "or CheXpert (the images its train.csv and valid.csv list).")
    parser.add_argument("--format", default=None, choices=("chexpert", "nih", "mimic"),
                        help="The --input_dir's dataset (default: detected from its files).")
    parser.add_argument("--image_root", default=None,
                        help="Folder the CSV's Path column is relative to (default: the CSV's dataset root).")
    parser.add_argument("--output_dir", default="data/scores", help="Where scores and manifest.json go.")
    parser.add_argument("--threshold", type=float, default=None, help="Decision threshold (default: the model's).")
    parser.add_argument("--batch_size", type=int, default=64, help="Largest RunInference batch.")
    parser.add_argument("--incremental", action="store_true",
                        help="Score only new or changed inputs; carry the rest over from the committed run.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Score everything anew and replace the committed output whatever it holds (also when "
                             "nothing changed, or it is damaged).")
    cli.add_guard_flags(parser, inputs="inputs", outputs="scores")
    parser.add_argument("--verbose", action="store_true",
                        help="Show TensorFlow's and the worker processes' own start-up lines (hidden by default).")
    return parser
