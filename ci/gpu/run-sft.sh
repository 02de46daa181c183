#!/bin/bash
# omni3-sft's GPU tests (issue 5) on a lent GPU machine, all from this one script.
# Run from the repository root on the device, after the kit is set up (see ../shared/gpu/README.md):
#   source /tmp/omni3-gpu/env.sh && bash ci/gpu/run-sft.sh [PYTEST_ARGS...]
# The omni3 packages run from the checkout (PYTHONPATH), the Megatron stack from the kit. Every tests/gpu/test_sft_*.py
# is collected; extra arguments go to pytest (e.g. -k recipe). Logs and a JUnit report go to $OUT (or ./sft-out).
set -uo pipefail
OUT=${OUT:-$PWD/sft-out}; mkdir -p "$OUT"
source ci/gpu/common.sh

echo "== sft GPU tests on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $(nvidia-smi -L | wc -l) ($(date -u +%H:%M:%S))"
require_modules run-sft.sh fire pydantic_settings yaml torch megatron.bridge
python3 -m pytest "${OMNI3_PYTEST_PLUGIN[@]}" -m gpu -rA --junitxml="$OUT/sft-junit.xml" tests/gpu/test_sft_*.py "$@" 2>&1 \
  | tee "$OUT/sft-pytest.log"
exit "${PIPESTATUS[0]}"
