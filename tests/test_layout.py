"""The architecture as docs/architecture.md states it, checked on the source.

* the worker side (cpldask.worker) and the scheduler side (cpldask._dashboard) import
  nothing of the client side;
* no import circle among cpldask's modules (function-level imports included,
  ``if TYPE_CHECKING:`` blocks not: they never run);
* private parts of dask, distributed and dask-jobqueue are used in _compat.py only;
* the workflow layer names no instrument: instruments are plug-ins.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "cpldask"

#: modules the worker side must not load (the client side: the front end, the
#: cluster, the workflow layer, the instruments, the command line)
CLIENT_SIDE = ("cpldask.recipe", "cpldask.result", "cpldask._submit", "cpldask._cluster",
               "cpldask._call", "cpldask.cluster", "cpldask._jobqueue", "cpldask.provenance",
               "cpldask.esorex", "cpldask.dfs", "cpldask.workflow", "cpldask.instruments",
               "cpldask._cli")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(path: pathlib.Path, name: str) -> set[str]:
    """The cpldask modules ``path`` imports anywhere but under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
            for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("cpldask")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("cpldask"):
                out.add(mod)
                out |= {f"{mod}.{a.name}" for a in node.names}  # `from . import x`
    return out


def test_the_import_graph_has_no_circle():
    modules = _modules()
    # a module's own packages are imported before it (``from . import x`` in
    # cpldask/_cli/_reduce.py): not an edge back
    graph = {m: {i for i in _imports(p, m) if i in modules and i != m
                 and not m.startswith(i + ".")}
             for m, p in modules.items()}
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_worker_side_source_imports_no_client_module():
    """The worker package, and the scheduler side (cpldask._dashboard: the scheduler
    unpickles its plugin)."""
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("cpldask.worker") or name == "cpldask._dashboard":
            bad = sorted(i for i in _imports(path, name) if i.startswith(CLIENT_SIDE))
            assert not bad, f"{name} imports client-side {bad}"


@pytest.mark.requires_python_cpl
def test_importing_the_worker_package_loads_no_client_module():
    """What a worker does when it unpickles a task: import cpldask.worker.task (and
    the recipe process's runner). Run in a fresh interpreter."""
    code = ("import sys, cpldask.worker.task, cpldask.worker.runner\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('cpldask'))))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True, cwd=ROOT.parent).stdout.split()
    assert "cpldask.worker.task" in loaded
    assert not [m for m in loaded if m.startswith(CLIENT_SIDE)], loaded


#: private dask/distributed/dask-jobqueue names cpldask once used outside _compat
_PRIVATE_ATTRIBUTES = ("_adaptive", "_dummy_job", "thread_state", "state.tasks")


def test_private_dask_apis_are_used_in_compat_only():
    found = []
    for name, path in _modules().items():
        if name == "cpldask._compat":
            continue
        text = path.read_text()
        tree = ast.parse(text)
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            for mod in mods:
                top, *rest = mod.split(".")
                if top in ("dask", "distributed", "dask_jobqueue") and any(
                        part.startswith("_") for part in rest):
                    found.append(f"{name}: {mod}")
        found += [f"{name}: {attr}" for attr in _PRIVATE_ATTRIBUTES
                  if f".{attr}" in text or f"import {attr}" in text]
    assert not found, found


def test_the_workflow_layer_names_no_instrument():
    """Instrument names appear in the workflow layer's docs and examples only: its code
    reads the rules. (The front end's python-cpl examples name muse_bias; the
    instruments are the plug-ins that may.)"""
    for path in (ROOT / "workflow").glob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
                      and n.body and isinstance(n.body[0], ast.Expr)
                      and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docstrings:
                low = node.value.lower()
                assert "muse" not in low and "hawki" not in low, (path.name, node.value)
            if isinstance(node, ast.Name):
                assert "muse" not in node.id.lower(), (path.name, node.id)
