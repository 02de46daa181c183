#!/bin/bash
# omni3-sft's GPU tests (issue 5) on a lent GPU machine, all from this one script.
# Run from the repository root on the device, after the kit is set up (see ../shared/gpu/README.md):
#   source /tmp/omni3-gpu/env.sh && bash ci/gpu/run-sft.sh [PYTEST_ARGS...]
# The omni3 packages run from the checkout (PYTHONPATH), the Megatron stack from the kit. Every tests/gpu/test_sft_*.py
# is collected; extra arguments go to pytest (e.g. -k recipe). Logs and a JUnit report go to $OUT (or ./sft-out).
set -uo pipefail
OUT=${OUT:-$PWD/sft-out}; mkdir -p "$OUT"
export PYTHONPATH="$PWD/shared/src:$PWD/tools/sft/src:$PWD/tools/import/src:$PWD/tools/prep/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # the machines have no network; nothing may reach for the hub

echo "== sft GPU tests on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $(nvidia-smi -L | wc -l) ($(date -u +%H:%M:%S))"
python3 - <<'PY' || exit 2
import importlib.util
import sys

missing = []
for module in ("fire", "pydantic_settings", "yaml", "torch", "megatron.bridge"):
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        missing.append(module)
if missing:
    sys.exit(f"run-sft.sh: missing {', '.join(missing)}: source /tmp/omni3-gpu/env.sh after the kit's setup")
PY
# Load omni3's marker hook unless an installed omni3 already registers it (pytest11 entry point).
plugin=(-p omni3_shared.pytest_plugin)
if python3 -c 'import importlib.metadata as m, sys; sys.exit(0 if any(e.name == "omni3" for e in m.entry_points(group="pytest11")) else 1)'; then
  plugin=()
fi
python3 -m pytest "${plugin[@]}" -m gpu -rA --junitxml="$OUT/sft-junit.xml" tests/gpu/test_sft_*.py "$@" 2>&1 \
  | tee "$OUT/sft-pytest.log"
exit "${PIPESTATUS[0]}"
