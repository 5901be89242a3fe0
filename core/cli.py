"""The command-line kit every entry point shares, with no Beam and no TensorFlow import:
``--help`` and a misspelt flag are answered before either (seconds to import) loads.

    job_parser       a Beam job's own flags: ``--help`` shows defaults and the run commands
    parse_flags      job flags vs runner flags; a typo is an error on a local runner
    runner_of        the ``--runner`` a command line asks for
    fraction         argparse type: a number in [0, 1]
    add_guard_flags  ``--max_reject_fraction`` / ``--max_shrink_fraction`` (``core.commit``)
    add_renamed_flag a renamed flag's old name, still accepted, with a warning
    one_line         an unexpected exception as the one line an entry point prints
    unexpected       an entry point's last except clause: that line, exit 1 (re-raised with --verbose)
    require_extra    a command that needs a pip extra says which, in one line, when it is missing
"""

from __future__ import annotations

import argparse
import importlib.util
import difflib
import sys
from typing import Sequence

LOCAL_RUNNERS = ("DirectRunner", "SwitchingDirectRunner")


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
    install does not. Beam's options are imported here, once the job's own flags parsed.
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


def one_line(e: BaseException) -> str:
    """An unexpected exception as the one line an entry point prints instead of a traceback
    (which ``--verbose`` shows). Beam wraps a worker's error as ``RuntimeError: OSError:
    [Errno 28] ... [while running 'WriteShards']``; the first line says it all."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def add_renamed_flag(parser: argparse.ArgumentParser, old: str, new: str, *, warn: bool = True) -> None:
    """Keeps accepting ``old``, a flag renamed to ``new`` (already added), for a release:
    it sets ``new``'s value and says so on stderr, one line
    (``prog: warning: --teacher is deprecated; use --labeller``). Both names on one command
    line are an error (exit 2), whichever comes first: one of them would be ignored.

    Args:
        warn: False for a parse whose flags are parsed again later (an entry point's early
            ``--help`` check), so the warning is printed once.
    """
    target = next(a for a in parser._actions if new in a.option_strings)
    seen = f"_given_{target.dest}"  # which name set the value, on the namespace being parsed

    def _claim(parser, namespace, name):
        other = getattr(namespace, seen, None)
        if other is not None and other != name:
            parser.error(f"{old} is the deprecated name of {new}: give {new} only")
        setattr(namespace, seen, name)

    class _New(type(target)):
        def __call__(self, parser, namespace, values, option_string=None):
            _claim(parser, namespace, new)
            super().__call__(parser, namespace, values, option_string)

    class _Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            _claim(parser, namespace, old)
            if warn:
                print(f"{parser.prog}: warning: {old} is deprecated; use {new}", file=sys.stderr)
            setattr(namespace, target.dest, values)

    target.__class__ = _New
    parser.add_argument(old, action=_Renamed, dest=target.dest, type=target.type, default=argparse.SUPPRESS,
                        help=f"Deprecated: the old name of {new}.")


def unexpected(prog: str, e: BaseException, verbose: bool, consequence: str = "") -> int:
    """An entry point's last ``except Exception``: the error as one line on stderr
    (``prog: error: <one_line(e)><consequence>``) and exit status 1; with ``verbose`` the
    exception itself is raised again, traceback and all.

    Args:
        consequence: appended to the line, e.g. ``"; nothing committed"``.
    """
    print(f"{prog}: error: {one_line(e)}{consequence}", file=sys.stderr)
    if verbose:
        raise e
    return 1

# What each extra of setup.cfg brings, by the import names the commands need.
EXTRAS = {
    "serving": ("tensorflow", "keras", "matplotlib"),
    "train": ("tensorflow", "keras", "matplotlib", "absl", "sklearn", "tensorboard"),
    "web": ("tensorflow", "keras", "matplotlib", "fastapi", "uvicorn", "python_multipart"),
}


def missing_extra(extra: str) -> str | None:
    """What to say when ``extra`` (``EXTRAS``) is not installed here, else None.

    ``pip install .`` is the Beam side only; a command of another layer must say what to
    install, not crash on an import with a traceback (or, for a Beam job, only once its
    workers run).
    """
    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return f"{', '.join(missing)} not installed; this needs the [{extra}] extra: pip install '.[{extra}]'"


def require_extra(extra: str, prog: str) -> None:
    """For an entry point, before its imports: exits 2 with one line when ``extra`` is
    missing (``missing_extra``).

    Raises:
        SystemExit: 2, after printing ``prog: error: ...`` naming the modules and the extra.
    """
    problem = missing_extra(extra)
    if problem:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        raise SystemExit(2)
