"""Small modules, short functions: no source file over 400 lines and no function over 60 in wrinklefree_core/, flows/ and tasks/.

A reader should be able to hold one module and one function in view. The check reads every file
with `ast`; a made-up module shows it reports what it should.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def too_long(source: str, name: str) -> list[str]:
    """`name: N lines` for the file and every function (methods, nested ones) over the limits."""
    found = []
    lines = source.count("\n")
    if lines > MAX_FILE_LINES:
        found.append(f"{name}: {lines} lines > {MAX_FILE_LINES}")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{name}:{node.lineno} {node.name}: {length} lines > {MAX_FUNCTION_LINES}")
    return found


def test_no_file_or_function_is_too_long():
    found = []
    for package in ("wrinklefree_core", "flows", "tasks"):
        for path in sorted((REPO / package).rglob("*.py")):
            found += too_long(path.read_text(), str(path.relative_to(REPO)))
    assert found == []


def test_the_check_sees_a_long_function_and_a_long_file():
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    assert too_long(f"def f():\n{body}\n", "m.py") == ["m.py:1 f: 61 lines > 60"]
    assert too_long("x = 1\n" * 401, "big.py") == ["big.py: 401 lines > 400"]
    assert too_long("def g():\n    return 1\n", "ok.py") == []
