# Sourced by the ci/gpu/run-*.sh scripts: the checkout's packages on PYTHONPATH, no hub, and two helpers.
# The omni3 packages run from the checkout, the Megatron stack from the kit (source /tmp/omni3-gpu/env.sh first).
omni3_src=$PWD/shared/src
for tool_src in "$PWD"/tools/*/src; do omni3_src="$omni3_src:$tool_src"; done
export PYTHONPATH="$omni3_src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # the machines have no network; nothing may reach for the hub

# require_modules SCRIPT MODULE...: exit 2 naming what is missing, before any long work.
require_modules() {
  local script=$1; shift
  python3 - "$script" "$@" <<'PY' || exit 2
import importlib.util
import sys

script, modules = sys.argv[1], sys.argv[2:]
missing = []
for module in modules:
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        missing.append(module)
if missing:
    sys.exit(f"{script}: missing {', '.join(missing)}: source /tmp/omni3-gpu/env.sh after the kit's setup")
PY
}

# Load omni3's marker hook unless an installed omni3 already registers it (pytest11 entry point).
OMNI3_PYTEST_PLUGIN=(-p omni3_shared.pytest_plugin)
if python3 -c 'import importlib.metadata as m, sys; sys.exit(0 if any(e.name == "omni3" for e in m.entry_points(group="pytest11")) else 1)'; then
  OMNI3_PYTEST_PLUGIN=()
fi

# gpu_pytest NAME TEST_FILE [PYTEST_ARGS...]: the file's gpu-marked tests, output shown as it comes (-s), a JUnit
# report in $OUT/NAME-junit.xml and the log in $OUT/NAME-pytest.log; returns pytest's exit code.
gpu_pytest() {
  local name=$1; shift
  echo "== $name GPU tests on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x" \
    "$(nvidia-smi -L | wc -l) ($(date -u +%H:%M:%S))"
  python3 -m pytest "${OMNI3_PYTEST_PLUGIN[@]}" -m gpu -rA -s --junitxml="$OUT/$name-junit.xml" "$@" 2>&1 \
    | tee "$OUT/$name-pytest.log"
  return "${PIPESTATUS[0]}"
}
