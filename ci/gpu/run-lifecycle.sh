#!/bin/bash
# Model-lifecycle proof on a lent GPU machine (issue 4): tiny Omni HF -> Megatron -> HF with AutoBridge.
# Run from the repository root on the device, after the kit is set up (see ../shared/gpu/README.md):
#   source /tmp/omni3-gpu/env.sh && bash ci/gpu/run-lifecycle.sh [NUM_GPUS]
# 1 GPU: TP1/EP1. 2 GPUs: also TP2 and EP2 (torchrun). Reports and logs go to $OUT (or ./lifecycle-out).
set -uo pipefail
N=${1:-1}
OUT=${OUT:-$PWD/lifecycle-out}; mkdir -p "$OUT"
W=${LIFECYCLE_WORK:-/tmp/omni3-lifecycle}; mkdir -p "$W"
rc=0
ONLY=${LIFECYCLE_ONLY:-tp1 tp2 ep2 tp2-to-tp1 ep2-to-tp1}  # which runs to make, e.g. LIFECYCLE_ONLY="tp2 ep2"
run() {  # $1 = label, $2 = nproc, $3 = tp, $4 = ep, [$5 = extra driver flags]
  case " $ONLY " in *" $1 "*) ;; *) return ;; esac
  echo "== $1: $2 process(es), TP=$3 EP=$4 ($(date -u +%H:%M:%S))"
  torchrun --nproc-per-node "$2" --master-port "$((29500 + RANDOM % 500))" \
    tests/gpu/lifecycle_driver.py --work "$W/$1" --hf "$W/hf" --tp "$3" --ep "$4" --report "$OUT/lifecycle-$1.json" ${5:-} \
    > "$OUT/lifecycle-$1.log" 2>&1 || rc=1
  grep '^\[lifecycle' "$OUT/lifecycle-$1.log" | cut -c1-600
}
run tp1 1 1 1
if [ "$N" -ge 2 ]; then
  run tp2 2 2 1
  run ep2 2 1 2
  # Checkpoints saved at TP2 and at EP2, exported by one process at TP1/EP1.
  run tp2-to-tp1 1 1 1 "--from-megatron $W/tp2/megatron"
  run ep2-to-tp1 1 1 1 "--from-megatron $W/ep2/megatron"
fi
exit $rc
