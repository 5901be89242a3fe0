"""`pip install .` is the Beam side: what a records worker imports is declared there, and
nothing heavier (TensorFlow, a web framework) is."""

from __future__ import annotations

import ast
import configparser
import importlib.metadata as md
import os
import re
import subprocess
import sys

import tests

ROOT = tests.ROOT
OURS = ("schemas", "core", "serving", "pipeline", "trainer", "webdemo")


def _setup_cfg() -> configparser.RawConfigParser:
    cfg = configparser.RawConfigParser()  # as setuptools reads it: no interpolation
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    return cfg


def _names(block: str) -> set[str]:
    return {_norm(re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0]) for line in block.splitlines() if line.strip()}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names: set[str]) -> set[str]:
    """The distributions ``names`` pull in, following installed metadata (extras not taken)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [_norm(re.split(r"[<>=!~\[; (]", r, maxsplit=1)[0]) for r in requires if "extra ==" not in r]
    return seen


def test_beam_side_requirements_carry_no_tensorflow_or_web_framework():
    base = _names(_setup_cfg().get("options", "install_requires"))
    assert "apache-beam" in base
    assert not base & {"tensorflow", "keras", "fastapi", "uvicorn", "matplotlib", "pandas"}, base


def test_every_extra_the_readme_names_exists():
    extras = set(_setup_cfg().options("options.extras_require"))
    assert {"serving", "train", "web", "test"} <= extras


def test_records_job_imports_only_what_pip_install_dot_declares():
    """Every third-party import in our modules that the records job loads (at module level or
    inside a function: a worker may run either) comes with ``pip install .``. Beam's own
    optional imports (pandas, absl when present) are Beam's business, so only our source is
    read."""
    code = ("import sys, pipeline.build_records, pipeline.make_sample\n"
            "print('\\n'.join(sorted(m.__file__ for n, m in sys.modules.items()\n"
            "      if n.split('.')[0] in ('schemas', 'core', 'pipeline', 'serving') and getattr(m, '__file__', None))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    files = out.stdout.split()
    assert any(f.endswith(os.path.join("pipeline", "build_records.py")) for f in files)
    declared = _closure(_names(_setup_cfg().get("options", "install_requires")))
    dists = md.packages_distributions()
    undeclared = {}
    for path in files:
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for module in (n.split(".")[0] for n in names):
                if module in OURS:
                    continue
                owners = {_norm(d) for d in dists.get(module, [])}
                if owners and not owners & declared:
                    undeclared.setdefault(module, set()).add(os.path.relpath(path, ROOT))
    assert not undeclared, f"imported by the records job's modules but not in install_requires: {undeclared}"
