"""A trained job with another decision threshold, without training another model.

Every job the fixtures train has the default threshold (0.35), so a scorer that ignored the
job's own threshold for 0.35 would pass every test that uses them. ``copy`` writes the
``trained_job`` fixture's model next to a spec (and config) with another threshold, and
``separating`` picks that threshold from the probabilities the model gives the test's
inputs, so that it calls at least one of them differently from the default.
"""

from __future__ import annotations

import json
import os
import shutil

DEFAULT = 0.35  # schemas.job_spec.JobSpec.threshold, every fixture job's


def separating(probs, other: float = DEFAULT) -> float:
    """A threshold at which at least one of ``probs`` is called differently than at
    ``other``: the midpoint of two neighbouring probabilities (nearest the median), at
    least 1e-4 from each, and never ``other`` itself.

    Raises:
        ValueError: no such threshold (all probabilities equal, or all on one side of
            ``other`` within 1e-4 of each other).
    """
    ps = sorted(set(float(p) for p in probs))
    middle = len(ps) // 2
    gaps = sorted(range(len(ps) - 1), key=lambda i: abs(i + 0.5 - middle))
    for i in gaps:
        if ps[i + 1] - ps[i] < 2e-4:
            continue
        t = (ps[i] + ps[i + 1]) / 2
        if 0.0 < t < 1.0 and any(min(t, other) <= p < max(t, other) for p in ps):
            return t
    raise ValueError(f"no threshold separates {ps} differently from {other}")


def copy(job_dir: str, dest: str, threshold: float) -> str:
    """``job_dir``'s model, spec and config in ``dest``, with ``threshold`` as the job's own."""
    os.makedirs(dest)
    shutil.copy(os.path.join(job_dir, "model.keras"), dest)
    for name in ("job_spec.json", "config.json"):
        with open(os.path.join(job_dir, name)) as f:
            d = json.load(f)
        assert d["threshold"] == DEFAULT, f"{name}: the fixture job's threshold changed; update {__name__}"
        d["threshold"] = threshold
        with open(os.path.join(dest, name), "w") as f:
            json.dump(d, f, indent=2, sort_keys=True)
    return dest
