#!/bin/bash
# Run here, from the project root: downloads into ./.whl (git-ignored) the wheels the GPU kit lacks for
# megatron.bridge.training (Megatron checkpoint save/load) and the Omni collate path (through megatron-energon).
# Carry ".whl" in a device call and run ci/gpu/install-extras.sh there (installs only what is missing).
set -euo pipefail
PLAT="--only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_31_x86_64 --platform any"
mkdir -p .whl
python3 -m pip download -q --no-deps $PLAT -d .whl \
  multi-storage-client pulp cpsat-logutils orloge jmespath jsonschema attrs referencing rpds-py \
  jsonschema-specifications python-dateutil six opentelemetry-api importlib-metadata zipp xattr wcmatch bracex \
  lark prettytable wcwidth psutil pyroute2 tzdata filelock tqdm typing-extensions braceexpand rapidyaml \
  click filetype mfusepy webdataset s3fs fsspec aiobotocore einops rich markdown-it-py mdurl pygments deprecation \
  python-dotenv diffusers termcolor nvidia-resiliency-ext defusedxml nvidia-ml-py  # pydantic-settings imports dotenv; megatron.bridge.recipes imports the diffusion bridges
du -sh .whl
