"""Benchmark: TCP throughput out of a filtered devbox vs an unfiltered one (goal: >= 0.95x),
with LEARNED (100,000) addresses in the filtered devbox's learned set.

Setup: the real data plane (DataPlane + NetnsRuntime) with an offline world holding one host,
sink.bench.example (192.0.2.50). Two devboxes on the same bridge:

  filtered    policy: hostnames [sink.bench.example] + CIDR 203.0.113.0/24 tcp/443; its learned
              nft set is pre-filled (in chunks, one transaction each) with LEARNED random
              addresses from 100.64.0.0/10 - set elements only, never a packet to them - plus
              the sink's address (the devbox also resolves the sink, as a real client would)
  unfiltered  no policy (egress None)

Sink: a TCP server in the world namespace bound to the sink's own address, run by a thread of
this process, that discards everything and counts bytes from the first byte to EOF.
Sender: one python3 process inside the devbox (its unprivileged user) resolves the sink,
connects, sendall()s a 1 MiB buffer for SECONDS, shuts down its side and waits for the sink
to close. Throughput = bytes the sink received / its receive time.

RUNS rounds, one run per devbox each, order alternating (u f, f u, u f ...). The headline
ratio is the median over rounds of filtered/unfiltered within the round: the two runs of a
round are adjacent in time, so drift from other load on the machine cancels (the ratio of the
means is reported too). Many short runs rather than a few long ones, because on a small
shared machine the run-to-run spread is far larger than the 5% the goal allows.
Also checks that the filtered devbox cannot reach an address outside its policy and that the
learned set still holds LEARNED + 1 elements afterwards. Writes bench/results/throughput.json.
Needs root; touches only namespaces it creates.
"""

from __future__ import annotations

import ipaddress
import os
import queue
import random
import secrets
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._stats import write_results  # noqa: E402

from simulator.dataplane import DataPlane, DataPlaneConfig  # noqa: E402
from simulator.policy_model import AllowedCidr, Egress, NetworkPolicy, PortRule  # noqa: E402
from simulator.runtime.base import DevboxSpec  # noqa: E402
from simulator.runtime.netns_runtime import NetnsRuntime  # noqa: E402
from simulator.world import WorldConfig  # noqa: E402

LEARNED = 100_000
CHUNK = 10_000
LEARNED_TIMEOUT = 3600
SECONDS = 2.0
RUNS = 10
SINK_NAME, SINK_IP, SINK_PORT = "sink.bench.example", "192.0.2.50", 5001
OUTSIDE_POLICY = "198.51.100.99"  # in the world's ranges, allowed by neither policy rule
SUBNET = "10.92.0.0/16"
FILTERED, UNFILTERED = "dbx_bench_tp_f", "dbx_bench_tp_u"
RANDOM_POOL = ipaddress.IPv4Network("100.64.0.0/10")

SENDER = r'''
import socket, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "blocked":  # must time out: the address is outside the policy
    s = socket.socket()
    s.settimeout(0.5)
    try:
        s.connect((host, port))
        print("reachable")
    except OSError as e:
        print("blocked " + type(e).__name__)
    sys.exit(0)
seconds = float(sys.argv[4])
ip = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
s = socket.create_connection((ip, port), timeout=5)
buf = memoryview(bytearray(1 << 20))
sent = 0
start = time.perf_counter()
end = start + seconds
while time.perf_counter() < end:
    s.sendall(buf)
    sent += len(buf)
s.shutdown(socket.SHUT_WR)
s.recv(1)  # the sink closes after reading everything
print("sent %d %.6f %s" % (sent, time.perf_counter() - start, ip))
'''


def kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def learned_bulk(dataplane: DataPlane, devbox_id: str):
    """ALL coupling to data-plane internals is here (they are being restructured): bulk-add
    learned elements to a devbox's set, and count them. Returns (add, count)."""
    from netns import ruleset

    key = dataplane.attached(devbox_id).address.key
    nft = dataplane._nft

    def add(entries: list[tuple[str, int]]) -> None:
        nft.apply(ruleset.learned_add(key, entries))

    def count() -> int:
        return len(nft.list_set("inet", ruleset.TABLE, ruleset.learned_set(key)))

    return add, count


class Sink:
    """Discarding TCP server in the world namespace; one connection at a time."""

    def __init__(self, world_ns: str):
        from netns import namespaces

        self.sock = namespaces.socket_in(world_ns, socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with namespaces.entered(world_ns):
            self.sock.bind((SINK_IP, SINK_PORT))
        self.sock.listen(4)
        self.results: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._serve, name="sink", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        buf = bytearray(4 << 20)
        while True:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                total, first = 0, None
                conn.settimeout(30)
                try:
                    while n := conn.recv_into(buf):
                        if first is None:
                            first = time.perf_counter()
                        total += n
                except OSError as exc:
                    self.results.put(("error", repr(exc)))
                    continue
                self.results.put((total, time.perf_counter() - (first or time.perf_counter())))

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


def random_addresses(count: int) -> list[str]:
    base = int(RANDOM_POOL.network_address)
    offsets = random.Random(42).sample(range(1, RANDOM_POOL.num_addresses - 1), count)
    return [str(ipaddress.IPv4Address(base + o)) for o in offsets]


def _interrupt(*_args):
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up like Ctrl-C
    load_start = os.getloadavg()[0]
    world = WorldConfig.from_dict({"hosts": {SINK_NAME: {"address": SINK_IP}}})
    policy = NetworkPolicy(
        "npol_bench_tp", "bench", "tp", None,
        Egress(allowed_hostnames=(SINK_NAME,), allowed_cidrs=(AllowedCidr("203.0.113.0/24", (PortRule(443, None, "TCP"),)),)),
        0, 0,
    )
    data_dir = Path(tempfile.mkdtemp(prefix="bench-tp-"))
    instance = secrets.token_hex(3)
    print(f"instance {instance}: namespaces dbxs-{instance}-*", flush=True)
    dataplane = DataPlane(DataPlaneConfig(instance=instance, world=world, subnet=SUBNET))
    runtime = None
    sink = None
    procs: list = []
    runs: dict[str, list[dict]] = {FILTERED: [], UNFILTERED: []}
    try:
        dataplane.start()
        runtime = NetnsRuntime(dataplane, data_dir)
        runtime.provision(DevboxSpec(FILTERED, "bench", policy))
        runtime.provision(DevboxSpec(UNFILTERED, "bench", None))
        for devbox in (FILTERED, UNFILTERED):
            runtime.sandbox(devbox).write_file("sender.py", SENDER.encode())
        add, count = learned_bulk(dataplane, FILTERED)
        addresses = random_addresses(LEARNED)
        fill_start = time.perf_counter()
        for i in range(0, LEARNED, CHUNK):
            add([(a, LEARNED_TIMEOUT) for a in addresses[i:i + CHUNK]])
        add([(SINK_IP, LEARNED_TIMEOUT)])
        fill_seconds = time.perf_counter() - fill_start
        size_before = count()
        print(f"learned set of the filtered devbox: {size_before} elements (filled in {fill_seconds:.1f} s)", flush=True)
        sink = Sink(dataplane.world_ns)

        def run(devbox: str, *argv: str, timeout: float = 30) -> str:
            proc = runtime.exec(devbox, "/usr/bin/python3 sender.py " + " ".join(argv))
            procs.append(proc)
            try:
                out, err = proc.communicate(timeout=timeout)
            finally:
                kill_group(proc)
                proc.wait()
            lines = out.decode().split("\n")
            if proc.returncode != 0 or not lines[0]:
                raise RuntimeError(f"sender in {devbox} failed: {err.decode()[-2000:]}")
            return lines[0]

        blocked = run(FILTERED, "blocked", OUTSIDE_POLICY, str(SINK_PORT))
        for r in range(RUNS):
            order = (UNFILTERED, FILTERED) if r % 2 == 0 else (FILTERED, UNFILTERED)
            for devbox in order:
                line = run(devbox, "send", SINK_NAME, str(SINK_PORT), str(SECONDS)).split()
                got = sink.results.get(timeout=10)
                if got[0] == "error":
                    raise RuntimeError(f"sink: {got[1]}")
                received, seconds = got
                if received != int(line[1]) or line[3] != SINK_IP:
                    raise RuntimeError(f"sink got {received} bytes, sender sent {line[1]} to {line[3]}")
                gbps = received * 8 / seconds / 1e9
                runs[devbox].append({"bytes": received, "seconds": round(seconds, 4), "gbit_s": round(gbps, 3)})
                print(f"  run {r + 1} {'filtered  ' if devbox == FILTERED else 'unfiltered'} {gbps:7.2f} Gbit/s", flush=True)
        size_after = count()
    except KeyboardInterrupt:
        print("interrupted; cleaning up", flush=True)
        raise
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill_group(proc)
                proc.wait()
        if sink is not None:
            sink.close()
        if runtime is not None:
            runtime.close()  # shuts the devboxes down and stops the data plane
        else:
            dataplane.stop()
        shutil.rmtree(data_dir, ignore_errors=True)

    def gbit(devbox: str) -> float:
        return statistics.fmean(r["gbit_s"] for r in runs[devbox])

    filtered, unfiltered = gbit(FILTERED), gbit(UNFILTERED)
    paired = [f["gbit_s"] / u["gbit_s"] for f, u in zip(runs[FILTERED], runs[UNFILTERED])]
    result = {
        "benchmark": "throughput",
        "instance": instance,
        "cpus": os.cpu_count(),
        "loadavg_1min_at_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],  # other load on the machine
        "learned_set_elements": {"before": size_before, "after": size_after},
        "learned_fill_seconds": round(fill_seconds, 2),
        "seconds_per_run": SECONDS,
        "runs_each": RUNS,
        "filtered_blocked_outside_policy": blocked,
        "unfiltered_gbit_s": round(unfiltered, 3),
        "filtered_gbit_s": round(filtered, 3),
        "ratio_filtered_vs_unfiltered": round(statistics.median(paired), 3),
        "ratio_per_round": [round(p, 3) for p in paired],
        "ratio_of_means": round(filtered / unfiltered, 3),
        "runs": {"unfiltered": runs[UNFILTERED], "filtered": runs[FILTERED]},
        "goal": f"filtered >= 0.95x unfiltered with {LEARNED} learned addresses",
    }
    result["goal_met"] = (
        result["ratio_filtered_vs_unfiltered"] >= 0.95 and size_after >= LEARNED + 1 and blocked.startswith("blocked")
    )
    out = write_results("throughput", result)
    print(f"unfiltered {unfiltered:.2f} Gbit/s, filtered {filtered:.2f} Gbit/s (means); median per-round ratio "
          f"{result['ratio_filtered_vs_unfiltered']:.3f}x (goal >= 0.95x): {'met' if result['goal_met'] else 'NOT met'}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
