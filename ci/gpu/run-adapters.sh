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
source ci/gpu/common.sh
export OMNI3_GPU_LOG_DIR="$OUT/logs"

if [ -z "${OMNI3_GPU_LORA_RUN:-}" ]; then
  echo "run-adapters.sh: set OMNI3_GPU_LORA_RUN to the run directory of a LoRA omni3-sft run on this machine" >&2
  exit 2
fi
echo "LoRA run: $OMNI3_GPU_LORA_RUN"
require_modules run-adapters.sh fire pydantic_settings yaml torch peft safetensors megatron.bridge
gpu_pytest adapters tests/gpu/test_adapter_tools.py "$@"
