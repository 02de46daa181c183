#!/bin/bash
# The kit's compiled packages (transformer-engine-torch, mamba-ssm, causal-conv1d for sm_90) carried from an earlier
# machine, so that a fresh one is ready in about 2 minutes instead of 9. Runs ON the lent GPU machine.
#   harvest K : on a machine the kit set up, split its built wheels into 15 MiB parts and put parts 5K..5K+4 (and
#               SHA256SUMS) under $OUT; fetch them into .gpu-built/ here (git-ignored), K = 0, 1, ... until none left
#   receive   : copy the carried .gpu-built/ parts to /tmp/omni3-gpu/prebuilt (after the kit's call 1: it also
#               stops the kit's background compiles, which this replaces)
#   finish    : the kit's `finish` with the carried wheels instead of compiling: join split files, check every
#               checksum, install into /tmp/site, write /tmp/site/.ready
# Falls back to nothing: if a part is missing or a checksum fails it exits 1; then run the kit's own `finish`.
set -uo pipefail
W=/tmp/omni3-gpu; S=/tmp/site; P=$W/prebuilt
log() { echo "[prebuilt $(date +%H:%M:%S)] $*"; }
case "${1:-}" in
harvest)
  H=$W/harvest
  if [ ! -f $H/SHA256SUMS ]; then
    rm -rf $H && mkdir -p $H && cd $W/built || exit 1
    sha256sum ./*.whl > $H/WHEELS.SHA256SUMS
    for wheel in ./*.whl; do split -b 15M -d -a 2 "$wheel" "$H/${wheel#./}.part-"; done
    (cd $H && sha256sum ./*.part-* > SHA256SUMS)
  fi
  cd $H && ls ./*.part-* | sort | sed -n "$((5 * ${2:-0} + 1)),$((5 * ${2:-0} + 5))p" | xargs -r cp -t "$OUT"
  cp SHA256SUMS WHEELS.SHA256SUMS "$OUT"/
  log "$(ls "$OUT" | grep -c part) part(s) from number $((5 * ${2:-0})); $(ls ./*.part-* | wc -l) in all; sizes:"
  ls -la $W/built ;;
receive)
  pkill -f "pip wheel" ; pkill -f build_sm90
  mkdir -p $P && cp .gpu-built/* $P/ && log "received $(ls .gpu-built | wc -l) file(s)" ;;
finish)
  [ -f $S/.ready ] && { log "already set up on this machine"; exit 0; }
  (cd $P && sha256sum -c --quiet SHA256SUMS) || { log "a carried part is missing or damaged"; exit 1; }
  cd $W/in || exit 1
  for first in *.part-0 $P/*.part-00; do
    [ -e "$first" ] || continue; f=${first%.part-*}
    cat $(ls "$f".part-* | sort) > "$f" && rm "$f".part-*
  done
  sha256sum -c --quiet $W/SHA256SUMS || { log "checksum mismatch: a kit call is missing or was cut"; exit 1; }
  (cd $P && sha256sum -c --quiet WHEELS.SHA256SUMS) || { log "a joined wheel is damaged"; exit 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target $S ./*.whl || exit 1
  PYTHONPATH=$S python3 -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target $S ./antlr4*.tar.gz || exit 1
  # pip --target skips folders that already exist: install apart, then merge (as the kit does).
  rm -rf $W/t2; python3 -m pip install -q --no-index --no-deps --target $W/t2 $P/*.whl && cp -r $W/t2/. $S/ || exit 1
  PYTHONPATH=$S python3 -c "import transformer_engine.pytorch, mamba_ssm, causal_conv1d, megatron.bridge" 2>&1 | grep -v -i warn | tail -3
  touch $S/.ready; log "GPU stack ready in $S: source /tmp/omni3-gpu/env.sh" ;;
*) echo "usage: prebuilt.sh harvest K | receive | finish" >&2; exit 2 ;;
esac
