"""The Beam side of what both scheduled jobs share besides their commit (``core.commit``)
and fingerprint (``core.fingerprint``): logging, quiet local workers, runner arguments, and
the JSON-lines files a pipeline leaves for its driver (stats, dead letters).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from typing import Iterator

from apache_beam.io.filesystems import FileSystems

from core import cli, storage

log = logging.getLogger(__name__)
_log_stream = None


def configure_logging() -> None:
    """Our INFO lines, Beam's warnings; not the local workers' relayed start-up noise.

    The handler writes to its own duplicate of file descriptor 2, so that ``quiet_workers``
    can send the worker processes' output elsewhere without silencing ours.
    """
    global _log_stream
    if _log_stream is None:  # one duplicate per process, however often a job's main runs
        _log_stream = os.fdopen(os.dup(2), "w", buffering=1)
    handler = logging.StreamHandler(_log_stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # force: importing Beam has already given the root logger a handler at WARNING.
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    # Local multi-process workers relay harmless start-up warnings (unknown job flags, no
    # semi-persistent directory) through this logger.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)


@contextlib.contextmanager
def quiet_workers(verbose: bool) -> Iterator[None]:
    """Sends what local worker processes print (each logs its start-up: "Logging handler
    created", "No semi_persistent_directory found", discarded runner flags) to a temporary
    file instead of the terminal; on failure its last lines are logged, so nothing that
    explains an error is lost. ``verbose``: leave everything on the terminal."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            tail = capture.read()[-4000:].decode(errors="replace").strip()
            if tail:
                log.error("worker output before the failure (last 4000 bytes):\n%s", tail)
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def runner_args(argv: list[str]) -> list[str]:
    """Runner flags with quiet local workers unless the user set their log level, and, on
    the local runner, no attempt to fetch Prism.

    Beam's DirectRunner first tries the PrismRunner, which downloads a binary from GitHub at
    every start and falls back when that fails: offline it costs a failed lookup, behind a
    firewall that drops packets a hung connection. The DirectRunner skips Prism when a
    pipeline allows unsafe triggers; these jobs use the default trigger only, so the flag
    changes nothing else.
    """
    argv = list(argv)
    if not any(a.startswith("--default_sdk_harness_log_level") for a in argv):
        # Local multi-process workers otherwise log every gRPC channel at INFO.
        argv.append("--default_sdk_harness_log_level=WARNING")
    if cli.runner_of(argv) in cli.LOCAL_RUNNERS and "--allow_unsafe_triggers" not in argv:
        argv.append("--allow_unsafe_triggers")
    return argv


def _jsonl(paths: list[str]) -> list[dict]:
    out = []
    for path in paths:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            out.extend(json.loads(line) for line in f.read().decode().splitlines() if line.strip())
    return out


def _matching(pattern: str) -> list[str]:
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def read_jsonl(pattern: str) -> list[dict]:
    """Every JSON line of the files matching ``pattern`` (any Beam filesystem), in path order."""
    return _jsonl(_matching(pattern))


def take_jsonl(pattern: str) -> list[dict]:
    """``read_jsonl``, then deletes the files it read: a job's temporary outputs (Beam's
    WriteToText) inside its uncommitted snapshot, which the commit must not list."""
    paths = _matching(pattern)
    out = _jsonl(paths)
    storage.delete(paths)
    return out
