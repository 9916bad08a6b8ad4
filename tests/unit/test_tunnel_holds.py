"""TunnelService.hold: connections through a tunnel are cut when the tunnel is removed or the
devbox ends, also when that happened while the request was being admitted, woken or connected."""

from __future__ import annotations

import types
from dataclasses import replace

from simulator import devbox_store
from simulator.db import Database
from simulator.devbox_model import Devbox
from simulator.tunnels import TunnelService, new_tunnel


class _Devboxes:
    def __init__(self):
        self.hooks = []

    def add_terminal_hook(self, hook):
        self.hooks.append(hook)

    def require_runtime(self):
        return object()


def service(tmp_path):
    db = Database(tmp_path / "store.db")
    devboxes = _Devboxes()
    tunnels = TunnelService(db, devboxes)
    tunnel = new_tunnel({}, 1)
    devbox = Devbox(id="dbx_h", account="acct", status="running", create_time_ms=1, tunnel=tunnel)
    with db.transaction() as conn:
        devbox_store.insert(conn, devbox, None)
    return db, devboxes, tunnels, devbox


class Cuts:
    def __init__(self):
        self.count = 0

    def __call__(self):
        self.count += 1


def test_removal_and_end_cut_what_is_held_and_a_release_forgets_it(tmp_path):
    db, devboxes, tunnels, devbox = service(tmp_path)
    first, second = Cuts(), Cuts()
    release_first = tunnels.hold(devbox.id, devbox.tunnel.tunnel_key, first)
    tunnels.hold(devbox.id, devbox.tunnel.tunnel_key, second)
    assert (first.count, second.count) == (0, 0)  # a live tunnel: nothing cut
    release_first()
    tunnels.remove_tunnel("acct", devbox.id)
    assert (first.count, second.count) == (0, 1)
    devboxes.hooks[0](types.SimpleNamespace(id=devbox.id))  # the devbox ends
    assert second.count == 2  # still held (never released): cut again, harmlessly
    db.close()


def test_a_removal_or_end_before_the_hold_cuts_at_once(tmp_path):
    db, _, tunnels, devbox = service(tmp_path)
    key = devbox.tunnel.tunnel_key
    tunnels.remove_tunnel("acct", devbox.id)  # while the request was connecting, say
    late = Cuts()
    tunnels.hold(devbox.id, key, late)
    assert late.count == 1
    # A new tunnel, and the devbox ended meanwhile: cut too.
    again = new_tunnel({}, 2)
    with db.transaction() as conn:
        devbox_store.update(conn, replace(devbox, tunnel=again, status="shutdown"))
    ended = Cuts()
    tunnels.hold(devbox.id, again.tunnel_key, ended)
    assert ended.count == 1
    db.close()
