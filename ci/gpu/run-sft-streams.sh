#!/bin/bash
# tests/gpu/test_sft_*.py in less wall time, as streams:
#   first     the data path, the ConfigContainers, then tiny, which builds the shared storage root (tiny model,
#             import, datasets); every later stream reuses it
#   tiny      only tiny (the storage root), when the data path and the ConfigContainers need no new proof
#   variants  every other variant, and, side by side with it and with each other,
#   resume    the SIGTERM and SIGKILL resume tests (each tiny run uses a few GB of one GPU)
#   lora      only the LoRA variant image_text_peft (the adapters step's input), a part of variants
#   sigkill   only the SIGKILL resume test, a part of resume
#   parallel  the parallel layouts against one GPU, on every GPU (side by side with the streams above: tiny
#             runs take a few GB, so they share the GPUs; only the wall time grows)
#   ep4       only EP4 against one GPU, a part of parallel (4 GPUs)
# Usage: bash ci/gpu/run-sft-streams.sh [STREAM...] (default: all, in that order). Reports: $OUT/STREAM/.
set -uo pipefail
OUT=${OUT:-$PWD/sft-out}
STREAMS=${*:-first variants resume parallel}
rc=0
stream() { local name=$1; shift; mkdir -p "$OUT/$name"; OUT="$OUT/$name" bash ci/gpu/run-sft.sh -q "$@" > "$OUT/$name.log" 2>&1; }
wanted() { case " $STREAMS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if wanted first; then stream first -k "data_path or recipe or tiny_projector_only" || rc=1; fi
if wanted tiny; then stream tiny -k "tiny_projector_only" || rc=1; fi
pids=()
if wanted variants; then stream variants -k "sft_train and not tiny_projector_only and not resume and not parallel" & pids+=($!); fi
if wanted lora; then stream lora -k "image_text_lora" & pids+=($!); fi
if wanted resume; then stream resume -k "sft_train and resume" & pids+=($!); fi
if wanted sigkill; then stream sigkill -k "resume_after_kill and sigkill" & pids+=($!); fi
if wanted parallel; then stream parallel -k "sft_train and parallel" & pids+=($!); fi
if wanted ep4; then stream ep4 -k "sft_train and parallel and ep4" & pids+=($!); fi
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
for name in $STREAMS; do echo "-- $name"; grep -E "^\[sft-gpu|passed|failed|skipped|^E  " "$OUT/$name.log" | head -40; done
exit $rc
