"""Imports flow one way: schemas <- core <- pipeline, serving <- trainer, webdemo.

Read from the source with ``ast`` (every import statement, at module level or inside a
function), so a lazy import cannot hide an edge; and checked again by importing the
TF-free layers in a fresh interpreter, so a transitive import cannot either.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

import tests

ROOT = tests.ROOT
PACKAGES = ("schemas", "core", "serving", "pipeline", "trainer", "webdemo")

# What each layer may import from the project (itself included).
ALLOWED = {
    "schemas": {"schemas"},
    "core": {"schemas", "core"},
    "serving": {"schemas", "core", "serving"},
    "pipeline": {"schemas", "core", "serving", "pipeline"},
    "trainer": {"schemas", "core", "serving", "pipeline", "trainer"},
    "webdemo": {"schemas", "core", "serving", "webdemo"},
}
# Third-party packages a layer must never import, anywhere in its code.
FORBIDDEN = {
    "schemas": {"tensorflow", "keras", "apache_beam", "fastapi"},  # except *_tf modules, below
    "core": {"tensorflow", "keras", "fastapi"},
    "serving": {"apache_beam", "fastapi", "uvicorn"},
    "pipeline": {"fastapi", "uvicorn"},
    "trainer": {"fastapi", "uvicorn"},
    "webdemo": {"apache_beam"},
}


def _modules() -> list[tuple[str, str]]:
    out = []
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    out.append((package, os.path.relpath(path, ROOT)))
    return sorted(out)


def _imports(path: str) -> list[tuple[int, str, bool]]:
    """(line, top-level package, at module level) for every import in a file."""
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read(), path)
    top_level = {id(n) for n in tree.body}
    for n in tree.body:  # `if TYPE_CHECKING:` / try-blocks at module level still run at import
        if isinstance(n, (ast.If, ast.Try)):
            top_level |= {id(c) for c in ast.walk(n)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0], id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0], id(node) in top_level))
    return found


def test_every_layer_is_found():
    found = {package for package, _ in _modules()}
    assert found == set(PACKAGES), f"missing layers: {set(PACKAGES) - found}"


@pytest.mark.parametrize("package,path", [pytest.param(*m, id=m[1]) for m in _modules()])
def test_imports_flow_one_way(package, path):
    bad = []
    for line, name, _ in _imports(path):
        if name in PACKAGES and name not in ALLOWED[package]:
            bad.append(f"{path}:{line} imports {name} ({package} may import {sorted(ALLOWED[package])})")
        forbidden = FORBIDDEN[package]
        if package == "schemas" and path.endswith("_tf.py"):
            forbidden = forbidden - {"tensorflow"}
        if name in forbidden:
            bad.append(f"{path}:{line} imports {name}, which {package} must not")
    assert not bad, "\n".join(bad)


def test_core_imports_beam_only_lazily():
    """core may reach Beam's FileSystems for a gs:// path, never at import."""
    bad = [f"{path}:{line}" for package, path in _modules() if package == "core"
           for line, name, top in _imports(path) if name == "apache_beam" and top]
    assert not bad, f"core imports Beam at module level: {bad}"


def _loaded_after(modules: list[str]) -> set[str]:
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_contracts_and_core_load_neither_tensorflow_nor_beam():
    modules = [p[:-3].replace(os.sep, ".") for package, p in _modules()
               if package in ("schemas", "core") and not p.endswith(("_tf.py", "__init__.py"))]
    loaded = _loaded_after(modules)
    assert not loaded & {"tensorflow", "keras", "apache_beam", "fastapi"}, sorted(loaded)


def test_records_job_worker_side_loads_no_tensorflow_or_web_framework():
    """What a Beam worker unpickles for the records job must not drag in TF or FastAPI."""
    loaded = _loaded_after(["pipeline.build_records"])
    assert "apache_beam" in loaded  # the check itself works
    assert not loaded & {"tensorflow", "keras", "fastapi", "uvicorn", "matplotlib"}, sorted(loaded)


def test_web_demo_loads_no_beam():
    loaded = _loaded_after(["webdemo.app"])
    assert "fastapi" in loaded
    assert "apache_beam" not in loaded
