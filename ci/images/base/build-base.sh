#!/usr/bin/env bash
# Build the local base image (default tag omni3-base:local) without any container registry:
# debootstrap a minimal Debian bookworm root file system, add the packages in packages.txt,
# a virtual environment at /opt/venv and the CPU build of torch, then `docker import` it.
#
# The image carries the label org.omni3.base.hash (script + package list + torch wheel); when an
# image with the same hash already exists the build is skipped. Set OMNI3_BASE_REBUILD=1 to force.
#
# Environment:
#   OMNI3_BASE_IMAGE   tag to produce (default omni3-base:local)
#   OMNI3_BUILD_DIR    scratch and cache directory (default <repo>/build)
#   DEBIAN_MIRROR      Debian mirror for debootstrap (default: debootstrap's own default)
#   TORCH_VERSION      torch release installed into the venv (default 2.13.0, CPU wheel from pip's find-links)
# Needs root, debootstrap and a running Docker engine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../../.." && pwd)"
image="${OMNI3_BASE_IMAGE:-omni3-base:local}"
build_dir="${OMNI3_BUILD_DIR:-${repo}/build}"
suite="bookworm"
torch_version="${TORCH_VERSION:-2.13.0}"
hash_label="org.omni3.base.hash"

log() { printf '[build-base] %s\n' "$*" >&2; }

mapfile -t packages < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "${here}/packages.txt" | grep -v '^$')

base_hash="$(
    {
        cat "${BASH_SOURCE[0]}" "${here}/packages.txt"
        printf 'suite=%s torch=%s mirror=%s\n' "${suite}" "${torch_version}" "${DEBIAN_MIRROR:-default}"
    } | sha256sum | cut -c1-16
)"

existing="$(docker image inspect --format "{{ index .Config.Labels \"${hash_label}\" }}" "${image}" 2>/dev/null || true)"
if [[ "${existing}" == "${base_hash}" && "${OMNI3_BASE_REBUILD:-0}" != "1" ]]; then
    log "${image} is up to date (hash ${base_hash}); nothing to do"
    exit 0
fi

if [[ "$(id -u)" != "0" ]]; then
    log "debootstrap needs root; run this script as root"
    exit 2
fi
for cmd in debootstrap docker python3; do
    command -v "${cmd}" >/dev/null || { log "missing command: ${cmd}"; exit 2; }
done

start=${SECONDS}
mkdir -p "${build_dir}/cache/debootstrap" "${build_dir}/cache/base-wheels"
rootfs="$(mktemp -d "${build_dir}/base-rootfs.XXXXXX")"

cleanup() {
    for mnt in proc sys; do
        if mountpoint -q "${rootfs}/${mnt}"; then umount -l "${rootfs}/${mnt}" || true; fi
    done
    rm -rf "${rootfs}"
}
trap cleanup EXIT

in_root() {
    # A clean environment: the host's PIP_* and proxy settings must not leak into the image.
    chroot "${rootfs}" /usr/bin/env -i \
        PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}

log "hash ${base_hash}: bootstrapping Debian ${suite} (minbase) into ${rootfs}"
mirror_args=()
if [[ -n "${DEBIAN_MIRROR:-}" ]]; then mirror_args=("${DEBIAN_MIRROR}"); fi
debootstrap --variant=minbase --cache-dir="${build_dir}/cache/debootstrap" \
    "${suite}" "${rootfs}" "${mirror_args[@]}" >"${build_dir}/debootstrap.log" 2>&1 || {
    tail -n 40 "${build_dir}/debootstrap.log" >&2
    log "debootstrap failed (full log: ${build_dir}/debootstrap.log)"
    exit 1
}
log "debootstrap done after $((SECONDS - start))s"

# Keep documentation out of the image, as the official Debian images do.
cat >"${rootfs}/etc/dpkg/dpkg.cfg.d/01-omni3-nodoc" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG
cat >"${rootfs}/etc/apt/apt.conf.d/01-omni3" <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Retries "3";
APT::Sandbox::User "root";
CFG
# No services may start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"${rootfs}/usr/sbin/policy-rc.d"
chmod 755 "${rootfs}/usr/sbin/policy-rc.d"

# Same mirror for bookworm-updates; the security archive sits beside the main one on Debian's layout.
main_line="$(grep -m1 '^deb ' "${rootfs}/etc/apt/sources.list")"
mirror_url="$(awk '{print $2}' <<<"${main_line}")"
{
    echo "deb ${mirror_url} ${suite} main"
    echo "deb ${mirror_url} ${suite}-updates main"
    if [[ "${mirror_url}" == */debian ]]; then
        echo "deb ${mirror_url}-security ${suite}-security main"
    fi
} >"${rootfs}/etc/apt/sources.list"

cp /etc/resolv.conf "${rootfs}/etc/resolv.conf"
mount -t proc proc "${rootfs}/proc"
mount -t sysfs sysfs "${rootfs}/sys"

log "installing: ${packages[*]}"
{
    in_root apt-get update -qq
    in_root apt-get upgrade -y -qq
    in_root apt-get install -y -qq "${packages[@]}"
    in_root apt-get clean
} >"${build_dir}/base-apt.log" 2>&1 || {
    tail -n 40 "${build_dir}/base-apt.log" >&2
    log "apt-get failed (full log: ${build_dir}/base-apt.log)"
    exit 1
}
rm -f "${rootfs}/usr/sbin/policy-rc.d"
rm -rf "${rootfs}"/var/lib/apt/lists/* "${rootfs}"/var/cache/apt/*.bin
log "packages installed after $((SECONDS - start))s"

log "creating /opt/venv and installing torch==${torch_version} (CPU)"
# Wheels come from the host: pip's configured find-links hold the CPU torch wheel; its dependencies
# come from the index. Only binary wheels for this interpreter are accepted.
python3 -m pip download --quiet --only-binary=:all: --dest "${build_dir}/cache/base-wheels" \
    "torch==${torch_version}" pip 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
mkdir -p "${rootfs}/tmp/wheels"
cp "${build_dir}"/cache/base-wheels/*.whl "${rootfs}/tmp/wheels/"
in_root python3 -m venv /opt/venv
in_root /opt/venv/bin/python -m pip install --quiet --no-cache-dir --no-index --find-links /tmp/wheels \
    --upgrade pip "torch==${torch_version}"
in_root /opt/venv/bin/python -W ignore -c "import torch; assert not torch.cuda.is_available(); print('torch', torch.__version__)"
rm -rf "${rootfs}/tmp/wheels" "${rootfs}"/root/.cache
find "${rootfs}/opt/venv" -name '__pycache__' -type d -prune -exec rm -rf {} +
log "venv ready after $((SECONDS - start))s"

umount -l "${rootfs}/proc" "${rootfs}/sys"
: >"${rootfs}/etc/resolv.conf"
rm -f "${rootfs}"/var/log/*.log "${rootfs}"/var/log/apt/*

log "importing into docker as ${image}"
tar --numeric-owner -C "${rootfs}" -cf - . | docker import \
    --change "ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV VIRTUAL_ENV=/opt/venv" \
    --change "ENV LANG=C.UTF-8" \
    --change "LABEL ${hash_label}=${base_hash}" \
    --change "LABEL org.opencontainers.image.title=omni3-base" \
    --change "LABEL org.opencontainers.image.description=\"Debian ${suite}, Python 3, ffmpeg, CPU torch ${torch_version}\"" \
    --change 'CMD ["/bin/bash"]' \
    - "${image}" >/dev/null
docker tag "${image}" "${image%%:*}:${base_hash}"
# Drop the hash tags of earlier builds so their layers can be pruned.
docker image ls --format '{{.Repository}}:{{.Tag}}' "${image%%:*}" | while read -r old; do
    case "${old}" in
        "${image}" | "${image%%:*}:${base_hash}") ;;
        *) docker image rm "${old}" >/dev/null 2>&1 || true ;;
    esac
done
log "built ${image} (hash ${base_hash}) in $((SECONDS - start))s"
