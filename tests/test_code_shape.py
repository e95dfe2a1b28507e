"""The code stays readable as it grows: short functions, lines that fit a side-by-side diff (README, "Where to
change what"). ruff (in .ci/run) formats the code to 100 columns; it cannot break long strings and comments,
and it does not count function lengths, so these two limits are checked here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "extract", "train", "predict")
MAX_FUNCTION_LINES = 80
MAX_LINE = 100
MAX_LONG_LINE_SHARE = 0.02


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(
                        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)"
                    )
    assert not long, "split these functions into named steps:\n" + "\n".join(long)


def test_few_lines_are_longer_than_100_characters():
    total, long = 0, []
    for path in _sources():
        lines = path.read_text(encoding="utf-8").splitlines()
        total += len(lines)
        long += [
            f"{path.relative_to(ROOT)}:{i}" for i, x in enumerate(lines, 1) if len(x) > MAX_LINE
        ]
    assert len(long) <= MAX_LONG_LINE_SHARE * total, (
        f"{len(long)} of {total} lines are over {MAX_LINE} characters (at most "
        f"{MAX_LONG_LINE_SHARE:.0%}); wrap these:\n" + "\n".join(long[:40])
    )


def test_the_shape_checks_see_the_packages():
    # guards the two tests above against passing on an empty file list
    assert len(_sources()) > 40
