"""trainer.task as users run it: two MultiWorkerMirrored workers, and resume after kill -9."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import tests

pytestmark = pytest.mark.slow  # kills and two-worker training in child processes


ROOT = tests.ROOT


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _task_cmd(records_dir, job_dir, *extra):
    return [sys.executable, "-m", "trainer.task", "--pathology=atelectasis", f"--records_dir={records_dir}",
            f"--job_dir={job_dir}", "--backbone=tiny", "--image_size=32", "--batch_size=4", *extra]


def _env(**kw):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", **kw)
    env.pop("TF_CONFIG", None)
    env.update(kw)
    return env


def test_multi_worker_mirrored_trains_with_two_local_workers(records_dir, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        cmd = _task_cmd(records_dir, tmp_path / "job", "--strategy=multi_worker", "--epochs=1", "--steps_per_epoch=3")
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    assert "2 replicas, global batch 8 (4 per replica)" in outs[0]
    metrics = json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["global_batch"] == 8
    assert (tmp_path / "job" / "model.keras").exists()


def test_killed_job_resumes_at_its_next_epoch(records_dir, tmp_path):
    job = tmp_path / "job"
    # --nojit_compile: each of the two processes would compile the step with XLA (~10 s).
    cmd = _task_cmd(records_dir, job, "--epochs=3", "--steps_per_epoch=40", "--patience=10", "--nojit_compile")
    first = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (job / "backup" / "checkpoint").exists():  # written at the end of epoch 1
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    with open(job / "history.csv") as f:
        epochs_before = [int(r["epoch"]) for r in csv.DictReader(f)]
    assert epochs_before == [1], "killed during epoch 2"
    second = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "at epoch 2" in second.stderr + second.stdout
    with open(job / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]
