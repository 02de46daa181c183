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
  [typing_extensions]=typing_extensions [cpsat_logutils]=cpsat_logutils [braceexpand]=braceexpand [rapidyaml]=ryml [markdown_it_py]=markdown_it [pygments]=pygments [python_dotenv]=dotenv)
for wheel in .whl/*.whl; do
  dist=$(basename "$wheel" | cut -d- -f1 | tr 'A-Z' 'a-z')
  module=${MOD[$dist]:-$dist}
  if ! PYTHONPATH=/tmp/site python3 -c "import $module" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$wheel" && echo "installed $dist"
  fi
done
