#!/usr/bin/env bash
# Give each edge of the compose stack its bearer token: `fleetctl device add` against the stack's Redis (published
# on this host's loopback), the token written to secrets/EDGE/token (0600, owned by the edge's uid 10001).
# Redis keeps only the token's sha256. Idempotent: an edge that has a token file keeps it.
#   Environment: EDGES (default "edge-1 edge-2"), SECRETS_DIR (default ./secrets), PY (default .venv/bin/python).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${SECRETS_DIR:-$ROOT/secrets}
PY=${PY:-$ROOT/.venv/bin/python}
[ -f "$OUT/operator/redis_url" ] || { echo "register-devices.sh: run scripts/make-secrets.sh first" >&2; exit 2; }
# The URL holds the Redis password: it goes through the environment, never argv.
CLOUD_REDIS_URL=$(cat "$OUT/operator/redis_url")
export CLOUD_REDIS_URL
umask 077
for edge in ${EDGES:-edge-1 edge-2}; do
    if [ -s "$OUT/$edge/token" ]; then echo "device $edge: has a token"; continue; fi
    # --rotate: the registry may know the device from an earlier stack whose Redis volume was kept.
    "$PY" -m fleetctl device add "$edge" --rotate > "$OUT/$edge/token.new"
    mv "$OUT/$edge/token.new" "$OUT/$edge/token"
    chown 10001:10001 "$OUT/$edge/token" 2>/dev/null || true
    echo "device $edge: registered, token in $OUT/$edge/token"
done
