#!/usr/bin/env bash
# Installs edge-agent as a systemd service on a device (Jetson or ARM board), as root:
#   cross/install.sh [--dry-run] path/to/edge-agent [agent.toml]
# - the system user `edge-agent` (also in group `gpio` when that group exists: the
#   assurance output's GPIO line);
# - the binary at /usr/local/bin/edge-agent;
# - /etc/edge-agent/agent.toml (0640 root:edge-agent) from the given file; an existing one
#   is never overwritten. Without either, cross/agent.example.toml is installed and the
#   service is enabled but not started: edit it, then `systemctl start edge-agent`;
# - /etc/edge-agent/keys (0750 root:edge-agent) for the public keys and the device's TLS key;
# - cross/systemd/edge-agent.service at /etc/systemd/system/, daemon-reload, enable --now
#   (restart when it was already running, so that the new binary serves).
# --dry-run prints what it would do and changes nothing (root not needed).
# Local changes to the unit belong in `systemctl edit edge-agent` (a drop-in): this script
# replaces the unit file itself on every run.
set -euo pipefail

usage() {
  echo "usage: $0 [--dry-run] path/to/edge-agent [agent.toml]" >&2
  exit 2
}

dry=0
args=()
for a in "$@"; do
  case "$a" in
    --dry-run) dry=1 ;;
    -h | --help) usage ;;
    -*) echo "unknown option: $a" >&2; usage ;;
    *) args+=("$a") ;;
  esac
done
{ [ ${#args[@]} -ge 1 ] && [ ${#args[@]} -le 2 ]; } || usage
bin=${args[0]}
conf=${args[1]:-}

here=$(cd "$(dirname "$0")" && pwd)
unit_src=$here/systemd/edge-agent.service
example=$here/agent.example.toml

user=edge-agent
bin_dst=/usr/local/bin/edge-agent
etc=/etc/edge-agent
conf_dst=$etc/agent.toml
unit_dst=/etc/systemd/system/edge-agent.service
dropin_dir=/etc/systemd/system/edge-agent.service.d
no_gpio_dropin=$dropin_dir/10-no-gpio-group.conf

log() { printf '[install] %s\n' "$*" >&2; }
die() {
  printf '[install] error: %s\n' "$*" >&2
  exit 1
}
# Runs a command, or prints it under --dry-run.
run() {
  if [ "$dry" = 1 ]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}
# write PATH MODE TEXT: a small file (drop-ins).
write() {
  if [ "$dry" = 1 ]; then
    printf '+ write %s (mode %s):\n%s\n' "$1" "$2" "$3" | sed '2,$s/^/    /'
  else
    printf '%s\n' "$3" >"$1"
    chmod "$2" "$1"
  fi
}

[ -f "$bin" ] || die "$bin: no such file"
[ -z "$conf" ] || [ -f "$conf" ] || die "$conf: no such file"
[ -f "$unit_src" ] || die "$unit_src is missing (run the script from its cross/ folder)"
if [ "$dry" = 0 ]; then
  [ "$(id -u)" = 0 ] || die "run as root (or with --dry-run)"
  command -v systemctl >/dev/null || die "systemctl not found: this script installs a systemd service"
fi

# A binary for another target fails here rather than in a restart loop.
if version=$("$bin" --version 2>/dev/null | head -n 1); then
  log "installing $version"
elif [ "$dry" = 1 ]; then
  log "warning: $bin does not run on this $(uname -m) machine (fine for a dry run elsewhere)"
else
  die "$bin does not run on this $(uname -m) machine: built for another target? (a Jetson takes aarch64-unknown-linux-gnu.2.31 or aarch64-unknown-linux-musl, see docs/JETSON.md)"
fi

has_gpio=0
getent group gpio >/dev/null && has_gpio=1

# The service user: no home, no login.
nologin=/bin/false
for n in /usr/sbin/nologin /sbin/nologin; do
  if [ -x "$n" ]; then
    nologin=$n
    break
  fi
done
if ! getent passwd "$user" >/dev/null; then
  groups=()
  [ "$has_gpio" = 0 ] || groups=(--groups gpio)
  run useradd --system --user-group --no-create-home --home-dir /var/lib/edge-agent \
    --shell "$nologin" --comment "edgecp edge agent" "${groups[@]}" "$user"
elif [ "$has_gpio" = 1 ]; then
  run usermod --append --groups gpio "$user"
fi

run install -D -m 0755 -o root -g root "$bin" "$bin_dst"

# Configuration: readable by the service (it may hold object-store credentials), not by others.
run install -d -m 0755 -o root -g root "$etc"
run install -d -m 0750 -o root -g "$user" "$etc/keys"
start=1
if [ -e "$conf_dst" ]; then
  log "keeping the existing $conf_dst"
  [ -z "$conf" ] || log "not installed: $conf (compare it with $conf_dst)"
elif [ -n "$conf" ]; then
  run install -m 0640 -o root -g "$user" "$conf" "$conf_dst"
else
  [ -f "$example" ] || die "no agent.toml given and $example is missing"
  run install -m 0640 -o root -g "$user" "$example" "$conf_dst"
  start=0
fi

run install -D -m 0644 -o root -g root "$unit_src" "$unit_dst"
# systemd refuses to start a unit whose SupplementaryGroups= names a missing group.
if [ "$has_gpio" = 0 ]; then
  log "no group gpio on this machine: the service runs without it (a GPIO pin then needs the group that owns /dev/gpiochip*, see docs/JETSON.md)"
  run install -d -m 0755 "$dropin_dir"
  write "$no_gpio_dropin" 0644 "# written by cross/install.sh: there was no group gpio
[Service]
SupplementaryGroups="
elif [ -e "$no_gpio_dropin" ]; then
  run rm -f "$no_gpio_dropin"
fi

run systemctl daemon-reload
if [ "$start" = 0 ]; then
  run systemctl enable edge-agent.service
  log "installed the example configuration: edit $conf_dst (device_id, fleet, [keys], [mqtt]), put the keys in $etc/keys/, then: systemctl start edge-agent"
elif [ "$dry" = 0 ] && systemctl is-active --quiet edge-agent.service; then
  run systemctl enable edge-agent.service
  run systemctl restart edge-agent.service
else
  run systemctl enable --now edge-agent.service
fi
log "status: systemctl status edge-agent; logs: journalctl -u edge-agent -f"
