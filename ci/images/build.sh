#!/usr/bin/env bash
# Build the tool images offline (the repository's "make images"):
#   ci/images/build.sh [tool...]      tools by folder or image name: prep import sft lora_merge adapter_export export
#                                     (lora-merge, omni3-sft, ... work too); none given means all six
# Steps: the local base image (ci/images/base/build-base.sh, cached by hash), the wheelhouse
# (ci/images/wheelhouse.sh, cached), then omni3-<tool>:<version> and omni3-<tool>:latest for each tool,
# built FROM omni3-base:local with pip reading only the wheelhouse, served on a loopback port for the
# duration of the build (so wheels never enter the build context or an image layer).
#
# Environment:
#   OMNI3_BASE_IMAGE   base to build on (default omni3-base:local, built here when missing)
#   OMNI3_IMAGE_PREFIX image name prefix (default omni3-)
#   OMNI3_SOURCE_URL   value of the org.opencontainers.image.source label (default: git remote origin)
#   OMNI3_WHEELHOUSE_PORT  loopback port of the wheelhouse server (default 38917; part of the layer cache key)
#   DOCKER_BUILDKIT    0 unless set: the classic builder works without the buildx plugin
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
base_image="${OMNI3_BASE_IMAGE:-omni3-base:local}"
prefix="${OMNI3_IMAGE_PREFIX:-omni3-}"
export DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}"
all_tools=(prep import sft lora_merge adapter_export export)

log() { printf '[build] %s\n' "$*" >&2; }

tools=()
for arg in "${@:-${all_tools[@]}}"; do
    name="${arg#omni3-}"
    name="${name//-/_}"
    if [[ ! " ${all_tools[*]} " =~ [[:space:]]${name}[[:space:]] ]]; then
        log "unknown tool '${arg}'; expected one of: ${all_tools[*]}"
        exit 2
    fi
    tools+=("${name}")
done

cd "${repo}"
total_start=${SECONDS}

if [[ "${base_image}" == "omni3-base:local" ]]; then
    OMNI3_BASE_IMAGE="${base_image}" "${here}/base/build-base.sh"
elif ! docker image inspect "${base_image}" >/dev/null 2>&1; then
    log "base image ${base_image} is not present locally"
    exit 2
fi
"${here}/wheelhouse.sh"
log "base and wheelhouse ready after $((SECONDS - total_start))s"

# Serve the wheelhouse on a loopback port; build containers reach it through --network host. The port is part
# of a build argument, hence of the layer cache key: keep it fixed unless it is taken.
wheelhouse="${OMNI3_BUILD_DIR:-${repo}/build}/wheelhouse"
port="${OMNI3_WHEELHOUSE_PORT:-38917}"
port_free='import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does: TIME_WAIT is no obstacle
s.bind(("127.0.0.1", int(sys.argv[1])))'
if ! python3 -c "${port_free}" "${port}" 2>/dev/null; then
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    log "port ${OMNI3_WHEELHOUSE_PORT:-38917} is taken; serving the wheelhouse on ${port} (dependency layers rebuild)"
fi
python3 -m http.server --bind 127.0.0.1 --directory "${wheelhouse}" "${port}" >/dev/null 2>&1 &
server_pid=$!
trap 'kill "${server_pid}" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${port}/', timeout=1)" 2>/dev/null; then
        break
    fi
    sleep 0.1
done

revision="$(git -C "${repo}" rev-parse --verify --quiet HEAD 2>/dev/null || echo unknown)"
if [[ "${revision}" != unknown ]] && [[ -n "$(git -C "${repo}" status --porcelain 2>/dev/null)" ]]; then
    revision="${revision}-dirty"
fi
source_url="${OMNI3_SOURCE_URL:-$(git -C "${repo}" remote get-url origin 2>/dev/null || echo unknown)}"

for tool in "${tools[@]}"; do
    start=${SECONDS}
    image="${prefix}${tool//_/-}"
    version="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
        "tools/${tool}/pyproject.toml")"
    log "building ${image}:${version} (revision ${revision})"
    docker build --network host --force-rm --file "tools/${tool}/Dockerfile" \
        --build-arg "BASE_IMAGE=${base_image}" \
        --build-arg "WHEELHOUSE=http://127.0.0.1:${port}/" \
        --build-arg "VERSION=${version}" \
        --build-arg "REVISION=${revision}" \
        --build-arg "SOURCE=${source_url}" \
        --tag "${image}:${version}" --tag "${image}:latest" \
        . >"${OMNI3_BUILD_DIR:-${repo}/build}/image-${tool}.log" 2>&1 || {
        tail -n 40 "${OMNI3_BUILD_DIR:-${repo}/build}/image-${tool}.log" >&2
        log "building ${image} failed (log: build/image-${tool}.log)"
        exit 1
    }
    log "built ${image}:${version} and :latest in $((SECONDS - start))s"
done
# Earlier builds of these images leave untagged images behind; drop those built on an omni3 base.
docker image prune --force --filter "label=org.omni3.base.hash" >/dev/null || true
log "done in $((SECONDS - total_start))s"
