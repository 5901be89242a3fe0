"""The Beam jobs' command-line flags, in a module that imports no Beam: ``--help`` and a
misspelt flag are answered before Beam (about a second to import) loads.

Each job's own flags are an argparse parser (``--help`` lists each with its default and the
module docstring's run commands); ``parse_flags`` hands every other flag to the runner and,
on a local runner, refuses one that neither the job nor any Beam options class knows.
"""

from __future__ import annotations

import argparse
import difflib
from typing import Sequence

from schemas import chexpert

LOCAL_RUNNERS = ("DirectRunner", "SwitchingDirectRunner")
DEFAULT_RECORDS = "data/records"
PATIENT_OVERLAP = ("reject", "fail")


def job_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The parser of a job's own flags: ``--help`` shows each with its default, and the
    module docstring's run commands as the epilogue."""
    first, _, rest = doc.strip().partition("\n\n")
    return _JobParser(prog=prog, description=first, epilog=rest, formatter_class=_HelpFormatter, allow_abbrev=False)


class _JobParser(argparse.ArgumentParser):
    """An error is one line (``prog: error: ...``), not the whole usage block above it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag's help; the epilogue's command lines kept as written."""


def runner_of(argv: Sequence[str]) -> str:
    """The ``--runner`` in ``argv`` (``DirectRunner`` when none is given, as Beam runs)."""
    runner = "DirectRunner"
    for i, a in enumerate(argv):
        if a.startswith("--runner="):
            runner = a.split("=", 1)[1]
        elif a == "--runner" and i + 1 < len(argv):
            runner = argv[i + 1]
    return runner


def parse_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Splits ``argv`` into the job's flags (parsed by ``parser``) and the runner's.

    On a local runner, a flag that neither the job nor any Beam option knows is an error
    (exit 2, with the closest known flag): a typo such as ``--image_sise=256`` must not be
    dropped with a warning while the job builds at the default. Remote runners (Dataflow,
    Flink, Spark) get the rest as given, since their services may know options this Beam
    install does not.
    """
    opts, rest = parser.parse_known_args(list(argv))
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, _BeamArgumentParser

    runner = runner_of(rest)
    names = {n.lower(): n for n in StandardOptions.KNOWN_RUNNER_NAMES}
    if "." not in runner and runner.lower() not in names and runner.lower() + "runner" not in names:
        close = difflib.get_close_matches(runner, list(names.values()), n=1, cutoff=0.6)
        parser.error(f"--runner={runner}: not a Beam runner" + (f"; did you mean {close[0]}?" if close else
                                                                  f" ({', '.join(names.values())})"))
    if runner not in LOCAL_RUNNERS:
        return opts, rest

    beam_parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(beam_parser)  # what PipelineOptions.get_all_options parses
    _, unknown = beam_parser.parse_known_args(rest)
    if unknown:
        flag = unknown[0].split("=", 1)[0]
        known = [s for a in parser._actions + beam_parser._actions for s in a.option_strings if s.startswith("--")]
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else f"; see {parser.prog} --help"
        parser.error(f"unrecognized argument {unknown[0]!r}{hint}")
    return opts, rest


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1] (nan refused)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: expected a fraction in [0, 1]")
    return value


def add_guard_flags(parser: argparse.ArgumentParser, *, inputs: str, outputs: str, why: str = "") -> None:
    """The mass-loss guards both jobs take (``core.commit.check_rejected`` / ``check_shrink``)."""
    parser.add_argument("--max_reject_fraction", type=fraction, default=0.05,
                        help=f"Fail and commit nothing when more than this fraction of {inputs} is rejected{why}.")
    parser.add_argument("--max_shrink_fraction", type=fraction, default=0.05,
                        help=f"Fail and commit nothing when the run would hold more than this fraction fewer {outputs} "
                             "than the committed output; 1 accepts any shrink.")


def build_records_parser(doc: str) -> argparse.ArgumentParser:
    """``pipeline.build_records``' flags; ``doc`` is its module docstring (for --help)."""
    parser = job_parser("python -m pipeline.build_records", doc)
    parser.add_argument("--input_dir", default=None,
                        help="Folder holding CheXpert-v1.0-small/ or CheXpert-v1.0/ (or that folder itself). "
                             "Default: ./data, else a synthetic sample generated in data/synthetic.")
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
    parser.add_argument("--teacher", default="",
                        help="A trainer.task job folder (model.keras) whose P(positive) becomes the target of "
                             "every uncertain label under the self_trained policy (U-SelfTrained).")
    parser.add_argument("--teacher_batch_size", type=int, default=32, help="RunInference batch for --teacher.")
    parser.add_argument("--sample_patients", type=int, default=1000,
                        help="Train patients of the synthetic sample generated when no data is found.")
    add_guard_flags(parser, inputs="CSV rows", outputs="records",
                    why=" (an unmounted image folder rejects them all)")
    parser.add_argument("--patient_overlap", default="reject",
                        help="A train.csv row whose patient also appears in valid.csv (valid-set leakage): "
                             "reject (dead letter patient_in_valid, the default) or fail (stop before any work).")
    parser.add_argument("--verbose", action="store_true",
                        help="Show the local worker processes' own start-up and log lines (hidden by default).")
    return parser


def score_parser(doc: str) -> argparse.ArgumentParser:
    """``pipeline.score``'s flags; ``doc`` is its module docstring (for --help)."""
    parser = job_parser("python -m pipeline.score", doc)
    parser.add_argument("--job_dir", default="jobs/atelectasis", help="trainer.task job folder (the model).")
    parser.add_argument("--model_format", default="keras", help="keras (model.keras) or saved_model.")
    parser.add_argument("--input_pattern", default=None,
                        help="Image files to score: glob(s), comma-separated ('**' recurses), or a folder (every "
                             "JPEG, PNG and DICOM file below it).")
    parser.add_argument("--csv", default=None, help="A CheXpert-format CSV listing the inputs instead.")
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
    add_guard_flags(parser, inputs="inputs", outputs="scores")
    parser.add_argument("--verbose", action="store_true",
                        help="Show TensorFlow's and the worker processes' own start-up lines (hidden by default).")
    return parser
