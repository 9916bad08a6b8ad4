"""Benchmark: resolve-then-connect from inside a devbox, TRIALS times, each on a FRESH learn.

Goal: 10,000 trials, 0 failures. This checks that learned addresses are in nftables before the
DNS reply leaves the resolver (adding them after the reply made ~45% of immediate connects
fail when measured elsewhere).

Setup: the real data plane (DataPlane + NetnsRuntime, as tests/dataplane/conftest.py) with an
offline world of HOSTS hosts h<i>.bench.example on documentation addresses (192.0.2.0/24 and
203.0.113.0/24), each with a TCP echo service on PORT; one devbox whose policy allows only
``*.bench.example`` (so every destination must come from the learned set).

One python3 process inside the devbox (as its unprivileged user) runs every trial, driven in
lock step over its stdin/stdout by this process:

  bench  -> devbox   "go h<i>.bench.example"
  devbox             getaddrinfo(name, AF_INET) via the devbox's resolv.conf (our resolver),
                     then at once connect() with CONNECT_TIMEOUT = 0.5 s - below the 1 s initial
                     SYN retransmission timeout, so a first SYN dropped because the address was
                     not yet in the set is a failure, not a silently retried success
  devbox -> bench    "ok <ip> <resolve ms> <connect ms>" or "fail ..."
  bench              removes <ip> from the devbox's learned nft set (ruleset.learned_remove),
                     drops it from Attached.learned and clears the resolver's answer cache

so before every trial the destination is NOT in the learned set and the name is not cached: the
connect can only succeed if the resolver's add happened before the answer arrived. Hosts are
used round robin (each address is reused only every HOSTS trials). Checks that the procedure
is honest: every trial's DNS answer must have gone through the resolver (query events counted),
the learned set is verified empty every CHECK_EVERY trials, and CONTROLS connects straight to
a just-removed address (no DNS) must all FAIL. Timings are measured inside the devbox.
The whole run is bounded by BUDGET_SECONDS (a watchdog kills the devbox process).
Writes bench/results/resolve_connect.json. Needs root; touches only namespaces it creates.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._stats import percentile, write_results  # noqa: E402

from simulator.dataplane import DataPlane, DataPlaneConfig  # noqa: E402
from simulator.policy_model import Egress, NetworkPolicy  # noqa: E402
from simulator.runtime.base import DevboxSpec  # noqa: E402
from simulator.runtime.netns_runtime import NetnsRuntime  # noqa: E402
from simulator.world import WorldConfig  # noqa: E402

TRIALS = 10_000
HOSTS = 300
PORT = 443
CONNECT_TIMEOUT = 0.5
CONTROLS = 20
CHECK_EVERY = 1000
BUDGET_SECONDS = 300
SUBNET = "10.91.0.0/16"
SUFFIX = "bench.example"
DEVBOX = "dbx_bench_rc"

TRIAL = r'''
import socket, sys, time
port, timeout = int(sys.argv[1]), float(sys.argv[2])
perf = time.perf_counter
for line in sys.stdin:
    cmd = line.split()
    if len(cmd) != 2:
        break
    if cmd[0] == "ctl":  # control: connect to an address without resolving it
        s = socket.socket()
        s.settimeout(timeout)
        try:
            s.connect((cmd[1], port))
            print("ok " + cmd[1] + " 0 0", flush=True)
        except OSError as e:
            print("fail connect-" + type(e).__name__, flush=True)
        finally:
            s.close()
        continue
    t0 = perf()
    try:
        ip = socket.getaddrinfo(cmd[1], port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except OSError as e:
        print("fail resolve-" + type(e).__name__, flush=True)
        continue
    t1 = perf()
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        result = "ok"
    except OSError as e:
        result = "fail connect-" + type(e).__name__
    finally:
        s.close()
    t2 = perf()
    print("%s %s %.4f %.4f" % (result, ip, (t1 - t0) * 1e3, (t2 - t1) * 1e3), flush=True)
'''



def world_hosts() -> dict[str, str]:
    hosts = {}
    for i in range(HOSTS):
        net, last = ("192.0.2", i + 1) if i < HOSTS // 2 else ("203.0.113", i - HOSTS // 2 + 1)
        hosts[f"h{i}.{SUFFIX}"] = f"{net}.{last}"
    assert max(int(a.rsplit(".", 1)[1]) for a in hosts.values()) <= 254
    return hosts


def kill_group(proc) -> None:
    """The exec'd command leads its own process group (nsenter forks into the devbox)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def learned_control(dataplane: DataPlane, devbox_id: str):
    """ALL coupling to data-plane internals is here (they are being restructured): how to take
    a learned address away again, and how to list the learned set. Returns (forget, elements)."""
    from netns import ruleset

    attached = dataplane.attached(devbox_id)
    key = attached.address.key
    nft = dataplane._nft

    def forget(ip: str) -> None:
        nft.apply(ruleset.learned_remove(key, [ip]))
        attached.learned.pop(ip, None)
        dataplane.resolver.cache.clear()

    def elements() -> list:
        return nft.list_set("inet", ruleset.TABLE, ruleset.learned_set(key))

    return forget, elements


def _interrupt(*_args):
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up like Ctrl-C
    load_start = os.getloadavg()[0]
    hosts = world_hosts()
    names = list(hosts)
    world = WorldConfig.from_dict({
        "ttl": 300,
        "hosts": {n: {"address": a, "tcp_echo": [PORT]} for n, a in hosts.items()},
    })
    policy = NetworkPolicy("npol_bench_rc", "bench", "rc", None, Egress(allowed_hostnames=(f"*.{SUFFIX}",)), 0, 0)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-rc-"))
    instance = secrets.token_hex(3)
    print(f"instance {instance}: namespaces dbxs-{instance}-*", flush=True)
    dataplane = DataPlane(DataPlaneConfig(instance=instance, world=world, subnet=SUBNET))
    runtime = None
    proc = None
    answered: dict[str, int] = {}  # qname -> allowed answers with addresses (query events)
    lock = threading.Lock()

    def on_query(devbox_id, event, _policy=None):
        if devbox_id == DEVBOX and event.verdict == "allowed" and event.addresses:
            with lock:
                answered[event.qname] = answered.get(event.qname, 0) + 1

    resolve_ms, connect_ms, total_ms = [], [], []
    failures: list[str] = []
    not_via_resolver = 0
    set_checks: list[int] = []
    controls: list[str] = []
    trials_done = 0
    setup_seconds = teardown_seconds = None
    aborted = None
    loop_seconds = None
    started = time.monotonic()
    try:
        dataplane.start()
        dataplane.query_listeners.append(on_query)
        runtime = NetnsRuntime(dataplane, data_dir)
        runtime.provision(DevboxSpec(DEVBOX, "bench", policy))
        runtime.sandbox(DEVBOX).write_file("trial.py", TRIAL.encode())
        forget, elements = learned_control(dataplane, DEVBOX)
        proc = runtime.exec(DEVBOX, f"/usr/bin/python3 trial.py {PORT} {CONNECT_TIMEOUT}")
        watchdog = threading.Timer(BUDGET_SECONDS, kill_group, (proc,))
        watchdog.daemon = True
        watchdog.start()

        def ask(line: str) -> list[str]:
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
            reply = proc.stdout.readline().decode().split()
            if not reply:
                raise RuntimeError(f"devbox process ended: {proc.stderr.read().decode()[-2000:]}")
            return reply

        loop_start = time.perf_counter()
        setup_seconds = time.monotonic() - started
        try:
            for i in range(TRIALS):
                name = names[i % HOSTS]
                with lock:
                    before = answered.get(name, 0)
                reply = ask(f"go {name}")
                trials_done += 1
                with lock:
                    if answered.get(name, 0) < before + 1:
                        not_via_resolver += 1
                if reply[0] == "ok":
                    ip, r_ms, c_ms = reply[1], float(reply[2]), float(reply[3])
                    resolve_ms.append(r_ms)
                    connect_ms.append(c_ms)
                    total_ms.append(r_ms + c_ms)
                    if ip != hosts[name]:
                        failures.append(f"{i} {name}: wrong address {ip}")
                    forget(ip)
                else:
                    failures.append(f"{i} {name}: {' '.join(reply)}")
                    forget(hosts[name])
                if (i + 1) % CHECK_EVERY == 0:
                    set_checks.append(len(elements()))
                    print(f"  {i + 1} trials, {len(failures)} failures, learned set size after removal: "
                          f"{set_checks[-1]}", flush=True)
            loop_seconds = time.perf_counter() - loop_start
            # Controls: a just-removed address must be unreachable without a fresh resolve.
            for i in range(CONTROLS):
                name = names[(i * 7) % HOSTS]
                reply = ask(f"go {name}")  # learn it ...
                forget(hosts[name])  # ... take it away again ...
                if reply[0] != "ok":
                    controls.append("setup failed: " + " ".join(reply))
                    continue
                controls.append(" ".join(ask(f"ctl {hosts[name]}")))  # ... and connect without DNS
        except RuntimeError as exc:  # the devbox process died or the watchdog killed it
            aborted = str(exc)
        watchdog.cancel()
    except KeyboardInterrupt:
        print("interrupted; cleaning up", flush=True)
        raise
    finally:
        teardown_start = time.monotonic()
        if proc is not None:
            kill_group(proc)
            proc.wait()
        if runtime is not None:
            runtime.close()  # shuts the devbox down and stops the data plane
        else:
            dataplane.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        teardown_seconds = time.monotonic() - teardown_start

    controls_blocked = sum(1 for c in controls if c.startswith("fail"))
    result = {
        "benchmark": "resolve_connect",
        "instance": instance,
        "cpus": os.cpu_count(),
        "loadavg_1min_at_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],  # other load on the machine
        "trials": trials_done,
        "failures": len(failures),
        "failure_examples": failures[:20],
        "hosts": HOSTS,
        "connect_timeout_s": CONNECT_TIMEOUT,
        "fresh_learn_per_trial": "learned_remove + Attached.learned pop + resolver cache clear after every trial",
        "trials_not_answered_by_resolver": not_via_resolver,
        "learned_set_size_checks": set_checks,
        "controls": {"connects_to_removed_address": len(controls), "blocked": controls_blocked},
        "resolve_ms": {"p50": round(percentile(resolve_ms, 50), 3), "p99": round(percentile(resolve_ms, 99), 3)} if resolve_ms else None,
        "connect_ms": {"p50": round(percentile(connect_ms, 50), 3), "p99": round(percentile(connect_ms, 99), 3)} if connect_ms else None,
        "resolve_connect_ms": {
            "p50": round(percentile(total_ms, 50), 3),
            "p99": round(percentile(total_ms, 99), 3),
            "max": round(max(total_ms), 3),
        } if total_ms else None,
        "trial_loop_seconds": round(loop_seconds, 1) if loop_seconds is not None else None,
        "aborted": aborted,
        "setup_seconds": round(setup_seconds, 1) if setup_seconds is not None else None,
        "teardown_seconds": round(teardown_seconds, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "goal": f"{TRIALS} trials, 0 failures",
    }
    result["goal_met"] = (
        trials_done == TRIALS and not failures and not_via_resolver == 0
        and controls_blocked == len(controls) == CONTROLS and all(n == 0 for n in set_checks)
    )
    write_results("resolve_connect", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
