"""Shared fixtures: small synthetic datasets made in code, never real data."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from pipeline import make_sample  # noqa: E402


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> str:
    """A generated CheXpert-small: 60 train patients, 30 valid patients (~230 images)."""
    root = str(tmp_path_factory.mktemp("sample"))
    make_sample.generate(root, num_patients=60, num_valid_patients=30, seed=1, workers=1, progress=False)
    return root
