#!/bin/bash
# Development aid, not a proof: runs Megatron-Bridge's data path and ConfigContainer tests on this CPU machine, to
# catch data and config mistakes before spending device time (it found three on 2026-11-26).
#   bash ci/dev/bridge-on-cpu.sh [PYTEST_ARGS...]
# Runs tests/gpu/test_sft_data_path.py and tests/gpu/test_sft_recipe.py (default) with the kit's Megatron-Bridge and
# Megatron-Core wheels and Transformer Engine & co. stubbed for import only (ci/dev/bridge_stubs). No model runs.
# Nothing run this way stands for a GPU result. Needs .gpu/ (bash ../shared/gpu/stage.sh) and, for the data path,
# .gpu-data/datasets/synth_{receipts,avqa} (omni3-prep synth). First run: ~300 MB of wheels into $BRIDGE_ON_CPU_DIR.
set -euo pipefail
D=${BRIDGE_ON_CPU_DIR:-/tmp/omni3-bridge-on-cpu}
if [ ! -f "$D/.ready" ]; then
  rm -rf "$D" && mkdir -p "$D/site"
  for wheel in .gpu/call6/payload/megatron_bridge-*.whl .gpu/call1/payload/megatron_core-*.whl \
               .gpu/call1/payload/decord-*.whl; do
    [ -f "$wheel" ] || { echo "bridge-on-cpu.sh: $wheel missing: run bash ../shared/gpu/stage.sh first" >&2; exit 2; }
    python3 -m zipfile -e "$wheel" "$D/site"
  done
  # What Megatron-Bridge imports that this machine lacks (the kit's versions where it pins them).
  python3 -m pip install -q --no-deps --target "$D/site" triton==3.9.0 omegaconf==2.4.0 \
    antlr4-python3-runtime==4.9.3 einops datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash pandas \
    librosa==0.11.0 audioread==3.1.0 soxr==1.1.0 pooch==1.9.0 lazy_loader numba llvmlite msgpack joblib \
    scikit-learn threadpoolctl narwhals tensorboard tensorboard-data-server protobuf werkzeug markdown grpcio \
    absl-py diffusers nvidia-modelopt==0.47.0 pulp
  touch "$D/.ready"
fi
export PYTHONPATH="$PWD/ci/dev/bridge_stubs:$D/site" OMNI3_GPU_DATA=${OMNI3_GPU_DATA:-$PWD/.gpu-data}
# -p no:omni3: without omni3's marker hook the gpu-marked tests are not skipped for want of CUDA.
[ $# -gt 0 ] || set -- tests/gpu/test_sft_data_path.py tests/gpu/test_sft_recipe.py
python3 -m pytest -p no:omni3 -q -W ignore "$@"
