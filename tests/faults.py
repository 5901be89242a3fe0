"""Fault injection at every mutating step of ``core.storage``, the one filesystem layer
the jobs write through.

A step is one of: ``create`` (before a file is opened for writing), ``close`` (a written file
is finished; a fault here leaves it half written, as a full disk does), ``rename``,
``delete``, ``mkdirs``. ``Faults(at=i, mode=...)`` lets steps ``0 .. i-1`` happen and then:

* ``enospc``: step ``i`` raises ``OSError(ENOSPC)``; later steps succeed (space freed, or a
  clean-up that needs none), so the job's own error handling runs;
* ``kill``: step ``i`` raises ``Killed`` (a BaseException, which no ``except Exception`` in
  the jobs catches) and so does every later step, in any thread: like ``kill -9``, nothing
  the process tries afterwards reaches the disk;
* ``sigkill``: the process sends itself SIGKILL at step ``i`` (run it in a subprocess,
  see ``bootstrap``).

``Faults(at=None)`` only counts, to learn how many steps a clean run takes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading

from core import storage


class Killed(BaseException):
    """A simulated kill: the process is gone from this step on."""


class _Writer:
    """A file opened by ``storage.create`` whose ``close`` is a step."""

    def __init__(self, faults: "Faults", path: str, f):
        self._faults, self._path, self._f = faults, path, f

    def write(self, data):
        return self._f.write(data)

    def close(self):
        try:
            self._faults.step("close", self._path, on_fault=self._half_written)
        finally:
            if not self._f.closed:
                self._f.close()

    def _half_written(self):
        # What a full disk leaves: the start of the file, not all of it.
        self._f.flush()
        size = storage.size(self._path) or 0
        self._f.close()
        if not storage.is_remote(self._path):
            os.truncate(self._path, size // 2)

    @property
    def closed(self):
        return self._f.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Faults:
    """Counts the mutating storage steps of a run and injects one fault (see module doc).

    Attributes:
        steps: ``[(kind, path), ...]`` in the order they were attempted.
        fired: whether the fault happened.
    """

    def __init__(self, at: int | None = None, mode: str = "kill"):
        assert mode in ("kill", "enospc", "sigkill")
        self.at, self.mode = at, mode
        self.steps: list[tuple[str, str]] = []
        self.fired = False
        self._dead = False
        self._lock = threading.Lock()

    def step(self, kind: str, path: str, on_fault=None) -> None:
        with self._lock:
            i = len(self.steps)
            self.steps.append((kind, path))
            if self._dead:
                raise Killed(f"step {i} ({kind} {path}) after the kill")
            if self.at is None or i != self.at:
                return
            self.fired = True
            if self.mode == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.mode == "kill":
                self._dead = True
        if on_fault:
            on_fault()
        if self.mode == "kill":
            raise Killed(f"killed at step {i}: {kind} {path}")
        raise OSError(errno.ENOSPC, f"No space left on device (injected at step {i}: {kind})", path)

    @contextlib.contextmanager
    def installed(self):
        """Routes core.storage's mutating functions through ``step`` for the duration."""
        real = {name: getattr(storage, name) for name in ("create", "rename", "delete", "mkdirs")}

        def create(path):
            self.step("create", path)
            return _Writer(self, path, real["create"](path))

        def rename(src, dst):
            self.step("rename", dst)
            real["rename"](src, dst)

        def delete(paths):
            for p in paths:  # one step per entry: a kill can land between two deletions
                self.step("delete", p)
                real["delete"]([p])

        def mkdirs(path):
            self.step("mkdirs", path)
            real["mkdirs"](path)

        patched = {"create": create, "rename": rename, "delete": delete, "mkdirs": mkdirs}
        for name, fn in patched.items():
            setattr(storage, name, fn)
        try:
            yield self
        finally:
            for name, fn in real.items():
                setattr(storage, name, fn)


def bootstrap(at: int, module: str, argv: list[str]) -> str:
    """Python source for ``python -c``: runs ``module.main(argv)`` with a real SIGKILL at
    storage step ``at``."""
    return ("import sys; from tests.faults import Faults; from " + module + " import main\n"
            f"with Faults(at={at}, mode='sigkill').installed():\n"
            f"    sys.exit(main({argv!r}))\n")
