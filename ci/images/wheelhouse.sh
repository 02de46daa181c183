#!/usr/bin/env bash
# Fill build/wheelhouse/ with every wheel the tool images need, so images build without an index:
# the runtime requirements of omni3-shared and the six tools (without their `gpu` extras, which the
# NeMo framework image provides), their build backends, and torch (the CPU wheel pip's find-links
# offer on the development machines). Wheels are for CPython 3.11 on manylinux x86_64, the
# interpreter of omni3-base:local; this script therefore runs under a host Python 3.11.
#
# Cached: the directory records a hash of this script and every pyproject.toml; when it matches,
# nothing is downloaded. OMNI3_WHEELHOUSE_REFRESH=1 forces a refresh.
#
# Environment:
#   OMNI3_BUILD_DIR   scratch and cache directory (default <repo>/build); wheels go to <it>/wheelhouse
#   TORCH_VERSION     torch release to include (default 2.13.0)
#   PYTHON            host interpreter (default python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
build_dir="${OMNI3_BUILD_DIR:-${repo}/build}"
wheelhouse="${build_dir}/wheelhouse"
python="${PYTHON:-python3}"
torch_version="${TORCH_VERSION:-2.13.0}"
stamp="${wheelhouse}/.omni3-hash"

log() { printf '[wheelhouse] %s\n' "$*" >&2; }

cd "${repo}"
mapfile -t pyprojects < <(ls shared/pyproject.toml tools/*/pyproject.toml 2>/dev/null)
if [[ ${#pyprojects[@]} -eq 0 ]]; then
    log "no pyproject.toml under shared/ or tools/"
    exit 2
fi

py_version="$("${python}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "${py_version}" != "3.11" ]]; then
    log "${python} is Python ${py_version}; the images run Python 3.11, so run this with a 3.11 interpreter (PYTHON=...)"
    exit 2
fi

wanted="$(cat "${BASH_SOURCE[0]}" "${here}/pyproject_reqs.py" "${pyprojects[@]}" | sha256sum | cut -c1-16)-torch${torch_version}"
if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${wanted}" && "${OMNI3_WHEELHOUSE_REFRESH:-0}" != "1" ]]; then
    log "${wheelhouse} is up to date (${wanted})"
    exit 0
fi

start=${SECONDS}
mkdir -p "${wheelhouse}"
requirements="$(mktemp)"
trap 'rm -f "${requirements}"' EXIT
"${python}" "${here}/pyproject_reqs.py" --build-requires "${pyprojects[@]}" >"${requirements}"
# Pin torch so a newer (CUDA) release on the index does not win over the CPU wheel.
echo "torch==${torch_version}" >>"${requirements}"
# A fresh resolution must not be blocked by stale wheels; pip reuses files already present.
rm -f "${stamp}"
log "resolving $(wc -l <"${requirements}") requirements into ${wheelhouse}"
# `pip wheel` fetches wheels as they are and builds any sdist-only project into a wheel.
"${python}" -m pip wheel --quiet --wheel-dir "${wheelhouse}" --find-links "${wheelhouse}" \
    --requirement "${requirements}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
# Local projects are installed from source in the images, never from here.
rm -f "${wheelhouse}"/omni3_*.whl
echo "${wanted}" >"${stamp}"
log "$(find "${wheelhouse}" -name '*.whl' | wc -l) wheels, $(du -sh "${wheelhouse}" | cut -f1), in $((SECONDS - start))s"
