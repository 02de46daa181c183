#!/bin/bash
# omni3-sft's benchmark (issue 5 item 7) on a lent GPU machine: tests/bench/sft.py with the kit's Megatron stack.
# Run from the repository root on the device, after the kit is set up (see ../shared/gpu/README.md):
#   source /tmp/omni3-gpu/env.sh && bash ci/gpu/run-bench-sft.sh --gpus 1 --dataset DATASET_DIR [BENCH_ARGS...]
# The dataset is built on the CPU machine (omni3-prep synth --kind receipts --sample N --output DIR) and carried.
# Work files (proxy checkpoints, runs) go to $BENCH_WORK (default /tmp/omni3-bench-sft); logs, summary and the
# record to $OUT (or ./bench-sft-out), the record also to ci/records/ when --record is not given.
set -uo pipefail
OUT=${OUT:-$PWD/bench-sft-out}; mkdir -p "$OUT"
WORK=${BENCH_WORK:-/tmp/omni3-bench-sft}; mkdir -p "$WORK"
export PYTHONPATH="$PWD/shared/src:$PWD/tools/sft/src:$PWD/tools/import/src:$PWD/tools/prep/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # the machines have no network; nothing may reach for the hub

echo "== sft bench on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $(nvidia-smi -L | wc -l) ($(date -u +%H:%M:%S))"
df -h "$WORK" | tail -1
python3 - <<'PY' || exit 2
import importlib.util
import sys

missing = []
for module in ("fire", "pydantic_settings", "yaml", "torch", "megatron.bridge", "omni3_sft", "omni3_import"):
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        missing.append(module)
if missing:
    sys.exit(f"run-bench-sft.sh: missing {', '.join(missing)}: source /tmp/omni3-gpu/env.sh after the kit's setup")
PY
record=(--record "$OUT/records")
for arg in "$@"; do [[ $arg == --record* ]] && record=(); done
python3 tests/bench/sft.py --work "$WORK" --out "$OUT" "${record[@]}" "$@" 2>&1 | tee "$OUT/bench-sft.log"
exit "${PIPESTATUS[0]}"
