r"""The web demo's memory under concurrent uploads of the largest image it accepts.

    python -m benchmarks.webdemo_load --job_dir JOB [--requests 3] [--max_concurrent 2]

Starts ``python -m webdemo.app`` on a free port, sends ``--requests`` uploads at once of an
8,944 x 8,944 16-bit PNG (80 Mpx, the pixel cap; 0.7 MB on disk, so within the upload
limit), and prints each response's status and the server's peak RSS, sampled every 0.05 s,
over its RSS when idle. (The outside tester's report: 3 such requests took it to 7.0 GB.)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import psutil

from tests import decode_peak, images


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job_dir", required=True, help="A trainer.task job folder for the demo to load.")
    parser.add_argument("--requests", type=int, default=3, help="Uploads sent at the same time.")
    parser.add_argument("--max_concurrent", type=int, default=None,
                        help="Passed to the demo (default: the demo's own default).")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        png = os.path.join(tmp, "big.png")
        images.write_png16(png, decode_peak.MAX_SIDE, decode_peak.MAX_SIDE)
        with open(png, "rb") as f:
            data = f.read()
        port = _free_port()
        cmd = [sys.executable, "-m", "webdemo.app", f"--job_dir={args.job_dir}", f"--port={port}"]
        if args.max_concurrent:
            cmd.append(f"--max_concurrent={args.max_concurrent}")
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.time() + 120
            while True:
                try:
                    httpx.get(f"{url}/api/info", timeout=1)
                    break
                except httpx.TransportError:
                    if time.time() > deadline or server.poll() is not None:
                        raise RuntimeError("the demo did not start") from None
                    time.sleep(0.2)
            proc = psutil.Process(server.pid)
            idle = proc.memory_info().rss
            peak, stop = [idle], threading.Event()

            def sample():
                while not stop.is_set():
                    peak[0] = max(peak[0], proc.memory_info().rss)
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample)
            sampler.start()

            def post(_):
                r = httpx.post(f"{url}/api/predict", files={"file": ("big.png", data, "image/png")}, timeout=300)
                return r.status_code

            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.requests) as pool:
                statuses = list(pool.map(post, range(args.requests)))
            wall = time.perf_counter() - start
            stop.set()
            sampler.join()
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"statuses {statuses}, {wall:.1f} s; server RSS idle {idle / 2**20:,.0f} MiB, "
          f"peak {peak[0] / 2**20:,.0f} MiB (+{(peak[0] - idle) / 2**20:,.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
