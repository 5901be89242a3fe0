"""Quiet start-up for the TensorFlow entry points (trainer.task, evaluate, predict, the web
demo): flags are parsed before TensorFlow is imported (so ``--help`` and a bad flag answer
at once), and TensorFlow's own start-up lines are hidden unless ``--verbose``.

An absl entry point that imports TensorFlow at module level does it from the top of the
module, before those imports::

    from absl import app, flags
    def define_flags(): ...            # absl only
    if __name__ == "__main__":
        define_flags()
        startup.begin(sys.argv)        # --help exits here; then TensorFlow, quietly
    import tensorflow as tf            # already loaded: free

TensorFlow's C++ side prints a block when it is imported and when it first looks for
devices: oneDNN notices, "Could not find cuda drivers", an error-level "failed call to
cuInit" on a CPU-only host, absl's "log messages before absl::InitializeLog()" warning, each
twice (two of its libraries log). ``TF_CPP_MIN_LOG_LEVEL`` does not reach lines logged
before absl is initialised. So for exactly those two steps the process's file descriptor 2
points at /dev/null; an exception raised there still prints, after it is restored.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


@contextlib.contextmanager
def _stderr_hidden() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def load_tensorflow(verbose: bool = False) -> None:
    """Imports TensorFlow and lets it find its devices, silently unless ``verbose``."""
    if verbose:
        import tensorflow as tf

        tf.config.list_physical_devices()
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # its later INFO/WARNING lines too
    with _stderr_hidden():
        import tensorflow as tf

        tf.config.list_physical_devices()


def begin(argv: list[str]) -> None:
    """For an absl program, before its heavy imports: parses the flags (``--help`` prints
    and exits, a bad flag prints usage and exits), then loads TensorFlow, quietly unless the
    program's ``--verbose`` flag is set. ``app.run`` parses the same flags again later."""
    from absl import app, flags

    app.define_help_flags()
    app.parse_flags_with_usage(argv)
    verbose = bool(flags.FLAGS["verbose"].value) if "verbose" in flags.FLAGS else False
    # Back to unparsed: app.run parses again, and a multi-valued flag (--job_dir a --job_dir
    # b) parsed twice would list every value twice.
    flags.FLAGS.unparse_flags()
    load_tensorflow(verbose)

