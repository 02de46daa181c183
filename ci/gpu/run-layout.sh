#!/bin/bash
# Issue 6: the production layout at proxy scale, the whole chain (tests/gpu/test_production_layout.py), on a lent
# machine with 8 GPUs (TP4 x EP8 against TP4 x EP4) or 4 (TP2 x EP4 against TP2 x EP2). Run from the repository
# root on the device, after the kit is set up (see ../shared/gpu/README.md):
#   source /tmp/omni3-gpu/env.sh && bash ci/gpu/install-extras.sh && bash ci/gpu/run-layout.sh [main] [PYTEST_ARGS...]
# "main" runs only the main layout's chain (import, the two trainings, export and adapter-export: about 9 minutes on
# 4 H200s), not the reference runs on half the GPUs (run-all.sh: layout=main).
# Needs $OMNI3_GPU_DATA/datasets/synth_receipts (omni3-prep synth on the CPU machine, carried). Per-tool logs,
# layout-summary.json, the pytest log and a JUnit report go to $OUT (or ./layout-out).
set -uo pipefail
OUT=${OUT:-$PWD/layout-out}; mkdir -p "$OUT/logs"
source ci/gpu/common.sh
export OMNI3_GPU_LOG_DIR="$OUT/logs"

require_modules run-layout.sh fire pydantic_settings yaml torch safetensors peft megatron.bridge
MAIN_LAYOUT_ONLY="not half_the_gpus and not summary"
if [ "${1:-}" = main ]; then shift; set -- -k "$MAIN_LAYOUT_ONLY" "$@"; fi
gpu_pytest layout tests/gpu/test_production_layout.py "$@"
