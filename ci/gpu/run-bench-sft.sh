#!/bin/bash
# omni3-sft's benchmark (issue 5 item 7) on a lent GPU machine: tests/bench/sft.py with the kit's Megatron stack.
# Run from the repository root on the device, after the kit is set up (see ../shared/gpu/README.md):
#   source /tmp/omni3-gpu/env.sh && bash ci/gpu/run-bench-sft.sh --gpus 1 --dataset DATASET_DIR [BENCH_ARGS...]
# The dataset is built on the CPU machine and carried: CORD-sized receipts, about 1,500-1,900 image tokens each, from
#   OMNI3_STORAGE_ROOT=.gpu-data omni3-prep synth --kind receipts --sample 256 --receipt-width 1536 --output datasets/bench_receipts
# Work files (proxy checkpoints, runs) go to $BENCH_WORK (default /tmp/omni3-bench-sft); logs, summary and the
# record to $OUT (or ./bench-sft-out), the record also to ci/records/ when --record is not given.
set -uo pipefail
OUT=${OUT:-$PWD/bench-sft-out}; mkdir -p "$OUT"
WORK=${BENCH_WORK:-/tmp/omni3-bench-sft}; mkdir -p "$WORK"
source ci/gpu/common.sh

echo "== sft bench on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $(nvidia-smi -L | wc -l) ($(date -u +%H:%M:%S))"
df -h "$WORK" | tail -1
require_modules run-bench-sft.sh fire pydantic_settings yaml torch megatron.bridge omni3_sft omni3_import
record=(--record "$OUT/records")
for arg in "$@"; do [[ $arg == --record* ]] && record=(); done
python3 tests/bench/sft.py --work "$WORK" --out "$OUT" "${record[@]}" "$@" 2>&1 | tee "$OUT/bench-sft.log"
exit "${PIPESTATUS[0]}"
