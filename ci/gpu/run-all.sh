#!/bin/bash
# Every GPU proof of this checkout, one step after the other (a failing step does not stop the next ones):
#   sft        tests/gpu/test_sft_*.py: the data path, each variant trains at tiny size, resume after SIGTERM/SIGKILL,
#              TP2/EP4 (ci/gpu/run-sft-streams.sh; sft=first,resume runs only those streams)
#   adapters   omni3-adapter-export and omni3-lora-merge on the LoRA run the sft step leaves
#   lifecycle  HF -> Megatron -> HF round trips (TP1; TP2, EP2 and their exports with 2+ GPUs);
#              lifecycle=tp2,ep2 makes only those (LIFECYCLE_ONLY of ci/gpu/run-lifecycle.sh)
#   tools      omni3-import at TP2 and EP2, omni3-export of each at TP1, both with --verify (2+ GPUs)
#   layout     issue 6: the production layout at proxy scale, import -> sft (default, LoRA) -> export and
#              adapter-export, against half the GPUs (TP4 x EP8 on 8 GPUs, TP2 x EP4 on 4); layout=main leaves out
#              the runs on half the GPUs
#   bench      tests/bench/sft.py on 4 GPUs where the machine has 4 or more, else on 1
#              (dataset: $OMNI3_GPU_DATA/datasets/bench_receipts, CORD-sized: see run-bench-sft.sh);
#              bench=--micro-batch,8,--micro-batches,4 passes those arguments
# Usage, from the repository root after the kit's setup: source /tmp/omni3-gpu/env.sh && bash ci/gpu/run-all.sh [STEPS]
# Steps run one after the other; A+B runs A and B side by side (e.g. sft+lifecycle adapters bench).
# Each step logs to $OUT/NAME.log and writes its reports under $OUT/NAME/ (NAME: the step with = and , as -).
set -uo pipefail
source /tmp/omni3-gpu/env.sh
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
GPUS=$(nvidia-smi -L | wc -l)
BENCH_GPUS=$([ "$GPUS" -ge 4 ] && echo 4 || echo 1)  # the bench knows 1 GPU and 4 (EP4, with its 1-GPU baseline)
export OMNI3_GPU_STORE=${OMNI3_GPU_STORE:-/tmp/omni3-gpu-store} OMNI3_GPU_DATA=${OMNI3_GPU_DATA:-$PWD/.gpu-data}
export OMNI3_GPU_LORA_RUN=$OMNI3_GPU_STORE/runs/image_text_peft PYTHONUNBUFFERED=1
# One Triton cache for every step (omni3-sft and the bench take it over their own defaults), seeded with the
# autotuning results an earlier machine left (.gpu-triton, carried) and packed into $OUT for the next one.
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/omni3-triton-cache} TRITON_CACHE_AUTOTUNING=1
bash ci/gpu/triton-cache.sh unpack .gpu-triton/autotune.tgz "$TRITON_CACHE_DIR"
STEPS=${*:-sft adapters lifecycle}
echo "== $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $GPUS; steps: $STEPS ($(date -u +%F\ %T))"
run_step() {  # $1 = step[=options]
  local step=${1%%=*} options= command
  [ "$1" != "$step" ] && options=${1#*=}
  case $step in
    sft) command=(bash ci/gpu/run-sft-streams.sh ${options//,/ }) ;;
    adapters) command=(bash ci/gpu/run-adapters.sh) ;;
    lifecycle) command=(env LIFECYCLE_ONLY="${options//,/ }" bash ci/gpu/run-lifecycle.sh "$GPUS") ;;
    tools) command=(bash ci/gpu/run-tools.sh) ;;
    layout) command=(bash ci/gpu/run-layout.sh ${options//,/ }) ;;  # layout=main: the main layout's chain only
    bench) command=(bash ci/gpu/run-bench-sft.sh --gpus "$BENCH_GPUS" --dataset "$OMNI3_GPU_DATA/datasets/bench_receipts"
                    ${options//,/ }) ;;  # bench=--micro-batch,8: more arguments of tests/bench/sft.py
    *) echo "unknown step $step"; return 2 ;;
  esac
  local name=${1//[=,]/-}  # sft=tiny and sft=lora,sigkill keep their own logs
  echo "== $1: ${command[*]} ($(date -u +%T))"
  mkdir -p "$OUT/$name"
  if ! OUT="$OUT/$name" "${command[@]}" > "$OUT/$name.log" 2>&1; then echo "!! $1 failed ($(date -u +%T))"; return 1; fi
  echo "== $1 passed ($(date -u +%T))"
}
rc=0
for group in $STEPS; do
  pids=()
  for step in ${group//+/ }; do run_step "$step" & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  for step in ${group//+/ }; do grep -E '^\[(sft-gpu|lifecycle|tools-gpu|adapters|gpu-tool)|passed|failed|error' "$OUT/${step//[=,]/-}.log" | tail -40; done
done
bash ci/gpu/triton-cache.sh pack "$TRITON_CACHE_DIR" "$OUT/triton-autotune.tgz" || true
echo "== done ($(date -u +%T)), exit $rc"
exit $rc
