#!/bin/bash
# omni3-adapter-export and omni3-lora-merge on a lent GPU machine (issue 4), from a LoRA run made there by omni3-sft.
# Run from the repository root on the device, after the kit is set up (see ../shared/gpu/README.md):
#   source /tmp/omni3-gpu/env.sh && bash ci/gpu/install-extras.sh && \
#     OMNI3_GPU_LORA_RUN=/path/to/lora/run bash ci/gpu/run-adapters.sh [PYTEST_ARGS...]
# The omni3 packages run from the checkout (PYTHONPATH), the Megatron stack and peft from the machine and the kit.
# Extra arguments go to pytest (e.g. -k merge). Per-tool logs, the pytest log and a JUnit report go to $OUT
# (or ./adapters-out).
set -uo pipefail
OUT=${OUT:-$PWD/adapters-out}; mkdir -p "$OUT/logs"
src=$PWD/shared/src
for tool in tools/*/src; do src="$src:$PWD/$tool"; done
export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # the machines have no network; nothing may reach for the hub
export OMNI3_GPU_LOG_DIR="$OUT/logs"

if [ -z "${OMNI3_GPU_LORA_RUN:-}" ]; then
  echo "run-adapters.sh: set OMNI3_GPU_LORA_RUN to the run directory of a LoRA omni3-sft run on this machine" >&2
  exit 2
fi
echo "== adapter tools GPU tests on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $(nvidia-smi -L | wc -l)" \
  "($(date -u +%H:%M:%S)); LoRA run: $OMNI3_GPU_LORA_RUN"
python3 - <<'PY' || exit 2
import importlib.util
import sys

missing = []
for module in ("fire", "pydantic_settings", "yaml", "torch", "peft", "safetensors", "megatron.bridge"):
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        missing.append(module)
if missing:
    sys.exit(f"run-adapters.sh: missing {', '.join(missing)}: source /tmp/omni3-gpu/env.sh after the kit's setup")
PY
# Load omni3's marker hook unless an installed omni3 already registers it (pytest11 entry point).
plugin=(-p omni3_shared.pytest_plugin)
if python3 -c 'import importlib.metadata as m, sys; sys.exit(0 if any(e.name == "omni3" for e in m.entry_points(group="pytest11")) else 1)'; then
  plugin=()
fi
python3 -m pytest "${plugin[@]}" -m gpu -rA -s --junitxml="$OUT/adapters-junit.xml" tests/gpu/test_adapter_tools.py "$@" 2>&1 \
  | tee "$OUT/adapters-pytest.log"
exit "${PIPESTATUS[0]}"
