"""docs/architecture.md names every module of the code, and nothing that is gone.

Every module of ``rgbt_perception/`` and ``training/`` (``__init__.py`` aside) must appear in the doc
by its path in backticks (``rgbt_perception/core/classes.py``), and every package by its folder
(``rgbt_perception/core/``). The other way round, every ``.py`` path the doc mentions (short forms
such as ``node/logic.py`` included) must end a file that exists, and every dotted name of the two
packages (``rgbt_perception.backends.factory.create_engine``) must lead to a module that exists
and, past it, to a name that module holds.
"""
from __future__ import annotations

import os
import re

DOC = os.path.join("docs", "architecture.md")
PACKAGES = ("rgbt_perception", "training")
# Folders whose Python files the doc may mention besides the two packages.
OTHER_SOURCES = ("launch", "test", ".ci")

BACKTICKED_PATH = re.compile(r"`((?:rgbt_perception|training)/[\w/.]*)`")
PY_PATH = re.compile(r"(?<![\w./-])([\w./-]*\w\.py)\b")
DOTTED = re.compile(r"(?<![\w./-])((?:rgbt_perception|training)(?:\.\w+)+)")


def _python_files(root: str, folders: tuple[str, ...]) -> list[str]:
    found = []
    for top in folders:
        for folder, dirs, files in os.walk(os.path.join(root, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            found += [os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/")
                      for f in files if f.endswith(".py")]
    return sorted(found)


def _doc(root: str) -> str:
    with open(os.path.join(root, DOC), encoding="utf-8") as handle:
        return handle.read()


def modules_and_packages(root: str) -> tuple[list[str], list[str]]:
    """``(module paths without __init__.py, package folders with a trailing slash)``."""
    files = _python_files(root, PACKAGES)
    modules = [f for f in files if not f.endswith("/__init__.py")]
    packages = sorted(f[: -len("__init__.py")] for f in files if f.endswith("/__init__.py"))
    return modules, packages


def unnamed(root: str) -> list[str]:
    """Modules and packages of the code that the doc does not name."""
    named = set(BACKTICKED_PATH.findall(_doc(root)))
    modules, packages = modules_and_packages(root)
    return [path for path in modules + packages if path not in named]


def _resolves(dotted: str, root: str) -> bool:
    """The longest prefix of ``dotted`` that is a module or package exists, and the next part, if
    any, appears as a name in that module's source."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        base = os.path.join(root, *parts[:end])
        for candidate in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.isfile(candidate):
                if end == len(parts):
                    return True
                with open(candidate, encoding="utf-8") as handle:
                    return re.search(rf"\b{re.escape(parts[end])}\b", handle.read()) is not None
    return False


def gone(root: str) -> list[str]:
    """Python paths and dotted names the doc mentions that no longer exist."""
    text = _doc(root)
    files = _python_files(root, PACKAGES + OTHER_SOURCES)
    files += [f for f in os.listdir(root) if f.endswith(".py")]
    missing = []
    for path in sorted(set(PY_PATH.findall(text))):
        if not any(f == path or f.endswith("/" + path) for f in files):
            missing.append(path)
    for path in sorted(set(BACKTICKED_PATH.findall(text))):
        if path.endswith("/") and not os.path.isdir(os.path.join(root, path)):
            missing.append(path)
    missing += [name for name in sorted(set(DOTTED.findall(text))) if not _resolves(name, root)]
    return missing


def test_every_module_is_named_in_the_architecture_doc(repo_root):
    missing = unnamed(repo_root)
    assert not missing, f"{DOC} does not name (add one line each to its module list):\n" + "\n".join(missing)


def test_the_architecture_doc_names_no_module_that_is_gone(repo_root):
    stale = gone(repo_root)
    assert not stale, f"{DOC} names what no longer exists:\n" + "\n".join(stale)


def test_the_checks_see_a_new_module_and_a_removed_one(tmp_path):
    """A module missing from the doc and a doc line about a removed module are both reported."""
    (tmp_path / "docs").mkdir()
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "rgbt_perception" / "kept.py").write_text("VALUE = 1\n")
    (tmp_path / "rgbt_perception" / "new.py").write_text("")
    (tmp_path / DOC).write_text(
        "- `rgbt_perception/`, `training/`\n- `rgbt_perception/kept.py`: kept (`rgbt_perception.kept.VALUE`)\n"
        "- `rgbt_perception/old.py`: removed; also `core/old.py`, `rgbt_perception.kept.OTHER`\n")
    assert unnamed(str(tmp_path)) == ["rgbt_perception/new.py"]
    assert gone(str(tmp_path)) == ["core/old.py", "rgbt_perception/old.py", "rgbt_perception.kept.OTHER"]
