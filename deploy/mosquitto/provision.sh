#!/usr/bin/env bash
# Add MQTT users for whisper-fleet to a mosquitto password file and ACL.
#
#   provision.sh device FLEET DEVICE_ID   make a device user; its password goes to secrets/DEVICE_ID.mqtt
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

case "${1:-}" in
    device)
        [[ $# -eq 3 ]] || die "usage: provision.sh device FLEET DEVICE_ID"
        check "$2" fleet; check "$3" "device id"
        if grep -qx "user $3" "$ACL" 2>/dev/null; then die "device $3 already provisioned in $ACL"; fi
        add_user "$3"
        printf '\nuser %s\ntopic read fleet/%s/config\ntopic read fleet/%s/model\n' "$3" "$2" "$2" >> "$ACL"
        ;;
    service)
        [[ $# -eq 2 ]] || die "usage: provision.sh service NAME"
        check "$2" service
        add_user "$2"
        ;;
    *) die "usage: provision.sh device FLEET DEVICE_ID | service NAME" ;;
esac
