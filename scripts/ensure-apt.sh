#!/usr/bin/env bash
# Install the Debian packages the project needs, only those missing. Idempotent.
set -euo pipefail
PKGS=(
  ffmpeg sox libsox-fmt-all espeak-ng libsndfile1 libopus0
  mosquitto mosquitto-clients redis-server
  asterisk-core-sounds-en-wav asterisk-core-sounds-en-g722 asterisk-core-sounds-en-gsm
  asterisk-core-sounds-es-wav asterisk-core-sounds-fr-wav asterisk-moh-opsound-wav
  # The transcripts (core-sounds-*.txt.gz) are in these, not in the -wav packages, and
  # --no-install-recommends would skip them.
  asterisk-core-sounds-en asterisk-core-sounds-es asterisk-core-sounds-fr
  # The compose file is validated by the tests; make compose-test and fresh-check add docker.io and debootstrap.
  docker-compose
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "apt: all ${#PKGS[@]} packages present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "apt: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "apt: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packaged services must not hold the default ports: tests and the demo start their own.
for svc in mosquitto redis-server; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    $SUDO systemctl stop "$svc" || true
  fi
done
echo "apt: done"
