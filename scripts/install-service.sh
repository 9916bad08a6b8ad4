#!/usr/bin/env bash
# Install devbox-sim as a systemd service, from this repository, in place. The one service
# installation path: the Vagrant VM's provisioning runs it, a Linux user runs it, CI runs it
# staged (--root). Steps:
#   1. scripts/bootstrap.sh: system packages and .venv (the same set-up path as `make run`);
#   2. /etc/systemd/system/devbox-sim.service from packaging/devbox-sim.service (@REPO@ = here);
#   3. /etc/devbox-sim/env (settings) and /etc/devbox-sim/world.toml (an offline world, from
#      examples/world.toml), only when missing: an existing configuration is kept, apart from
#      the lines --listen and --uplink set;
#   4. /etc/modules-load.d/devbox-sim.conf: br_netfilter at boot (the simulator needs it);
#   5. systemctl daemon-reload, enable, restart, and a wait on /healthz.
#
# usage: scripts/install-service.sh [options]
#   --listen ADDR        set DEVBOX_SIM_HOST in the env file (the VM: 0.0.0.0)
#   --uplink offline     set DEVBOX_SIM_WORLD=/etc/devbox-sim/world.toml: the offline world
#   --uplink host        comment DEVBOX_SIM_WORLD out again: devbox egress to the host network
#   --root DIR           stage every file under DIR (DESTDIR style: file contents keep the
#                        final paths) and touch nothing else; implies --no-systemd
#   --no-systemd         install the files but do not call systemctl (systemd need not be PID 1)
#   --no-bootstrap       skip step 1 (.venv must exist already)
#   --test               step 1 with the test extras too (scripts/bootstrap.sh --test)
#   --uninstall          stop and disable the service, remove the unit and the modules-load
#                        file; keep /etc/devbox-sim and /var/lib/devbox-sim
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd -P)

ROOT=""
SYSTEMD=1
BOOTSTRAP=1
BOOTSTRAP_ARGS=()
LISTEN=""
UPLINK=""
UNINSTALL=0
die() { echo "install-service: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --listen) [ $# -ge 2 ] || die "--listen needs an address"; LISTEN=$2; shift 2 ;;
    --uplink) [ $# -ge 2 ] || die "--uplink needs offline or host"; UPLINK=$2; shift 2 ;;
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; SYSTEMD=0; shift 2 ;;
    --no-systemd) SYSTEMD=0; shift ;;
    --no-bootstrap) BOOTSTRAP=0; shift ;;
    --test) BOOTSTRAP_ARGS=(--test); shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (--help lists them)" ;;
  esac
done
case "$UPLINK" in ""|offline|host) ;; *) die "--uplink takes offline or host, not $UPLINK" ;; esac
if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT"
  ROOT=$(cd "$ROOT" && pwd -P)
  [ "$ROOT" != / ] || die "--root / is the real system: leave --root out"
fi

UNIT=$ROOT/etc/systemd/system/devbox-sim.service
CONF_DIR=$ROOT/etc/devbox-sim
ENV_FILE=$CONF_DIR/env
WORLD_FILE=$CONF_DIR/world.toml
MODULES_FILE=$ROOT/etc/modules-load.d/devbox-sim.conf
WORLD_PATH=/etc/devbox-sim/world.toml   # as the service sees it (also with --root)

if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (or stage the files with --root DIR)"
fi
if [ "$SYSTEMD" = 1 ] && [ ! -d /run/systemd/system ]; then
  die "systemd is not running here (PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown)); use --no-systemd or --root DIR"
fi

if [ "$UNINSTALL" = 1 ]; then
  if [ "$SYSTEMD" = 1 ]; then
    systemctl disable --now devbox-sim.service 2>/dev/null || true
  fi
  rm -f "$UNIT" "$MODULES_FILE"
  [ "$SYSTEMD" = 1 ] && systemctl daemon-reload
  echo "install-service: removed devbox-sim.service (kept ${CONF_DIR} and /var/lib/devbox-sim)"
  exit 0
fi

# 1. The one set-up path.
if [ "$BOOTSTRAP" = 1 ]; then
  ./scripts/bootstrap.sh "${BOOTSTRAP_ARGS[@]}"
fi
[ -x "$REPO/.venv/bin/devbox-sim" ] || die "$REPO/.venv/bin/devbox-sim is missing: run scripts/bootstrap.sh"

# 2. The unit, rendered (always: it only points at this repository).
case "$REPO" in *[!A-Za-z0-9_./@+-]*) die "the repository path must not contain spaces or special characters: $REPO" ;; esac
install -d -m 0755 "$(dirname "$UNIT")"
sed "s|@REPO@|$REPO|g" packaging/devbox-sim.service > "$UNIT.tmp"
chmod 0644 "$UNIT.tmp"
mv "$UNIT.tmp" "$UNIT"

# 3. Configuration: created once, then the administrator's.
install -d -m 0755 "$CONF_DIR"
[ -e "$ENV_FILE" ] || install -m 0644 packaging/devbox-sim.env "$ENV_FILE"
[ -e "$WORLD_FILE" ] || install -m 0644 examples/world.toml "$WORLD_FILE"

# set_line KEY VALUE: the first `KEY=` or `#KEY=` line becomes KEY=VALUE (appended if none).
set_line() {
  if grep -qE "^#?$1=" "$ENV_FILE"; then
    sed -i -E "0,/^#?$1=.*/s||$1=$2|" "$ENV_FILE"
  else
    echo "$1=$2" >> "$ENV_FILE"
  fi
}
# comment_line KEY: every active `KEY=` line is commented out.
comment_line() { sed -i -E "s|^$1=|#$1=|" "$ENV_FILE"; }

[ -n "$LISTEN" ] && set_line DEVBOX_SIM_HOST "$LISTEN"
case "$UPLINK" in
  offline) set_line DEVBOX_SIM_WORLD "$WORLD_PATH"; comment_line DEVBOX_SIM_UPLINK ;;
  host) comment_line DEVBOX_SIM_WORLD; comment_line DEVBOX_SIM_UPLINK ;;
esac

# 4. br_netfilter at every boot (bootstrap.sh loads it now; the service may start before it).
install -d -m 0755 "$(dirname "$MODULES_FILE")"
echo br_netfilter > "$MODULES_FILE"

echo "install-service: ${ROOT:+staged under $ROOT: }$UNIT, $ENV_FILE"
if [ "$SYSTEMD" = 0 ]; then
  exit 0
fi

# 5. Start (or restart, so new code and settings apply) and wait until it answers.
systemctl daemon-reload
systemctl enable --quiet devbox-sim.service
systemctl restart devbox-sim.service
setting() { sed -n -E "s/^$1=([^[:space:]]+)[[:space:]]*$/\1/p" "$ENV_FILE" | tail -n 1; }
port=$(setting DEVBOX_SIM_PORT); port=${port:-8484}
host=$(setting DEVBOX_SIM_HOST)
case "${host:-0.0.0.0}" in 0.0.0.0|127.0.0.1) host=127.0.0.1 ;; ::|::1) host="[::1]" ;; *:*) host="[$host]" ;; esac
for _ in $(seq 1 60); do
  if curl -fsS "http://$host:$port/healthz" >/dev/null 2>&1; then
    echo "install-service: devbox-sim.service is up on port $port (journalctl -u devbox-sim for its log)"
    exit 0
  fi
  sleep 0.5
done
systemctl --no-pager status devbox-sim.service >&2 || true
journalctl --no-pager -n 30 -u devbox-sim.service >&2 || true
die "devbox-sim.service did not answer http://$host:$port/healthz within 30 s"
