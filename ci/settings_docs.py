"""Regenerate the settings tables in README.md from the tools' settings models.

    python3 ci/settings_docs.py          # rewrite the tables in place
    python3 ci/settings_docs.py --check  # exit 1 when README.md is out of date (tests/contract checks it too)

Each table sits between ``<!-- settings:omni3-TOOL -->`` and ``<!-- /settings:omni3-TOOL -->`` and is
exactly what ``omni3-TOOL settings --markdown`` prints.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
TOOLS = ("omni3-prep", "omni3-import", "omni3-sft", "omni3-lora-merge", "omni3-adapter-export", "omni3-export")


def render(text: str) -> str:
    for name in TOOLS:
        pattern = re.compile(rf"(<!-- settings:{name} -->\n).*?(<!-- /settings:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no settings block for {name}")
        table = subprocess.run([name, "settings", "--markdown"], capture_output=True, text=True, check=True).stdout
        text = pattern.sub(lambda m, table=table: m.group(1) + table + m.group(2), text)
    return text


def main() -> int:
    current = README.read_text()
    updated = render(current)
    if "--check" in sys.argv:
        if updated != current:
            print("README.md settings tables are out of date: run python3 ci/settings_docs.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
