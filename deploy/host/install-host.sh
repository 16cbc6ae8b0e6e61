#!/usr/bin/env bash
# Turns a Debian 12 (or Ubuntu) host into an RLN host: the agent, the node's unit, its
# user and directories, and the fleet's SSH user that may sudo rln-hostctl and nothing
# else. Run as root with the directory holding this file's siblings. Both the golden
# image (golden-image.pkr.hcl) and plain user data (cloud-init.yaml) run this one
# script, so the two kinds of host cannot drift apart. Safe to run again.
set -euo pipefail

SRC=${1:?usage: install-host.sh SOURCE_DIR}
NETWORK=${RLN_NETWORK:-testnet}
FLEET_USER=${FLEET_SSH_USER:-fleet}

install_packages() {
    local missing=()
    command -v curl >/dev/null || missing+=(curl ca-certificates)
    command -v flock >/dev/null || missing+=(util-linux)
    command -v aws >/dev/null || missing+=(awscli)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

create_users() {
    # The daemon's own user: no shell, no sudo, owns only the storage dir.
    id -u rln >/dev/null 2>&1 ||
        useradd --system --user-group --home-dir /var/lib/rln --shell /usr/sbin/nologin rln
    # The fleet logs in as this user; its key is the launch's EC2 key pair (see
    # 90-rln-fleet.cfg), never a password.
    id -u "$FLEET_USER" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$FLEET_USER"
    passwd --lock "$FLEET_USER" >/dev/null
}

create_dirs() {
    install -d -m 0755 -o root -g root /etc/rln /opt/rln /opt/rln/releases
    # /backup files go beside the storage dir, never inside it (/backup zips all of it).
    install -d -m 0750 -o rln -g rln /var/lib/rln /var/lib/rln-backups
    # The network is the image's (or the user data's) choice; a later run keeps it.
    if [[ ! -f /etc/rln/node.env ]]; then
        printf 'NETWORK=%s\n' "$NETWORK" >/etc/rln/node.env
        chmod 0644 /etc/rln/node.env
    fi
}

install_files() {
    install -m 0755 -o root -g root "$SRC/rln-hostctl" /usr/local/bin/rln-hostctl
    install -m 0644 -o root -g root "$SRC/rgb-lightning-node.service" \
        /etc/systemd/system/rgb-lightning-node.service
    if [[ -d /etc/cloud/cloud.cfg.d ]]; then
        sed "s/name: fleet$/name: $FLEET_USER/" "$SRC/90-rln-fleet.cfg" \
            >/etc/cloud/cloud.cfg.d/90-rln-fleet.cfg
    fi
}

allow_sudo() {
    # Only the agent, with any arguments. sudo's env_reset drops RLN_*, SYSTEMCTL and
    # AWS, so the fleet's user cannot point the agent at other paths or programs.
    local rule tmp
    rule="$FLEET_USER ALL=(root) NOPASSWD: /usr/local/bin/rln-hostctl"
    tmp=$(mktemp)
    printf '%s\n' "$rule" >"$tmp"
    visudo -cqf "$tmp"
    install -m 0440 -o root -g root "$tmp" /etc/sudoers.d/rln-hostctl
    rm -f "$tmp"
}

install_packages
create_users
create_dirs
install_files
allow_sudo
# Installed but not enabled: `rln-hostctl start` enables it once the fleet wants it.
if [[ -d /run/systemd/system ]]; then systemctl daemon-reload; fi
echo "rln host installed (network $NETWORK, fleet user $FLEET_USER)"
