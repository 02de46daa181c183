#!/bin/bash
# tests/gpu/test_sft_*.py in less wall time: the first stream checks the data path and the ConfigContainers, then
# trains tiny, building the shared storage root (tiny model, import, datasets); then the variant runs and the
# resume runs go side by side on the GPU(s) (each tiny run uses a few GB); then the parallel-layout runs, which
# need every GPU. Reports: $OUT/{first,variants,resume,parallel}/.
set -uo pipefail
OUT=${OUT:-$PWD/sft-out}
rc=0
stream() { local name=$1; shift; mkdir -p "$OUT/$name"; OUT="$OUT/$name" bash ci/gpu/run-sft.sh -q "$@" > "$OUT/$name.log" 2>&1; }
stream first -k "data_path or recipe or tiny_projector_only" || rc=1
stream variants -k "not tiny_projector_only and not resume and not parallel" & variants=$!
stream resume -k "resume" & resume=$!
wait $variants || rc=1
wait $resume || rc=1
stream parallel -k "parallel" || rc=1
for name in first variants resume parallel; do echo "-- $name"; grep -E "^\[sft-gpu|passed|failed|skipped|^E  " "$OUT/$name.log" | head -40; done
exit $rc
