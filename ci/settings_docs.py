"""Regenerate the settings tables in README.md from the tools' settings models.

    python3 ci/settings_docs.py          # rewrite the tables in place
    python3 ci/settings_docs.py --check  # exit 1 when README.md is out of date (tests/contract checks it too)

Each table sits between ``<!-- settings:omni3-TOOL -->`` and ``<!-- /settings:omni3-TOOL -->``.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

from omni3_shared.settings import render_settings_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
TOOLS = ("prep", "import", "sft", "lora_merge", "adapter_export", "export")


def settings_class(tool: str) -> type:
    module = importlib.import_module(f"omni3_{tool}.cli")
    commands = next(
        value for value in vars(module).values() if isinstance(value, type) and hasattr(value, "_settings_cls")
    )
    return commands._settings_cls


def render(text: str) -> str:
    for tool in TOOLS:
        name = "omni3-" + tool.replace("_", "-")
        pattern = re.compile(rf"(<!-- settings:{name} -->\n).*?(<!-- /settings:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no settings block for {name}")
        table = render_settings_markdown(settings_class(tool))
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
