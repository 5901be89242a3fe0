"""Shared fixtures: small synthetic datasets made in code, never real data.

Nothing here imports TensorFlow or Beam at module level: the unit tier (``tests/unit``,
``make test-fast``) must load neither. The fixtures import what they need when first used.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
UNIT = os.path.join(HERE, "unit")
TIERS = ("unit", "schemas", "pipeline", "serving", "trainer", "webdemo")


def pytest_collection_modifyitems(config, items):
    """Each test carries its tier's marker (its folder under tests/), so ``-m trainer`` or
    ``-m "not webdemo"`` select by layer; ``slow`` is set by the end-to-end modules."""
    for item in items:
        tier = os.path.relpath(str(item.path), HERE).split(os.sep)[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


def pytest_collection_finish(session):
    """Two logical CPUs, so MirroredStrategy runs with two replicas on a one-CPU runner.

    It must happen before TensorFlow initialises its devices: after collection (test modules
    that use TF import it at module level, none runs an op there) and before the first test.
    """
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    session.config.stash[_UNIT_ONLY] = bool(session.items) and all(
        str(item.path).startswith(UNIT + os.sep) for item in session.items)


_UNIT_ONLY = pytest.StashKey[bool]()


def pytest_sessionfinish(session, exitstatus):
    """The unit tier's promise, checked on every unit-only run: neither TF nor Beam loaded."""
    if session.config.stash.get(_UNIT_ONLY, False):
        loaded = sorted({"tensorflow", "keras", "apache_beam"} & {n.split(".")[0] for n in sys.modules})
        if loaded:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            print(f"\nunit tier loaded {', '.join(loaded)}: a test or module under tests/unit imports it",
                  file=sys.stderr)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> str:
    """A generated CheXpert-small: 60 train patients, 30 valid patients (~230 images)."""
    from pipeline import make_sample

    root = str(tmp_path_factory.mktemp("sample"))
    make_sample.generate(root, num_patients=60, num_valid_patients=30, seed=1, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def records_dir(sample_dir, tmp_path_factory) -> str:
    """Records of ``sample_dir`` at 32x32 with a 20% holdout, 2 shards per split."""
    from pipeline import build_records

    out = str(tmp_path_factory.mktemp("records32"))
    build_records.run([f"--input_dir={sample_dir}", f"--output_dir={out}", "--image_size=32", "--num_shards=2",
                       "--holdout_fraction=0.2", "--runner=DirectRunner"])
    return out


@pytest.fixture(scope="session")
def trained_job(records_dir, tmp_path_factory) -> str:
    """A tiny two-task model (atelectasis binary, cardiomegaly 3-class) trained for 8 steps."""
    from trainer import config as config_lib
    from trainer import train

    job = str(tmp_path_factory.mktemp("job"))
    cfg = config_lib.make_config(pathology="atelectasis,cardiomegaly", records_dir=records_dir, job_dir=job,
                                 image_size=32, backbone="tiny", epochs=1, steps_per_epoch=8, batch_size=8,
                                 learning_rate=1e-3)
    train.run(cfg)
    return job
