"""trainer.evaluate and trainer.predict on the default model, DenseNet121 at 320 px, in
bounded memory.

Each command runs as users run it, in a fresh process, on an untrained job (the weights do
not change the memory); its peak RSS is the kernel's high-water mark for that process
(``os.wait4``'s ``ru_maxrss``), so no short peak is missed between samples. Calling the
Keras model eagerly held ~0.4 GB per image of a batch: evaluate's batches of 64 were
OOM-killed at 24 GB, predict's batches of 32 took ~13 GB. A command that passes ``KILL_AT``
is killed, so that a regression fails the test without taking the machine's memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

import tests
from pipeline import build_records, make_sample

pytestmark = pytest.mark.slow  # DenseNet121 at 320 px in child processes, peak memory


ROOT = tests.ROOT
GiB = 2**30
# Measured on 2 cores: compiled, 1.60 GiB for evaluate (batches of 64) and 1.57 GiB for
# predict (32), of which ~0.85 GiB is TensorFlow, Keras and the model before the first
# image; eager, both passed KILL_AT (6 GiB).
BOUND = 3 * GiB
KILL_AT = 2 * BOUND
EVAL_BATCH, PREDICT_BATCH = 64, 32  # trainer.evaluate's batch; trainer.predict's default
# One study each, almost all with a frontal image (seed 3: 65 frontal), so that evaluate
# scores at least one full batch.
VALID_PATIENTS = 66


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")


def run_peak_rss(cmd: list[str], log_path: str) -> tuple[int, int, bool]:
    """Runs ``cmd`` with its output in ``log_path``.

    Returns:
        ``(exit code, peak RSS in bytes, killed)``; ``killed`` when its RSS passed
        ``KILL_AT`` and it was stopped.
    """
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    done, killed = threading.Event(), threading.Event()

    def watch():
        # Samples only to stop a runaway; the reported peak is the kernel's. Never polls the
        # process: reaping it here would take the rusage from os.wait4.
        ps = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                if ps.memory_info().rss > KILL_AT:
                    killed.set()
                    proc.kill()
                    return
            except psutil.Error:
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024, killed.is_set()  # ru_maxrss is in KiB on Linux


def _tail(path: str) -> str:
    with open(path) as f:
        return f.read()[-3000:]


@pytest.fixture(scope="module")
def densenet_job(tmp_path_factory) -> tuple[str, str]:
    """(sample dir, job dir): records at 320 px of 66 valid studies and an untrained
    DenseNet121 job at 320 px (the trainer's defaults)."""
    root = tmp_path_factory.mktemp("densenet320")
    sample, records, job = str(root / "sample"), str(root / "records"), str(root / "job")
    make_sample.generate(sample, num_patients=2, num_valid_patients=VALID_PATIENTS, seed=3, workers=1,
                         progress=False)
    build_records.run([f"--input_dir={sample}", f"--output_dir={records}", "--image_size=320", "--num_shards=1",
                       "--runner=DirectRunner"])
    subprocess.run([sys.executable, "-m", "tests.untrained_job", records, job, "densenet121", "320"], cwd=ROOT,
                   env=_env(), check=True, capture_output=True, timeout=300)
    return sample, job


def test_evaluate_densenet121_at_320_stays_under_3_gib(densenet_job, tmp_path):
    _, job = densenet_job
    log = str(tmp_path / "evaluate.log")
    rc, peak, killed = run_peak_rss([sys.executable, "-m", "trainer.evaluate", f"--job_dir={job}", "--tune_split=",
                                     "--bootstrap=10", f"--report_dir={tmp_path / 'report'}"], log)
    assert not killed, f"evaluate passed {KILL_AT / GiB:.0f} GiB RSS ({peak / GiB:.2f}) and was killed"
    assert rc == 0, _tail(log)
    with open(tmp_path / "report" / "metrics.json") as f:
        assert json.load(f)["images"] >= EVAL_BATCH
    print(f"evaluate: peak RSS {peak / GiB:.2f} GiB")
    assert peak < BOUND, f"evaluate peaked at {peak / GiB:.2f} GiB RSS (bound {BOUND / GiB:.0f} GiB)"


def test_predict_densenet121_at_320_stays_under_3_gib(densenet_job, tmp_path):
    sample, job = densenet_job
    log = str(tmp_path / "predict.log")
    valid = os.path.join(sample, make_sample.DATASET_DIR, "valid")
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(valid) for f in fs)[:PREDICT_BATCH]
    rc, peak, killed = run_peak_rss([sys.executable, "-m", "trainer.predict", f"--job_dir={job}",
                                     f"--batch_size={PREDICT_BATCH}", f"--out_dir={tmp_path / 'out'}", *files], log)
    assert not killed, f"predict passed {KILL_AT / GiB:.0f} GiB RSS ({peak / GiB:.2f}) and was killed"
    assert rc == 0, _tail(log)
    with open(tmp_path / "out" / "predictions.json") as f:
        assert len(json.load(f)["results"]) == PREDICT_BATCH
    print(f"predict: peak RSS {peak / GiB:.2f} GiB")
    assert peak < BOUND, f"predict peaked at {peak / GiB:.2f} GiB RSS (bound {BOUND / GiB:.0f} GiB)"
