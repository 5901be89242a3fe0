r"""Peak memory of preprocessing one image, measured in a fresh process.

    python -m tests.decode_peak FILE [FILE...]       # one child process per file
    python -m tests.decode_peak --make DIR           # writes the largest images the caps
                                                     # accept into DIR, then measures them

Each file is preprocessed (``core.imaging.preprocess`` to 320 px, the records job's
call) in a child process, which prints one JSON line: the increase of its peak RSS over the
RSS it had with the file's bytes already read and every module imported. The input bytes
are the caller's, so they are not counted; everything the decoder allocates is.

Linux only: the peak is the kernel's VmHWM, reset just before decoding by writing 5 to
/proc/self/clear_refs. (``getrusage``'s ru_maxrss would not do: Linux carries it over
``fork`` and ``exec``, so a child of a big parent starts with the parent's peak.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

# The largest square the pixel cap accepts: 8,944^2 = 79,995,136 <= MAX_PIXELS = 80,000,000.
MAX_SIDE = 8944
CASES = {
    "png16_80mpx.png": "16-bit PNG",
    "dicom16_80mpx.dcm": "16-bit DICOM, rescale + window + MONOCHROME1",
    "float_80mpx.tif": "32-bit float TIFF (deflate)",
}


def _child(path: str) -> dict:
    import pydicom.pixels  # noqa: F401  imported before the baseline: a module is not the image

    from core import imaging

    with open(path, "rb") as f:
        data = f.read()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = _status_kib("VmRSS")
    start = time.perf_counter()
    out = imaging.preprocess(data, os.path.basename(path), 320)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return {"file": os.path.basename(path), "peak_increase_mb": round((peak - base) / 1024, 1),
            "seconds": round(seconds, 2), "shape": list(out.shape)}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure(path: str) -> dict:
    """Runs the child on ``path``; returns its JSON result (raises with its output if it fails)."""
    proc = subprocess.run([sys.executable, "-m", "tests.decode_peak", "--child", path], capture_output=True,
                          text=True, check=False, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if proc.returncode:
        raise RuntimeError(f"decode_peak {path} failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make(folder: str) -> list[str]:
    """Writes the largest accepted images (see CASES) into ``folder``; returns their paths."""
    from tests import images

    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, name) for name in CASES]
    images.write_png16(paths[0], MAX_SIDE, MAX_SIDE)
    images.write_dicom16(paths[1], MAX_SIDE, MAX_SIDE)
    images.write_float_tiff(paths[2], MAX_SIDE, MAX_SIDE)
    return paths


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        print(json.dumps(_child(argv[1])))
        return 0
    paths = make(argv[1]) if argv[:1] == ["--make"] else argv
    for path in paths:
        print(json.dumps(measure(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
