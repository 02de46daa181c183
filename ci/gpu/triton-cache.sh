#!/bin/bash
# Triton's autotuning results, carried from one lent GPU machine to the next. Every fresh machine otherwise spends
# about 2 minutes of each model's first iteration compiling and timing every candidate configuration of the Mamba
# and MoE kernels (ci/records/2026-11-27-gpu-x4.md). The results are small JSON files (<hash>/<kernel>.autotune.json)
# whose hash covers the Triton version, the GPU architecture (H100 and H200 are both sm_90), the kernel source and
# its candidate configurations, so a file from another machine of the same kit is only used where all of that matches.
#   pack CACHE_DIR TGZ      (GPU machine, end of run-all.sh) the .autotune.json files of CACHE_DIR into TGZ
#   unpack TGZ CACHE_DIR    (GPU machine, start of run-all.sh) a carried TGZ into CACHE_DIR
#   keep GPU_OUT_TGZ        (this machine, after a session) merge the triton-autotune.tgz inside a returned
#                           gpu-out.tgz into .gpu-triton/autotune.tgz, which the next session's last setup call carries
set -euo pipefail
KEPT=.gpu-triton/autotune.tgz

count() { find "$1" -name '*.autotune.json' | wc -l; }

case ${1:-} in
  pack)
    cache=$2 tgz=$3
    if [ ! -d "$cache" ]; then echo "[triton-cache] no cache at $cache"; exit 0; fi
    (cd "$cache" && find . -name '*.autotune.json' -print0 | tar czf "$tgz" --null -T -)
    echo "[triton-cache] packed $(count "$cache") autotuning results of $cache into $tgz"
    ;;
  unpack)
    tgz=$2 cache=$3
    if [ ! -f "$tgz" ]; then echo "[triton-cache] nothing carried ($tgz)"; exit 0; fi
    mkdir -p "$cache"
    # Only .autotune.json members, and never a path that leaves the cache (an absolute or ../ name).
    tar tzf "$tgz" | grep -E '^(\./)?[0-9A-Za-z_-]+/[^/]+\.autotune\.json$' > "$cache/.carried-list" || true
    tar xzf "$tgz" -C "$cache" --no-same-owner -T "$cache/.carried-list"
    rm -f "$cache/.carried-list"
    echo "[triton-cache] unpacked $(count "$cache") autotuning results into $cache"
    ;;
  keep)
    gpu_out=$2
    work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
    tar xzf "$gpu_out" -C "$work" ./triton-autotune.tgz 2>/dev/null \
      || { echo "[triton-cache] $gpu_out holds no triton-autotune.tgz"; exit 1; }
    mkdir -p "$work/merged" "$(dirname "$KEPT")"
    [ -f "$KEPT" ] && bash "$0" unpack "$KEPT" "$work/merged" > /dev/null
    bash "$0" unpack "$work/triton-autotune.tgz" "$work/merged" > /dev/null
    bash "$0" pack "$work/merged" "$PWD/$KEPT.new" > /dev/null && mv "$KEPT.new" "$KEPT"
    echo "[triton-cache] $KEPT holds $(count "$work/merged") autotuning results ($(du -h "$KEPT" | cut -f1))"
    ;;
  *)
    sed -n '2,11p' "$0"; exit 2 ;;
esac
