"""Imports point down: the layer list in docs/architecture.md holds for every import in wrinklefree_core.

Every `from wrinklefree_core.X import ...` (module level or inside a function) is read with `ast`;
the importer's layer must be above the imported one's (a line of its own does not count), and the
module graph has no circle. The checks run on a package folder, so a made-up package with a
circle and an upward import shows they fail when they should.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def layers(doc: Path) -> dict[str, int]:
    """{package or top-level module: layer number} from the marked list in `doc`."""
    text = doc.read_text()
    block = re.search(r"<!-- layers:.*?-->(.*?)<!-- /layers -->", text, re.S)
    assert block, f"{doc} has no <!-- layers --> list"
    found: dict[str, int] = {}
    for line in block.group(1).strip().splitlines():
        number, _, names = line.partition(".")
        for name in re.findall(r"`([a-z_]+)`", names):
            found[name] = int(number)
    return found


def modules(root: Path) -> dict[str, Path]:
    """{dotted module name: file} of a package folder."""
    found = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent).with_suffix("").parts
        found[".".join(parts).removesuffix(".__init__")] = f
    return found


def imports(root: Path) -> list[tuple[str, str, int]]:
    """(importing module, imported module, line) for every import of the package by itself."""
    mods, pkg = modules(root), root.name
    edges = []
    for name, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(pkg + "."):
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods]
                targets = subs + ([node.module] if len(subs) < len(node.names) else [])
                edges += [(name, t, node.lineno) for t in targets if t != name]
            elif isinstance(node, ast.Import):
                edges += [(name, a.name, node.lineno) for a in node.names if a.name.startswith(pkg + ".")]
    return edges


def upward_imports(root: Path, order: dict[str, int]) -> list[str]:
    """Imports whose target is not on a line above the importer's (or whose package is not in the list)."""
    bad = []
    for source, target, line in imports(root):
        a, b = source.split(".")[1], target.split(".")[1]
        if a == b:
            continue
        if a not in order or b not in order:
            bad.append(f"{source}:{line} -> {target}: {a if a not in order else b} is not in the layer list")
        elif order[b] >= order[a]:
            bad.append(f"{source}:{line} -> {target} (layer {order[a]} imports layer {order[b]})")
    return bad


def circles(root: Path) -> list[list[str]]:
    """Groups of modules that import each other around a circle (Tarjan's strongly connected components)."""
    graph: dict[str, set[str]] = {m: set() for m in modules(root)}
    for source, target, _ in imports(root):
        if target in graph:
            graph[source].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_every_import_points_down():
    order = layers(REPO / "docs" / "architecture.md")
    top_level = {p.name.removesuffix(".py") for p in (REPO / "wrinklefree_core").iterdir() if p.name != "__init__.py" and (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert top_level == set(order), f"docs/architecture.md's layer list and the package differ: {sorted(top_level ^ set(order))}"
    assert upward_imports(REPO / "wrinklefree_core", order) == []


def test_no_import_circles():
    assert circles(REPO / "wrinklefree_core") == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


@pytest.fixture
def bad_package(tmp_path: Path) -> Path:
    return _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "",
        "pkg/low/a.py": "def f():\n    from pkg.high.b import g  # lazy, still upward\n",
        "pkg/high/__init__.py": "",
        "pkg/high/b.py": "from pkg.high.c import h\ndef g(): ...\n",
        "pkg/high/c.py": "from pkg.high import b\ndef h(): ...\n",
    })  # fmt: skip


def test_the_checks_catch_an_upward_import_and_a_circle(bad_package: Path):
    assert upward_imports(bad_package, {"low": 1, "high": 2}) == ["pkg.low.a:2 -> pkg.high.b (layer 1 imports layer 2)"]
    assert circles(bad_package) == [["pkg.high.b", "pkg.high.c"]]
    assert upward_imports(bad_package, {"low": 1}) == ["pkg.low.a:2 -> pkg.high.b: high is not in the layer list"]
