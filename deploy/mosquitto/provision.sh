#!/usr/bin/env bash
# Add MQTT users for whisper-fleet to a mosquitto password file and ACL.
#
#   provision.sh device FLEET DEVICE_ID   make a device user; its password goes to secrets/DEVICE_ID.mqtt, its
#                                         ACL block (every topic with FLEET spelled out) is appended to $ACL
#   provision.sh service NAME             make a service user (fleet-operator, fleet-controller, cloud-service)
#
# Environment: PASSWD (default /etc/mosquitto/fleet/passwd), ACL (default /etc/mosquitto/fleet/acl),
# SECRETS (default ./secrets). Passwords are random, written to a 0600 file and never printed, nor put on any
# command line (argv is visible to every user in ps): mosquitto_passwd reads them on its stdin.
# Reload the broker afterwards (SIGHUP: `systemctl reload mosquitto`).
set -euo pipefail

PASSWD=${PASSWD:-/etc/mosquitto/fleet/passwd}
ACL=${ACL:-/etc/mosquitto/fleet/acl}
SECRETS=${SECRETS:-./secrets}
NAME_RE='^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'

die() { echo "provision.sh: $*" >&2; exit 2; }
check() { [[ $1 =~ $NAME_RE ]] || die "invalid $2 '$1': use 1-64 of A-Z a-z 0-9 _ . -"; }

add_user() {  # add_user USER -> password in $SECRETS/USER.mqtt
    local user=$1 secret password
    mkdir -p "$SECRETS"
    secret="$SECRETS/$user.mqtt"
    (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$secret")
    [[ -f $PASSWD ]] || (umask 077; : > "$PASSWD")
    IFS= read -r password < "$secret"
    # Without -b, mosquitto_passwd asks for the password twice on stdin; printf is a bash builtin, so the
    # password is in no process's argv. Its prompts go to stdout (dropped); errors stay on stderr.
    printf '%s\n%s\n' "$password" "$password" | mosquitto_passwd "$PASSWD" "$user" > /dev/null \
        || die "mosquitto_passwd could not add $user to $PASSWD"
    echo "user $user: password written to $secret"
}

device_block() {  # device_block FLEET ID -> the device's ACL lines, its fleet spelled out in every topic
    # mosquitto substitutes the username (%u) but has nothing for a fleet: a `fleet/+/devices/%u/...` pattern
    # would let the device into every fleet (issue 13, finding 7). So every topic names FLEET literally.
    local fleet=$1 id=$2 dev="fleet/$1/devices/$2"
    printf '\nuser %s\n' "$id"
    printf 'topic read %s\n' "fleet/$fleet/config" "fleet/$fleet/model" "$dev/config" "$dev/model" "$dev/results"
    printf 'topic write %s\n' "$dev/state" "$dev/ack" "$dev/results"
}

case "${1:-}" in
    device)
        [[ $# -eq 3 ]] || die "usage: provision.sh device FLEET DEVICE_ID"
        check "$2" fleet; check "$3" "device id"
        if grep -qx "user $3" "$ACL" 2>/dev/null; then die "device $3 already provisioned in $ACL"; fi
        add_user "$3"
        device_block "$2" "$3" >> "$ACL"
        ;;
    service)
        [[ $# -eq 2 ]] || die "usage: provision.sh service NAME"
        check "$2" service
        add_user "$2"
        ;;
    *) die "usage: provision.sh device FLEET DEVICE_ID | service NAME" ;;
esac
