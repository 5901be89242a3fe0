"""Helpers shared by the benchmarks."""

from __future__ import annotations

import subprocess
import threading
import time

import psutil


class RssLimitExceeded(RuntimeError):
    """The command's process tree passed ``rss_limit`` and was killed; ``peak`` in bytes."""

    def __init__(self, message: str, peak: int):
        super().__init__(message)
        self.peak = peak


def run_measured(cmd: list[str], rss_limit: int | None = None, **popen) -> tuple[float, int, str]:
    """Runs ``cmd``; returns (wall seconds, peak RSS of its process tree in bytes, output).

    Args:
        cmd: the command.
        rss_limit: bytes; the tree is killed once its sampled RSS passes it (on a shared
            machine, a run known to grow without bound must not take everyone's memory).
        **popen: passed to ``subprocess.Popen``.

    Raises:
        RssLimitExceeded: the tree passed ``rss_limit``.
        RuntimeError: with the output's tail, if the command fails.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    stop, peak, killed = threading.Event(), [0], threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in procs))
                if rss_limit is not None and peak[0] > rss_limit and not killed.is_set():
                    killed.set()
                    for p in reversed(procs):
                        p.kill()
            except psutil.Error:
                pass
            time.sleep(0.1)

    t = threading.Thread(target=sample)
    t.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    t.join()
    if killed.is_set():
        raise RssLimitExceeded(f"{' '.join(cmd[:4])} passed {rss_limit / 2**30:.1f} GiB RSS and was killed", peak[0])
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{out[-4000:]}")
    return wall, peak[0], out
