"""Fresh-install guards: every module imports, every import is declared, every command has help.

Run by ``.ci/run`` in a new virtual environment, so a module that needs a package the
project does not declare fails here rather than in a user's hands.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata as md
import pkgutil
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from mrict.cli import COMMAND_MODULES, app

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "mrict"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

#: Declared dependencies that no ``import`` statement names, and what uses them.
IMPLICIT = {
    "pylibjpeg": "pydicom's decoder for compressed DICOM (JPEG, JPEG-LS, JPEG 2000, RLE)",
    "pylibjpeg-libjpeg": "pylibjpeg plugin: JPEG and JPEG-LS DICOM",
    "pylibjpeg-openjpeg": "pylibjpeg plugin: JPEG 2000 DICOM",
    "pylibjpeg-rle": "pylibjpeg plugin: RLE Lossless DICOM",
    "onnx": "torch.onnx.export (TorchScript exporter) in mrict.translation.export",
    "tensorboard": "torch.utils.tensorboard in mrict.translation.trainer",
}


def _modules(path: Path, prefix: str) -> list[str]:
    """Every module and package under ``path``, found without importing any of them."""
    names = []
    for info in pkgutil.iter_modules([str(path)]):
        name = prefix + info.name
        names.append(name)
        if info.ispkg:
            names += _modules(path / info.name, name + ".")
    return names


MODULES = ["mrict", *_modules(SRC, "mrict.")]


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_every_command_module_is_present() -> None:
    # cli skips a command module that does not exist; all of them must exist now
    for name in COMMAND_MODULES:
        assert name in MODULES, f"{name} is listed in mrict.cli but missing"


# ---- declared dependencies against import statements ----


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(reqs: list[str]) -> set[str]:
    return {_canonical(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in reqs}


DEPENDENCIES = _requirement_names(PYPROJECT["project"]["dependencies"])
TEST_EXTRA = _requirement_names(PYPROJECT["project"]["optional-dependencies"]["test"])


def _third_party_imports(folder: Path) -> dict[str, set[str]]:
    """Top-level names of every absolute import in ``folder``'s .py files (also those inside
    functions), not stdlib and not local, mapped to the files that import them."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                local = (
                    top in ("mrict", "bench", "tests")
                    or (path.parent / f"{top}.py").is_file()
                    or (path.parent / top / "__init__.py").is_file()
                )
                if top not in sys.stdlib_module_names and not local:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@functools.cache
def _installed() -> dict[str, list[str]]:
    return md.packages_distributions()


def _distributions(top: str) -> set[str]:
    return {_canonical(d) for d in _installed().get(top, [])}


def _undeclared(folder: Path, allowed: set[str]) -> list[str]:
    problems = []
    for top, files in sorted(_third_party_imports(folder).items()):
        dists = _distributions(top)
        if not dists:
            problems.append(f"{top} (imported by {', '.join(sorted(files))}) is not installed")
        elif not dists & allowed:
            problems.append(
                f"{top} (imported by {', '.join(sorted(files))}) comes from "
                f"{', '.join(sorted(dists))}, which pyproject.toml does not declare"
            )
    return problems


@pytest.mark.parametrize("folder", ["src", "bench"])
def test_every_import_is_declared(folder: str) -> None:
    assert _undeclared(ROOT / folder, DEPENDENCIES) == []


def test_every_test_import_is_declared() -> None:
    assert _undeclared(ROOT / "tests", DEPENDENCIES | TEST_EXTRA) == []


def _installed_distributions() -> set[str]:
    return {_canonical(d.metadata["Name"]) for d in md.distributions()}


def test_every_dependency_is_installed() -> None:
    missing = DEPENDENCIES - _installed_distributions()
    assert missing == set(), f"declared but not installed: {sorted(missing)}"


def test_every_dependency_is_used() -> None:
    imported = {
        dist
        for folder in ("src", "bench")
        for top in _third_party_imports(ROOT / folder)
        for dist in _distributions(top)
    }
    # a missing package cannot be matched to its imports; the test above reports it
    unused = DEPENDENCIES - imported - set(IMPLICIT) - (DEPENDENCIES - _installed_distributions())
    assert unused == set(), f"declared but never imported: {sorted(unused)}"
    stale = {name for name in IMPLICIT if name not in DEPENDENCIES}
    assert stale == set(), f"IMPLICIT lists undeclared packages: {sorted(stale)}"


# ---- the command line ----


def _command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command of a click group (typer may vendor its own click)."""
    paths = []
    for name, command in sorted(group.commands.items()):
        paths.append((*prefix, name))
        if hasattr(command, "commands"):
            paths += _command_paths(command, (*prefix, name))
    return paths


COMMANDS = _command_paths(typer.main.get_command(app))


def test_commands_are_registered() -> None:
    names = {path[0] for path in COMMANDS}
    assert {"version", "demo", "study", "eval-translation"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_command_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], prog_name="mrict")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output.strip().splitlines()) > 2


def test_console_script_help() -> None:
    exe = shutil.which("mrict", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the mrict console script is not installed next to this Python")
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout


# ---- CI runs the README's test command ----


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    match = re.search(r"^TEST_COMMAND='(.+)'$", ci, re.MULTILINE)
    assert match, ".ci/run defines no TEST_COMMAND"
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert match.group(1) in readme, "README.md does not show .ci/run's test command verbatim"
