#!/usr/bin/env bash
# `make fresh-check`: the README's two commands on a fresh machine, i.e. a clean Debian container.
#
# The container gets what a fresh machine here has and nothing more: Debian bookworm with python3, make and git,
# this machine's pip configuration, local wheel stores and CA bundle (read-only: the registries are reached over
# TLS through a CA a stock image lacks), host networking. No venv, no models, no apt packages of the project.
# It clones the committed HEAD, then times `make demo` and `make test` (cold), and both again (warm: idempotent).
#   FRESH_WARM=0  skip the warm rerun.   FRESH_KEEP=1  keep the container afterwards (docker rm it yourself).
source "$(dirname "$0")/lib.sh"

FRESH_IMAGE=whisper-fleet/fresh:bookworm
ensure_docker_packages
ensure_dockerd
ensure_base_images
if ! docker image inspect "$FRESH_IMAGE" >/dev/null 2>&1; then
    log "fresh: building $FRESH_IMAGE (base + make, git)"
    printf 'FROM %s\nRUN apt-get update && apt-get install -y --no-install-recommends make git && rm -rf /var/lib/apt/lists/*\n' \
        "$BASE_IMAGE" | docker build --network host -q -t "$FRESH_IMAGE" - >/dev/null
fi

pip_mounts
name=whisper-fleet-fresh-$$
docker rm -f "$name" >/dev/null 2>&1 || true
if [ "${FRESH_KEEP:-0}" != 1 ]; then trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT; fi
docker run -d --name "$name" --network host -v "$ROOT:/src:ro" "${PIP_MOUNTS[@]}" "${PIP_ENVS[@]}" "$FRESH_IMAGE" sleep infinity >/dev/null
commit=$(git -C "$ROOT" rev-parse --short HEAD)
log "fresh: container $name; cloning $commit (committed work only)"
docker exec "$name" git -c safe.directory='*' clone -q /src /root/whisper-fleet

declare -A took
step() {  # step LABEL TARGET: run `make TARGET` in the clone, log to /tmp, record the wall time
    local label=$1 target=$2 t0 rc=0
    t0=$(date +%s)
    log "fresh: make $target ($label) ... (log: /tmp/whisper-fleet-fresh-$label-$target.log)"
    docker exec -w /root/whisper-fleet "$name" make "$target" >"/tmp/whisper-fleet-fresh-$label-$target.log" 2>&1 \
        || rc=$?
    took[$label-$target]=$(( $(date +%s) - t0 ))
    tail -n 3 "/tmp/whisper-fleet-fresh-$label-$target.log" | sed 's/^/    /' >&2
    [ $rc -eq 0 ] || die "make $target ($label) failed with exit $rc after ${took[$label-$target]} s"
}
step cold demo
step cold test
if [ "${FRESH_WARM:-1}" != 0 ]; then
    step warm demo
    step warm test
fi
echo "fresh-check passed on $commit: wall times (s)"
for key in cold-demo cold-test warm-demo warm-test; do
    [ -n "${took[$key]:-}" ] && printf '  make %-5s %-5s %5d\n' "${key#*-}" "${key%-*}" "${took[$key]}"
done
