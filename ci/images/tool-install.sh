#!/bin/sh
# The build steps every tool image shares, run as root inside `docker build` by tools/<tool>/Dockerfile.
# The Dockerfile copies this script and pyproject_reqs.py into /tmp/omni3-build/ in an early layer of their own,
# then calls one subcommand per layer:
#   tool-install.sh user            the unprivileged user omni3 (uid/gid 1000; a base that already has uid 1000,
#                                   such as Ubuntu's "ubuntu", gets that user renamed), /data and its home
#   tool-install.sh deps            the third-party requirements of deps/shared/pyproject.toml and
#                                   deps/tool/pyproject.toml (plus the EXTRAS groups): the dependency layer
#   tool-install.sh source SCRIPT   omni3-shared and the tool from src/shared and src/tool without dependencies,
#                                   then removes /tmp/omni3-build (this script included) and runs `SCRIPT --help`
# Environment (the Dockerfiles' build arguments, empty when unset):
#   WHEELHOUSE       pip --find-links location; when set, pip installs with --no-index from it alone
#   EXTRAS           optional-dependency groups of the tool to install too, comma-separated
#   TORCH_INDEX_URL  index to take torch from when the base has no torch (prep's images)
set -eu

build=/tmp/omni3-build
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

usage() {
    echo "usage: tool-install.sh user | deps | source CONSOLE_SCRIPT" >&2
    exit 2
}

# pip install into the base's Python, from the wheelhouse alone when WHEELHOUSE is set.
pip_install() {
    if [ -n "${WHEELHOUSE:-}" ]; then
        set -- --no-index --find-links "${WHEELHOUSE}" "$@"
    fi
    python3 -m pip install "$@"
}

add_user() {
    if ! getent passwd 1000 >/dev/null; then
        getent group 1000 >/dev/null || groupadd --gid 1000 omni3
        useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash omni3
    elif [ "$(id -nu 1000)" != omni3 ]; then
        usermod --login omni3 --home /home/omni3 --move-home "$(id -nu 1000)"
    fi
    mkdir -p /data /home/omni3
    chown 1000:1000 /data /home/omni3
}

install_deps() {
    if [ -n "${TORCH_INDEX_URL:-}" ] && ! python3 -c "import torch" 2>/dev/null; then
        python3 -m pip install --index-url "${TORCH_INDEX_URL}" torch
    fi
    python3 "${build}/pyproject_reqs.py" --extra "${EXTRAS:-}" \
        "${build}/deps/shared/pyproject.toml" "${build}/deps/tool/pyproject.toml" >"${build}/requirements.txt"
    pip_install --requirement "${build}/requirements.txt"
}

install_source() {
    pip_install --no-deps "${build}/src/shared" "${build}/src/tool"
    rm -rf "${build}"
    "$1" --help >/dev/null
}

[ $# -ge 1 ] || usage
step=$1
shift
case "${step}" in
    user) [ $# -eq 0 ] || usage; add_user ;;
    deps) [ $# -eq 0 ] || usage; install_deps ;;
    source) [ $# -eq 1 ] || usage; install_source "$1" ;;
    *) usage ;;
esac
