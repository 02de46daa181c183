#!/bin/bash
# omni3-import at TP2 and EP2 and omni3-export of each checkpoint at TP1, with --verify (issue 4), on a lent
# machine with 2 or more GPUs. Run from the repository root on the device, after the kit is set up
# (see ../shared/gpu/README.md):
#   source /tmp/omni3-gpu/env.sh && bash ci/gpu/install-extras.sh && bash ci/gpu/run-tools.sh [PYTEST_ARGS...]
# Uses $OMNI3_GPU_STORE/models/tiny_omni_hf when the SFT tests wrote it, else writes the tiny Omni itself.
# Per-tool logs, the pytest log and a JUnit report go to $OUT (or ./tools-out).
set -uo pipefail
OUT=${OUT:-$PWD/tools-out}; mkdir -p "$OUT/logs"
source ci/gpu/common.sh
export OMNI3_GPU_LOG_DIR="$OUT/logs"

require_modules run-tools.sh fire pydantic_settings yaml torch safetensors megatron.bridge
gpu_pytest tools tests/gpu/test_lifecycle_tools.py "$@"
