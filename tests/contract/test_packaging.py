"""Packaging drift: the workspace pyproject against the packages' own, and the tools' independence.

The root pyproject installs everything for development; each package's pyproject is what its image installs.
When they disagree, something works on a laptop and breaks in a container (or the other way round).
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
TOOL_DIRS = sorted(path.parent for path in (ROOT / "tools").glob("*/pyproject.toml"))
SHARED_DIR = ROOT / "shared"


def pyproject(directory: Path) -> dict[str, Any]:
    return tomllib.loads((directory / "pyproject.toml").read_text())


ROOT_PROJECT = pyproject(ROOT)
SOURCE_ROOTS: list[str] = ROOT_PROJECT["tool"]["setuptools"]["packages"]["find"]["where"]


def tool_package(tool_dir: Path) -> str:
    packages = [path.name for path in (tool_dir / "src").iterdir() if (path / "__init__.py").is_file()]
    assert len(packages) == 1, f"{tool_dir}/src must hold exactly one package, found {packages}"
    return packages[0]


TOOL_PACKAGES = {tool_package(tool_dir): tool_dir for tool_dir in TOOL_DIRS}


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_six_tools_are_there() -> None:
    assert sorted(path.name for path in TOOL_DIRS) == [
        "adapter_export",
        "export",
        "import",
        "lora_merge",
        "prep",
        "sft",
    ]


def test_root_scripts_are_the_union_of_the_tools_scripts() -> None:
    union: dict[str, str] = {}
    for tool_dir in TOOL_DIRS:
        scripts = pyproject(tool_dir)["project"].get("scripts", {})
        assert scripts, f"{tool_dir.name} declares no console script"
        assert not set(scripts) & set(union), f"{tool_dir.name} repeats a script name"
        union.update(scripts)
    assert ROOT_PROJECT["project"]["scripts"] == union


@pytest.mark.parametrize("tool_dir", TOOL_DIRS, ids=lambda path: path.name)
def test_each_tool_s_script_is_named_after_it_and_targets_its_cli(tool_dir: Path) -> None:
    scripts = pyproject(tool_dir)["project"]["scripts"]
    name = "omni3-" + tool_dir.name.replace("_", "-")
    assert scripts == {name: f"{tool_package(tool_dir)}.cli:main"}


@pytest.mark.parametrize("script", sorted(ROOT_PROJECT["project"]["scripts"]))
def test_every_script_target_imports_and_is_callable(script: str) -> None:
    module_name, _, function = ROOT_PROJECT["project"]["scripts"][script].partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, function))
    assert callable(module.cli), f"{module_name} needs cli(argv) -> int for in-process tests"


def test_the_workspace_finds_every_package_s_source() -> None:
    expected = ["shared/src", *((tool_dir / "src").relative_to(ROOT).as_posix() for tool_dir in TOOL_DIRS)]
    assert sorted(SOURCE_ROOTS) == sorted(expected)


def test_first_party_packages_known_to_isort() -> None:
    known = set(ROOT_PROJECT["tool"]["ruff"]["lint"]["isort"]["known-first-party"])
    assert known == {"omni3_shared", *TOOL_PACKAGES}


@pytest.mark.parametrize("tool_dir", TOOL_DIRS, ids=lambda path: path.name)
def test_each_tool_depends_on_omni3_shared(tool_dir: Path) -> None:
    project = pyproject(tool_dir)["project"]
    assert "omni3-shared" in {requirement_name(requirement) for requirement in project["dependencies"]}
    assert project["requires-python"] == ROOT_PROJECT["project"]["requires-python"]
    assert pyproject(tool_dir)["tool"]["setuptools"]["packages"]["find"]["where"] == ["src"]


@pytest.mark.parametrize("package_dir", [SHARED_DIR, *TOOL_DIRS], ids=lambda path: path.name)
def test_root_dependencies_cover_each_package_s(package_dir: Path) -> None:
    root = {requirement_name(requirement): requirement for requirement in ROOT_PROJECT["project"]["dependencies"]}
    for requirement in pyproject(package_dir)["project"]["dependencies"]:
        name = requirement_name(requirement)
        if name == "omni3-shared":
            continue
        assert name in root, f"{package_dir.name} needs {requirement!r}, the root pyproject does not install it"
        assert root[name].replace(" ", "") == requirement.replace(" ", ""), (
            f"{package_dir.name} asks for {requirement!r}, the root pyproject for {root[name]!r}"
        )


def imported_top_level_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def python_files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*.py") if "__pycache__" not in path.parts)


@pytest.mark.parametrize("tool_dir", TOOL_DIRS, ids=lambda path: path.name)
def test_no_tool_imports_another_tool(tool_dir: Path) -> None:
    own = tool_package(tool_dir)
    others = set(TOOL_PACKAGES) - {own}
    files = python_files(tool_dir / "src") + python_files(tool_dir / "tests")
    assert files
    offenders = {
        f"{path.relative_to(ROOT)} imports {module}"
        for path in files
        for module in imported_top_level_modules(path) & others
    }
    assert not offenders, "tools talk only through artifacts on storage: " + "; ".join(sorted(offenders))


def test_shared_imports_no_tool() -> None:
    files = python_files(SHARED_DIR / "src")
    offenders = {
        f"{path.relative_to(ROOT)} imports {module}"
        for path in files
        for module in imported_top_level_modules(path) & set(TOOL_PACKAGES)
    }
    assert not offenders
