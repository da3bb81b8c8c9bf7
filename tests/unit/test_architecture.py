"""The shape of the code, enforced: import-linter's contracts (pyproject.toml) hold, the import graph has no
circle, and the front-ends use only the core's public faces (a package's ``__init__`` or a top-level module)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def graph():
    # Imports under `if TYPE_CHECKING:` never run (the screens name CxrApp as their app's type that way), as in
    # pyproject's import-linter settings.
    return grimp.build_graph("cxr_core", "cxr_tui", exclude_type_checking_imports=True)


def _cycles(graph, prefix: str) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(m for m in graph.modules if m.startswith(prefix))
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if not child.startswith(prefix):
                    continue
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_import_graph_has_no_circle(graph):
    assert _cycles(graph, "cxr_") == []


def test_the_cycle_finder_finds_a_circle():
    class Fake:
        modules = {"cxr_a", "cxr_b", "cxr_c"}

        @staticmethod
        def find_modules_directly_imported_by(module):
            return {"cxr_a": {"cxr_b"}, "cxr_b": {"cxr_a"}, "cxr_c": {"cxr_a"}}[module]

    assert _cycles(Fake(), "cxr_") == [["cxr_a", "cxr_b"]]


def test_front_ends_use_only_public_faces(graph):
    """A front-end imports ``cxr_core.<package>`` or a top-level module, never a package's insides."""
    reaching = sorted((importer, imported) for importer in graph.modules if importer.startswith("cxr_tui")
                      for imported in graph.find_modules_directly_imported_by(importer)
                      if imported.startswith("cxr_core.") and imported.count(".") >= 2)
    assert reaching == []


@pytest.mark.slow
def test_import_linter_contracts_hold():
    command = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    out = subprocess.run([command, "--config", str(REPO / "pyproject.toml")], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken" in out.stdout
