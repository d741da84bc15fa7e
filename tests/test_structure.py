"""The shape of src/: no function longer than 60 lines, counted from `def` to its last line (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "qdtool"
MAX_LINES = 60


def long_functions(root: Path, limit: int = MAX_LINES) -> list[str]:
    """`path:line name (N lines)` for every function or method under `root` longer than `limit` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_src_is_over_60_lines():
    assert long_functions(SRC) == []


def test_the_count_runs_from_def_to_the_last_line(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(58))
    (tmp_path / "sixty.py").write_text(f"def sixty():\n{body}\n    return x0\n")  # def + 58 + return = 60 lines
    (tmp_path / "nested.py").write_text(f"class A:\n    def method(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n        y = 1\n"
                                        "        return y\n")  # 61 lines
    assert long_functions(tmp_path) == [f"{tmp_path.name}/nested.py:2 method (61 lines)"]
