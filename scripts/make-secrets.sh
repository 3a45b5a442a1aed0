#!/usr/bin/env bash
# Secrets for the compose stack (docker-compose.yml), under ./secrets/ (or $SECRETS_DIR), one folder per service,
# each readable only by the uid that service runs as (files 0600, folders 0700):
#   broker/   (uid 10003) passwd, acl, tls/{ca.crt,server.crt,server.key}, health/mosquitto_sub (health check login)
#   redis/    (uid 10004) redis.conf with the password
#   cloud/    (uid 10002) redis_url, mqtt_password (user cloud-service), ca.pem, server.pem, server.key
#   edge-N/   (uid 10001) mqtt_password (user = the device id), ca.pem; `token` is added by register-devices
#   operator/ (you)       fleet-operator.mqtt, ca.pem, redis_url (Redis as published on this host's loopback)
# Nothing is printed but file names. Idempotent: existing secrets are kept; --force makes everything anew.
#   Environment: EDGES (default "edge-1 edge-2"), FLEET (default "default"), FLEET_REDIS_PORT (default 6379),
#   PY (default .venv/bin/python).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${SECRETS_DIR:-$ROOT/secrets}
PY=${PY:-$ROOT/.venv/bin/python}
EDGES=${EDGES:-edge-1 edge-2}
FLEET=${FLEET:-default}
die() { echo "make-secrets.sh: $*" >&2; exit 2; }

[ "${1:-}" = "--force" ] && rm -rf "$OUT"
# An ACL made before issue 13 (finding 7) let every device into every fleet (`pattern ... fleet/+/devices/%u/...`):
# such a secrets folder is not complete, it is made anew.
if [ -f "$OUT/.complete" ] && grep -qs '^pattern .*fleet/+' "$OUT/broker/acl"; then
    echo "secrets: $OUT/broker/acl has the cross-fleet device patterns; making new secrets"
    rm -f "$OUT/.complete"
fi
if [ -f "$OUT/.complete" ]; then echo "secrets: $OUT is complete (--force to make new ones)"; exit 0; fi
[ "$(id -u)" -eq 0 ] || die "run as root: each service's folder is handed to the uid its container runs as"
command -v mosquitto_passwd >/dev/null || die "mosquitto_passwd not found (make setup installs mosquitto)"
[ -x "$PY" ] || die "$PY not found: run make setup first"
rm -rf "$OUT" && mkdir -p "$OUT" && chmod 0700 "$OUT"
umask 077
work=$OUT/.work && mkdir -p "$work"
random() { head -c 32 /dev/urandom | base64 | tr -d '/+=\n' | cut -c1-32; }

# TLS: one dev CA; the server certificate names the compose services and loopback.
"$PY" -m fleetctl certs init --dir "$work/certs" --server-names cloud,mosquitto,localhost >/dev/null

# MQTT users and the ACL: the shipped ACL, the per-device fleet blocks from provision.sh, the health check's user.
cp "$ROOT/deploy/mosquitto/acl" "$work/acl"
printf '\n# The broker health check reads the uptime only.\nuser health\ntopic read $SYS/broker/uptime\n' >> "$work/acl"
export PASSWD=$work/passwd ACL=$work/acl SECRETS=$work/mqtt
for user in fleet-operator fleet-controller cloud-service health; do
    bash "$ROOT/deploy/mosquitto/provision.sh" service "$user" >/dev/null
done
for edge in $EDGES; do bash "$ROOT/deploy/mosquitto/provision.sh" device "$FLEET" "$edge" >/dev/null; done

install_dir() {  # install_dir NAME UID: the service's folder, owned by its uid
    mkdir -p "$OUT/$1"; chown -R "$2:$2" "$OUT/$1"; chmod -R u=rwX,go= "$OUT/$1"
}
redis_pw=$(random)

mkdir -p "$OUT/broker/tls" "$OUT/broker/health"
cp "$work/passwd" "$work/acl" "$OUT/broker/"
cp "$work/certs/ca.pem" "$OUT/broker/tls/ca.crt"
cp "$work/certs/server.pem" "$OUT/broker/tls/server.crt"
cp "$work/certs/server.key" "$OUT/broker/tls/server.key"
# mosquitto_sub reads its options from $XDG_CONFIG_HOME/mosquitto_sub: the password stays off the command line.
printf -- '-h 127.0.0.1\n-p 1883\n-u health\n-P %s\n' "$(cat "$work/mqtt/health.mqtt")" > "$OUT/broker/health/mosquitto_sub"
install_dir broker 10003

mkdir -p "$OUT/redis"
printf 'bind 0.0.0.0\nport 6379\nrequirepass %s\ndir /var/lib/redis\nappendonly yes\nappendfsync everysec\n' \
    "$redis_pw" > "$OUT/redis/redis.conf"
install_dir redis 10004

mkdir -p "$OUT/cloud"
printf 'redis://:%s@redis:6379/0\n' "$redis_pw" > "$OUT/cloud/redis_url"
cp "$work/mqtt/cloud-service.mqtt" "$OUT/cloud/mqtt_password"
cp "$work/certs/ca.pem" "$work/certs/server.pem" "$work/certs/server.key" "$OUT/cloud/"
install_dir cloud 10002

for edge in $EDGES; do
    mkdir -p "$OUT/$edge"
    cp "$work/mqtt/$edge.mqtt" "$OUT/$edge/mqtt_password"
    cp "$work/certs/ca.pem" "$OUT/$edge/ca.pem"
    install_dir "$edge" 10001
done

mkdir -p "$OUT/operator"
cp "$work/mqtt/fleet-operator.mqtt" "$OUT/operator/fleet-operator.mqtt"
cp "$work/mqtt/fleet-controller.mqtt" "$OUT/operator/fleet-controller.mqtt"
cp "$work/certs/ca.pem" "$OUT/operator/ca.pem"
printf 'redis://:%s@127.0.0.1:%s/0\n' "$redis_pw" "${FLEET_REDIS_PORT:-6379}" > "$OUT/operator/redis_url"

rm -rf "$work"
touch "$OUT/.complete"
echo "secrets: written under $OUT (broker, redis, cloud, $EDGES, operator)"
