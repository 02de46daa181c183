#!/bin/bash
# Installs into /tmp/site the wheels in ./.whl whose module the GPU machine lacks (the kit misses
# multi-storage-client and pulp, which megatron.bridge.training and the Omni collate path import).
# Only missing modules are installed, so the machine's own versions are never shadowed.
set -uo pipefail
declare -A MOD=([multi_storage_client]=multistorageclient [pulp]=pulp [jmespath]=jmespath [jsonschema]=jsonschema
  [attrs]=attrs [referencing]=referencing [rpds_py]=rpds [jsonschema_specifications]=jsonschema_specifications
  [python_dateutil]=dateutil [six]=six [opentelemetry_api]=opentelemetry.trace [importlib_metadata]=importlib_metadata
  [zipp]=zipp [xattr]=xattr [wcmatch]=wcmatch [bracex]=bracex [lark]=lark [prettytable]=prettytable [wcwidth]=wcwidth
  [psutil]=psutil [pyroute2]=pyroute2 [orloge]=orloge [tzdata]=tzdata [filelock]=filelock [tqdm]=tqdm
  [typing_extensions]=typing_extensions [cpsat_logutils]=cpsat_logutils [braceexpand]=braceexpand [rapidyaml]=ryml [markdown_it_py]=markdown_it [pygments]=pygments [python_dotenv]=dotenv
  [nvidia_ml_py]=pynvml [nvidia_resiliency_ext]=nvidia_resiliency_ext.inprocess)
for wheel in .whl/*.whl; do
  dist=$(basename "$wheel" | cut -d- -f1 | tr 'A-Z' 'a-z')
  module=${MOD[$dist]:-$dist}
  if ! PYTHONPATH=/tmp/site python3 -c "import $module" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$wheel" && echo "installed $dist"
  fi
done

# Two gaps of the kit's Megatron stack that stop Megatron-Bridge's training entry point (seen 2026-11-26):
# - megatron-core >= 0.19 asserts nvidia-resiliency-ext >= 0.6.0 at import, but the newest wheel for this machine's
#   glibc is 0.4.1, a namespace package without __version__. Only the in-process-restart import is used here.
nre=/tmp/site/nvidia_resiliency_ext
if [ -d "$nre" ] && [ ! -f "$nre/__init__.py" ]; then
  echo '__version__ = "0.6.0"  # omni3 kit shim: the 0.4.1 wheel; megatron-core asserts >= 0.6.0' > "$nre/__init__.py"
  echo "patched nvidia_resiliency_ext version"
fi
# - initialize_megatron runs `make` in megatron/core/datasets to build helpers_cpp; the wheel ships the built
#   library but no Makefile, so make fails and training exits 1. A Makefile with nothing to do keeps the library.
datasets=$(PYTHONPATH=/tmp/site python3 -c "import megatron.core.datasets as m, os; print(os.path.dirname(m.__file__))" 2>/dev/null)
if [ -n "$datasets" ] && [ ! -f "$datasets/Makefile" ] && ls "$datasets"/helpers_cpp*.so >/dev/null 2>&1; then
  printf 'default:\n\t@true\n' > "$datasets/Makefile" && echo "added a no-op Makefile for megatron.core.datasets"
fi
