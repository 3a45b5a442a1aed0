#!/usr/bin/env bash
# Shared by the Docker scripts: Docker itself (packages, a running daemon) and the locally built base images.
# No image registry is reachable from these machines, so every image starts from a debootstrap'd Debian.
set -euo pipefail

DEBIAN_IMAGE=${DEBIAN_IMAGE:-whisper-fleet/debian:bookworm}
BASE_IMAGE=${BASE_IMAGE:-whisper-fleet/python:bookworm}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "need root (or sudo) for: $*"; fi
}

# docker.io, docker-compose 1.29 and debootstrap from Debian, only when missing.
ensure_docker_packages() {
    local missing=()
    for p in docker.io docker-compose debootstrap; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "apt: installing ${missing[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# Start dockerd when no daemon answers; it keeps running for later calls (and CI's next step).
ensure_dockerd() {
    docker info >/dev/null 2>&1 && return 0
    log "docker: starting dockerd (log: /tmp/whisper-fleet-dockerd.log)"
    as_root bash -c 'nohup dockerd >/tmp/whisper-fleet-dockerd.log 2>&1 &'
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && return 0; sleep 1; done
    die "dockerd did not come up; see /tmp/whisper-fleet-dockerd.log"
}

# The Debian mirror this machine's apt uses (deb822 URIs: or a sources.list deb line): never a hard-coded host.
apt_mirror() {
    local uri
    uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/* 2>/dev/null \
          | awk '{print $2}' | grep -v security | head -n1 || true)
    if [ -z "$uri" ]; then
        uri=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
              | grep -v security | awk '{for (i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' | head -n1 || true)
    fi
    [ -n "$uri" ] || die "no Debian mirror found in /etc/apt/sources.list{,.d}"
    printf '%s\n' "$uri"
}

# whisper-fleet/debian:bookworm: debootstrap minbase, imported. whisper-fleet/python:bookworm: + python3, venv.
ensure_base_images() {
    if ! docker image inspect "$DEBIAN_IMAGE" >/dev/null 2>&1; then
        local rootfs mirror
        mirror=$(apt_mirror)
        rootfs=$(mktemp -d /tmp/whisper-fleet-rootfs.XXXXXX)
        log "base: debootstrap bookworm from $mirror"
        as_root debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/tmp/whisper-fleet-debootstrap.log 2>&1 \
            || die "debootstrap failed; see /tmp/whisper-fleet-debootstrap.log"
        # apt lists and caches are fetched again by whoever installs packages: leave them out (~80 MB).
        as_root tar -C "$rootfs" --exclude=./var/cache/apt/archives/*.deb --exclude=./var/cache/apt/*.bin \
            --exclude=./var/lib/apt/lists/* -c . | docker import - "$DEBIAN_IMAGE" >/dev/null
        as_root rm -rf "$rootfs"
    fi
    if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base: building $BASE_IMAGE"
        docker build --network host -q -t "$BASE_IMAGE" --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
            -f "$ROOT/deploy/base.Dockerfile" "$ROOT/deploy" >/dev/null
    fi
}

# This machine's pip configuration for a container (read-only): pip.conf, the constraints, the local wheel stores
# and the CA bundle the registries' TLS chain needs. Sets the arrays PIP_MOUNTS and PIP_ENVS.
pip_mounts() {
    PIP_MOUNTS=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
    local path
    for path in /etc/pip.conf /etc/xdg/pip /opt/wheels /opt/pypi /opt/pypi-more; do
        [ -e "$path" ] && PIP_MOUNTS+=(-v "$path:$path:ro")
    done
    PIP_ENVS=(-e PIP_CERT=/etc/ssl/certs/ca-certificates.crt -e PIP_DISABLE_PIP_VERSION_CHECK=1
              -e PIP_DEFAULT_TIMEOUT=180)
    [ -d /opt/wheels ] && PIP_ENVS+=(-e PIP_FIND_LINKS=/opt/wheels)
    return 0
}
