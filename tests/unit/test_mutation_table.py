"""tests/mutation/run.py's table stays applicable as the code and the tests move (TF-free, instant).

`make mutate` itself runs only on demand; this keeps its named mutants from going stale in
between: each old text is still in its file exactly once, and each test it names exists.
"""

from __future__ import annotations

import os
import re

import tests
from tests.mutation import run


def test_every_named_mutant_still_applies():
    assert run.check_patches(run.MUTANTS) == []
    assert len({m.name for m in run.MUTANTS}) == len(run.MUTANTS)
    for m in run.MUTANTS:
        assert m.old != m.new and m.tests, m.name


def test_every_named_test_exists():
    for m in run.MUTANTS:
        for node in m.tests:
            path, _, name = node.partition("::")
            source = open(os.path.join(tests.ROOT, path), encoding="utf-8").read()
            assert not name or re.search(rf"^def {re.escape(name)}\(", source, re.M), (m.name, node)
