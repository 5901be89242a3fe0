"""Helpers shared by the benchmarks."""

from __future__ import annotations

import subprocess
import threading
import time

import psutil


def run_measured(cmd: list[str], **popen) -> tuple[float, int, str]:
    """Runs ``cmd``; returns (wall seconds, peak RSS of its process tree in bytes, output).

    Raises:
        RuntimeError: with the output's tail, if the command fails.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    stop, peak = threading.Event(), [0]

    def sample():
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.1)

    t = threading.Thread(target=sample)
    t.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    t.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{out[-4000:]}")
    return wall, peak[0], out
