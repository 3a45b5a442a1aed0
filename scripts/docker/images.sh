#!/usr/bin/env bash
# Build the stack's images locally: whisper-fleet/{cloud,edge,mosquitto,redis,prometheus}:${TAG:-dev}.
#
# No registry is reachable, so: the Debian + Python base from debootstrap (lib.sh), and the Python packages as a
# wheelhouse made here with this machine's pip configuration (~/.cache/whisper-fleet/docker/wheels/{cloud,edge}/deps), which the
# Dockerfiles install offline. The dependency wheels are kept until pyproject.toml changes, so Docker's layer cache
# holds across runs and only the project's own wheel (rebuilt every time from the working tree) is reinstalled.
source "$(dirname "$0")/lib.sh"

TAG=${TAG:-dev}
PY=${PY:-$ROOT/.venv/bin/python}
# Outside the checkout, so every clone on this machine (CI clones afresh) shares the wheelhouse and Docker its
# layer cache.
CACHE=${WHISPER_FLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/whisper-fleet}/docker
[ -x "$PY" ] || die "$PY not found: run make setup first (the wheelhouse is built with the project's venv)"
[ -f "$ROOT/proto/asr/v1/asr_pb2.py" ] || die "generated gRPC code missing: run make proto first"

ensure_docker_packages
ensure_dockerd
ensure_base_images

# Contents only (not paths): every clone of the same commit shares the key.
deps_key=$(cat "$ROOT/pyproject.toml" "$0" | sha256sum | cut -c1-16)
pip_mounts
# Resolved inside the base image, by its Python (3.11.2, not this host's): markers such as redis's
# `async-timeout; python_full_version < "3.11.3"` must be judged for the interpreter that will run them.
wheel_deps() {  # wheel_deps NAME PIP-WHEEL-ARGS...: the resolved dependency wheels of one image, cached
    local dir=$CACHE/wheels/$1/deps; shift
    if [ "$(cat "$dir/.key" 2>/dev/null)" != "$deps_key" ]; then
        log "wheels: resolving $(basename "$(dirname "$dir")") dependencies into $dir"
        rm -rf "$dir" && mkdir -p "$dir"
        docker run --rm --network host "${PIP_MOUNTS[@]}" "${PIP_ENVS[@]}" -v "$stage:/src" -v "$dir:/out" \
            "$BASE_IMAGE" bash -c 'python3 -m venv /tmp/v && /tmp/v/bin/pip install -q --upgrade pip wheel \
                && /tmp/v/bin/pip wheel -q --wheel-dir /out "$@"' wheel "$@"
        rm -f "$dir"/whisper_fleet-*.whl
        echo "$deps_key" > "$dir/.key"
    fi
}

# The project's wheel from the tracked files plus the generated gRPC code, staged apart from the tree so that no
# stale setuptools build/ output or untracked file can slip into it.
stage=$(mktemp -d /tmp/whisper-fleet-wheel.XXXXXX)
trap 'rm -rf "$stage"' EXIT
(cd "$ROOT" && { git ls-files -z; printf '%s\0' proto/asr/v1/*_pb2*.py*; } | tar --null -T - -c) | tar -C "$stage/" -x
rm -rf "$CACHE/project" && mkdir -p "$CACHE/project"
"$PY" -m pip wheel -q --no-deps --no-build-isolation --wheel-dir "$CACHE/project" "$stage"

wheel_deps cloud torch==2.13.0 "/src[cloud]"
# openai-whisper without its dependencies (as the Makefile installs it): its triton requirement is GPU-only.
if ! ls "$CACHE/wheels/cloud/deps"/openai_whisper-*.whl >/dev/null 2>&1; then
    docker run --rm --network host "${PIP_MOUNTS[@]}" "${PIP_ENVS[@]}" -v "$CACHE/wheels/cloud/deps:/out" \
        "$BASE_IMAGE" bash -c 'python3 -m venv /tmp/v && /tmp/v/bin/pip install -q --upgrade pip wheel \
            && /tmp/v/bin/pip wheel -q --no-deps --wheel-dir /out openai-whisper==20250625'
fi
wheel_deps edge "/src[edge]"

build() {  # build IMAGE DOCKERFILE CONTEXT
    local t0; t0=$(date +%s)
    docker build --network host -q -t "whisper-fleet/$1:$TAG" --build-arg BASE_IMAGE="$BASE_IMAGE" \
        -f "$ROOT/deploy/$2" "$3" >/dev/null 2> >(grep -v -e DEPRECATED -e buildx -e '^ *$' -e 'Install the' >&2)
    log "image whisper-fleet/$1:$TAG ($(( $(date +%s) - t0 )) s, $(docker image inspect -f '{{.Size}}' "whisper-fleet/$1:$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
}
for kind in cloud edge; do
    rm -rf "$CACHE/wheels/$kind/project" && cp -r "$CACHE/project" "$CACHE/wheels/$kind/project"
done
build cloud cloud.Dockerfile "$CACHE/wheels/cloud"
build edge edge.Dockerfile "$CACHE/wheels/edge"
build mosquitto broker.Dockerfile "$ROOT/deploy/empty-context"
build redis redis.Dockerfile "$ROOT/deploy/empty-context"
build prometheus prometheus/Dockerfile "$ROOT/deploy/empty-context"
