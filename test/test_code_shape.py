"""Functions of the runtime package stay small: at most 80 lines and 8 parameters each.

Lines count from the ``def`` line to the last line of the body (decorators left out). Parameters
count positional and keyword-only ones; ``self``/``cls`` and ``*args``/``**kwargs`` do not count
(a dataclass of options is the way to pass more).
"""
from __future__ import annotations

import ast
import os

MAX_FUNCTION_LINES = 80
MAX_PARAMETERS = 8
PACKAGE = "rgbt_perception"


def function_size(node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[int, int]:
    """``(lines, parameters)`` of one function as the limits count them."""
    lines = node.end_lineno - node.lineno + 1
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    if positional and positional[0].arg in ("self", "cls"):
        positional = positional[1:]
    return lines, len(positional) + len(args.kwonlyargs)


def offenders(root: str) -> list[str]:
    """``path:line name (N lines, M parameters)`` for every function over a limit under ``root``."""
    found = []
    for folder, _, files in os.walk(os.path.join(root, PACKAGE)):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read(), filename=path)
            for node in ast.walk(tree):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                lines, parameters = function_size(node)
                if lines > MAX_FUNCTION_LINES or parameters > MAX_PARAMETERS:
                    found.append(f"{os.path.relpath(path, root)}:{node.lineno} {node.name} "
                                 f"({lines} lines, {parameters} parameters)")
    return sorted(found)


def test_function_size_counts_as_documented():
    source = (
        "class A:\n"
        "    @staticmethod\n"
        "    def f(self, a, b=1, /, c=2, *args, d, e=3, **kwargs):\n"
        "        x = 1\n"
        "\n"
        "        return x\n"
        "def g(cls, a):\n"
        "    pass\n"
    )
    functions = sorted((n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)),
                       key=lambda n: n.lineno)
    assert [function_size(f) for f in functions] == [(4, 5), (2, 1)]


def test_no_function_is_too_long_or_takes_too_many_parameters(repo_root):
    found = offenders(repo_root)
    assert not found, (f"functions over {MAX_FUNCTION_LINES} lines or {MAX_PARAMETERS} parameters "
                       f"(split them; pass a dataclass of options):\n" + "\n".join(found))
