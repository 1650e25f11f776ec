"""Every import the package makes is a declared dependency of the extra it runs under.

A fresh ``pip install .`` gives only the core dependencies, ``.[train]`` adds the training stack and
``.[dev]`` the test tools. An undeclared import works on a developer's machine (where the package
happens to be installed) and crashes for a new user, so we read the import graph of ``src/`` and
``tests/`` with :mod:`ast` and check every third-party module against ``pyproject.toml``:

- modules under ``crystalframes/train/`` may use the core and the ``train`` extra;
- every other module may use the core only at import time; an import guarded by
  ``try: ... except ImportError`` (an optional feature that says what to install) may use any extra;
- tests may use everything ``dev`` pulls in.

A second test imports every non-training module in a fresh interpreter where the ``train`` extra is
made unimportable, which catches an unguarded import the static rule would misfile.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "crystalframes"
TRAIN_ONLY_MODULES = ("lightning", "pydantic", "yaml", "matplotlib")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _canonical(re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0])


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _declared() -> dict[str, set[str]]:
    """Distribution names each install variant provides (extras resolved through self-references)."""
    project = _pyproject()["project"]
    extras = project.get("optional-dependencies", {})

    def expand(requirements: list[str], seen: set[str]) -> set[str]:
        names: set[str] = set()
        for req in requirements:
            name = _requirement_name(req)
            if name == _canonical(project["name"]):
                for extra in re.findall(r"\[([^\]]*)\]", req)[0].split(","):
                    extra = extra.strip()
                    if extra not in seen:
                        names |= expand(extras[extra], seen | {extra})
            else:
                names.add(name)
        return names

    core = expand(project["dependencies"], set())
    return {"core": core, **{extra: core | expand(reqs, {extra}) for extra, reqs in extras.items()}}


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(top-level module, guarded by ``except ImportError``, line) for each absolute import."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    guarded_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            handler.type is not None
            and any(
                isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
                for n in ast.walk(handler.type)
            )
            for handler in node.handlers
        ):
            for stmt in node.body:
                guarded_nodes |= {id(n) for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in ("crystalframes", "__future__"):
                found.append((top, id(node) in guarded_nodes, node.lineno))
    # ``import matplotlib.pyplot`` after a guarded ``import matplotlib`` is behind the same check
    checked = {top for top, guarded, _ in found if guarded}
    return [(top, guarded or top in checked, line) for top, guarded, line in found]


@functools.cache
def _module_owners() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions(module: str) -> set[str]:
    return {_canonical(d) for d in _module_owners().get(module, [])}


@functools.cache
def _local_modules() -> frozenset[str]:
    """Helper modules of tests/ and benchmarks/ that tests import from their own folders."""
    return frozenset(p.stem for folder in ("tests", "benchmarks") for p in (ROOT / folder).rglob("*.py"))


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if ROOT in path.parents else str(path)


def _undeclared(files: list[Path], allowed_for) -> list[str]:
    problems = []
    for path in files:
        for module, guarded, line in _imports(path):
            if (ROOT / module).is_dir() or module in _local_modules():
                continue  # the project's own tests/ and benchmarks/ helpers
            dists = _distributions(module)
            allowed = allowed_for(path, guarded)
            if not dists and _canonical(module) in allowed:
                continue  # declared, not installed here (a benchmark's optional extra): named alike
            if not dists:
                problems.append(f"{_shown(path)}:{line}: imports {module}, which no installed distribution provides")
            elif not dists & allowed:
                problems.append(f"{_shown(path)}:{line}: imports {module} ({', '.join(sorted(dists))}), not declared for this module")
    return problems


def test_package_imports_are_declared_for_their_extra():
    declared = _declared()
    every_extra = set().union(*declared.values())

    def allowed_for(path: Path, guarded: bool) -> set[str]:
        if guarded:
            return every_extra
        if SRC / "train" in path.parents:
            return declared["train"]
        return declared["core"]

    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30  # the walk really sees the package
    assert _undeclared(files, allowed_for) == []


def test_test_imports_are_declared_in_dev():
    """Tests may import what the dev extra declares; a benchmark may also need an optional extra of
    its own (benchmarks/store_formats.py compares formats from the bench-store / bench-litdata
    extras), never an undeclared package."""
    declared = _declared()
    every_extra = set().union(*declared.values())

    def allowed_for(path: Path, guarded: bool) -> set[str]:
        allowed = declared["dev"] | ({"pytest"} if guarded else set())
        return allowed | every_extra if (ROOT / "benchmarks") in path.parents else allowed

    files = sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    assert _undeclared(files, allowed_for) == []


def test_the_rule_catches_an_undeclared_import(tmp_path):
    """The checker itself: an unguarded import of a train-extra module outside ``train/`` is
    reported; the same kind of import guarded by ``except ImportError`` is not."""
    declared = _declared()
    bad = tmp_path / "bad.py"
    bad.write_text("import yaml\ntry:\n    import matplotlib\nexcept ImportError:\n    matplotlib = None\n")
    assert _imports(bad) == [("yaml", False, 1), ("matplotlib", True, 3)]
    every_extra = set().union(*declared.values())
    report = _undeclared([bad], lambda path, guarded: every_extra if guarded else declared["core"])
    assert len(report) == 1 and "imports yaml" in report[0]


def test_core_modules_import_without_the_train_extra():
    """Every module outside ``crystalframes.train`` imports in a fresh interpreter in which the
    training stack is unimportable (as after ``pip install .`` without extras)."""
    modules = sorted(
        ".".join(("crystalframes",) + p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for p in SRC.rglob("*.py")
        if SRC / "train" not in p.parents and p.name != "__main__.py"
    )
    code = (
        "import sys, importlib\n"
        f"for name in {TRAIN_ONLY_MODULES!r}:\n"
        "    sys.modules[name] = None  # import of it raises ImportError\n"
        f"for module in {modules!r}:\n"
        "    importlib.import_module(module)\n"
        "print(len(sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_package_version_is_the_one_pyproject_declares():
    from crystalframes import __version__

    assert __version__ == _pyproject()["project"]["version"]
