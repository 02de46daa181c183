"""Print the third-party requirements of one or more pyproject.toml files, one per line.

Used in two places so both agree on what a tool image needs:
- the tool Dockerfiles install these (ci/images/tool-install.sh deps) before copying any source, so the
  dependency layer is cached until a pyproject changes;
- ci/images/wheelhouse.sh downloads them (plus the build backends) for offline image builds.

Requirements naming one of the given projects (omni3-shared for a tool, say) are left out: those are
installed from source. Standard library only (tomllib needs Python 3.11 or newer).

Usage:
  python3 pyproject_reqs.py [--extra NAME]... [--build-requires] PYPROJECT...
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import tomllib

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"cannot read a project name from requirement {requirement!r}")
    return canonical(match.group(1))


def collect(pyprojects: list[Path], extras: list[str], build_requires: bool) -> list[str]:
    """The de-duplicated requirements of the given files, in first-seen order."""
    data = [tomllib.loads(path.read_text(encoding="utf-8")) for path in pyprojects]
    own = {canonical(d["project"]["name"]) for d in data if "project" in d}
    seen: set[str] = set()
    result: list[str] = []
    for item in data:
        project = item.get("project", {})
        requirements = list(project.get("dependencies", []))
        optional = project.get("optional-dependencies", {})
        for extra in extras:
            requirements.extend(optional.get(extra, []))
        if build_requires:
            requirements.extend(item.get("build-system", {}).get("requires", []))
        for requirement in requirements:
            requirement = requirement.strip()
            if requirement_name(requirement) in own or requirement in seen:
                continue
            seen.add(requirement)
            result.append(requirement)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyprojects", nargs="+", type=Path, help="pyproject.toml files")
    parser.add_argument("--extra", action="append", default=[], help="also list this optional-dependency group")
    parser.add_argument("--build-requires", action="store_true", help="also list [build-system] requires")
    args = parser.parse_args(argv)
    for path in args.pyprojects:
        if not path.is_file():
            print(f"pyproject_reqs: no such file: {path}", file=sys.stderr)
            return 2
    extras = [name for value in args.extra for name in value.split(",") if name.strip()]
    for line in collect(args.pyprojects, extras, args.build_requires):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
