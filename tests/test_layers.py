"""The import graph of ``src/medrestore`` follows the layer order written in
docs/architecture.md: no cycle (lazy in-function imports included) and no import of a package
ranked above the importer (or beside it, for packages sharing a rank)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

SRC = REPO / "src" / "medrestore"


def layer_order() -> dict[str, int]:
    """``{package: rank}`` from the ``layers:`` line of docs/architecture.md
    (``a < b`` ranks b above a; ``a = b`` shares a rank)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("layers:"))
    ranks = {}
    for rank, group in enumerate(line.split(":", 1)[1].split("<")):
        for name in group.split("="):
            ranks[name.strip()] = rank
    return ranks


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["medrestore", *parts])


def _exists(module: str, src: Path) -> bool:
    rel = Path(*module.split(".")[1:]) if "." in module else Path()
    return (src / rel).with_suffix(".py").is_file() or (src / rel / "__init__.py").is_file()


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the medrestore modules it imports anywhere (top level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(src.rglob("*.py")):
        mod = _module_name(path, src)
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("medrestore")}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                if not name.startswith("medrestore"):
                    continue
                # `from pkg import submodule` depends on the submodule itself
                subs = {f"{name}.{a.name}" for a in node.names if _exists(f"{name}.{a.name}", src)}
                targets |= subs or {name}
        graph[mod] = {t for t in targets if t != mod}
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_has_a_layer():
    ranks = layer_order()
    missing = sorted({_layer(m) for m in import_graph()} - set(ranks) - {"", "conf"})
    assert missing == [], f"add {missing} to the layers: line of docs/architecture.md"


def test_no_import_climbs_the_layer_order():
    ranks = layer_order()
    bad = []
    for mod, targets in import_graph().items():
        src = _layer(mod)
        if src == "":          # the package root: sets offline defaults, imports nothing heavy
            continue
        for t in targets:
            dst = _layer(t)
            if dst == src or dst == "":
                continue
            if ranks[dst] >= ranks[src]:
                bad.append(f"{mod} -> {t} ({src} rank {ranks[src]}, {dst} rank {ranks[dst]})")
    assert bad == [], "\n".join(sorted(bad))


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if t not in graph:
                continue
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_lazy_imports_and_submodules(tmp_path):
    # io.base once imported io.dicom inside a function while io.dicom imported io.base
    pkg = tmp_path / "medrestore"
    (pkg / "io").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "io" / "__init__.py").write_text("")
    (pkg / "io" / "base.py").write_text("def f():\n    from medrestore.io.dicom import g\n")
    (pkg / "io" / "dicom.py").write_text("from medrestore.io import base\n")
    graph = import_graph(pkg)
    assert graph["medrestore.io.base"] == {"medrestore.io.dicom"}
    assert graph["medrestore.io.dicom"] == {"medrestore.io.base"}
    assert find_cycles(graph)
