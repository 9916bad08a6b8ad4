#!/usr/bin/env bash
# One set-up path for `make run`, `make test`, CI (.ci/run) and the Vagrant VM:
# system packages (Debian/Ubuntu, as root), kernel modules, and the virtualenv at .venv.
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_TEST=0
WITH_BENCH=0
case "${1:-}" in
  --test) WITH_TEST=1 ;;
  --bench) WITH_TEST=1; WITH_BENCH=1 ;;  # what the tests need, and the benchmarks' extras
esac

# busybox-static: the docker runtime's default image is built from it, offline.
APT_PACKAGES=(python3 python3-venv python3-dev gcc libc6-dev make nftables libnftables1 iproute2 conntrack
              util-linux procps kmod iputils-ping netcat-openbsd curl ca-certificates busybox-static)
# Only with --test: `vagrant validate` (and ruby) check the Vagrantfile (tests/test_service.py);
# docker.io runs the real-traffic suite a second time, on the docker runtime; nodejs is the
# TypeScript SDK's HTTP/2 client (tests/api/test_h2c_node.py).
TEST_APT_PACKAGES=(vagrant ruby docker.io nodejs)
[ "$WITH_TEST" = 1 ] && APT_PACKAGES+=("${TEST_APT_PACKAGES[@]}")
# Only with --bench: dnsmasq (the binary, no service) is bench/resolver.py's native upstream.
BENCH_APT_PACKAGES=(dnsmasq-base)
[ "$WITH_BENCH" = 1 ] && APT_PACKAGES+=("${BENCH_APT_PACKAGES[@]}")

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: missing system packages: ${missing[*]}; run as root (or apt-get install them)" >&2
    exit 1
  fi
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# br_netfilter makes bridged devbox-to-devbox traffic pass the inet forward hook; without it
# devbox-to-devbox rules would be silently bypassed, so the simulator refuses to start.
if [ ! -d /proc/sys/net/bridge ] && [ "$(id -u)" -eq 0 ]; then
  modprobe br_netfilter 2>/dev/null || echo "bootstrap: warning: could not load br_netfilter" >&2
fi

# The seccomp filter every devbox command runs under, on both runtimes (netns/seccomp_exec.c,
# see there): built once, and again when its source or flags change. Without it no devbox
# command runs. Static, because Docker devboxes run it inside any image; mode 0111, because in a
# container a process that cannot read its program is not dumpable (so it cannot be ptraced by the
# devbox's other processes before its filter is on).
SECCOMP_EXEC=/usr/local/libexec/devbox-sim/seccomp-exec
SECCOMP_CFLAGS="-O2 -static -Wall -Wextra -Werror"
if [ "$(id -u)" -eq 0 ]; then
  want=$( (cat netns/seccomp_exec.c; echo "$SECCOMP_CFLAGS 0111") | sha256sum | cut -d' ' -f1)
  if [ ! -x "$SECCOMP_EXEC" ] || [ "$(cat "$SECCOMP_EXEC.sha256" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: building $SECCOMP_EXEC"
    mkdir -p "$(dirname "$SECCOMP_EXEC")"
    # shellcheck disable=SC2086  # the flags are words
    gcc $SECCOMP_CFLAGS -o "$SECCOMP_EXEC.new" netns/seccomp_exec.c
    chmod 0111 "$SECCOMP_EXEC.new"
    mv -f "$SECCOMP_EXEC.new" "$SECCOMP_EXEC"
    echo "$want" > "$SECCOMP_EXEC.sha256"
  fi
elif [ ! -x "$SECCOMP_EXEC" ]; then
  echo "bootstrap: warning: $SECCOMP_EXEC is missing (run as root to build it): devboxes need it" >&2
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; raise SystemExit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "bootstrap: Python >= 3.11 is required ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi

# Reinstall only when pyproject.toml changed (or the test extras are newly wanted).
extras=""
[ "$WITH_TEST" = 1 ] && extras="[test]"
stamp=".venv/.devbox-sim-installed"
[ "$WITH_TEST" = 1 ] && stamp="$stamp-test"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing devbox-sim${extras} into .venv"
  .venv/bin/pip install -q -e ".${extras}"
  echo "$want" > "$stamp"
fi

# --test: the docker runtime's tests need a daemon. Where none answers (CI containers and VMs
# without systemd), start one. --iptables=false: devboxes use network mode "none" and the
# simulator's own data plane, so docker's NAT and its FORWARD DROP policy are not needed (with
# them on, as under systemd, the host uplink adds its DOCKER-USER accept rules; see README).
if [ "$WITH_TEST" = 1 ] && [ "$(id -u)" -eq 0 ] && command -v dockerd >/dev/null 2>&1; then
  if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    echo "bootstrap: starting dockerd --iptables=false (log: /var/log/devbox-sim-dockerd.log)"
    nohup setsid dockerd --iptables=false >/var/log/devbox-sim-dockerd.log 2>&1 </dev/null &
    for _ in $(seq 1 60); do
      docker version --format '{{.Server.Version}}' >/dev/null 2>&1 && break
      sleep 0.5  # bounded wait for the daemon's socket (30 s)
    done
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
      || echo "bootstrap: warning: dockerd did not answer; see /var/log/devbox-sim-dockerd.log" >&2
  fi
fi
