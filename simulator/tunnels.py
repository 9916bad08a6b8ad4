"""Devbox tunnels: the ``enable_tunnel`` / ``remove_tunnel`` actions, and what the tunnel proxy
(``simulator.api.tunnel_proxy``) asks before it forwards a request.

A tunnel makes ``http://{port}-{tunnel_key}.tunnel.<any host>:<API port>/`` reach ``port`` inside
the devbox (the Runloop URL is ``https://{port}-{tunnel_key}.tunnel.runloop.ai``). The key is
the capability (128 random bits): a tunnel request needs no API key, only, for an
``authenticated`` tunnel, ``X-Runloop-Tunnel-Authorization: Bearer <auth_token>``. One tunnel
per devbox; it lasts as long as the devbox (suspend and resume keep it).

Open connections: the proxy registers each connection it holds to a devbox (``hold``). When
the tunnel is removed or the devbox ends, they are all cut: the capability is revoked, or the
devbox's server is gone (and no reset would come from a removed namespace).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from simulator import clock, devbox_store, lifecycle
from simulator.db import Database
from simulator.devbox_model import Devbox, Tunnel
from simulator.errors import ApiError, InvalidRequest, found
from simulator.idle_policy import resumes_on_http

if TYPE_CHECKING:
    from simulator.devboxes import DevboxService  # which imports new_tunnel from here

AUTH_HEADER = "x-runloop-tunnel-authorization"

log = logging.getLogger(__name__)


def new_tunnel(params: dict[str, Any] | None, now_ms: int) -> Tunnel:
    """A tunnel as ``params`` (enable_tunnel's body, or create's ``tunnel``) asks: open, keep-
    alive and no wake-up unless said otherwise."""
    params = params or {}
    mode = params.get("auth_mode") or "open"
    if mode not in ("open", "authenticated"):
        raise InvalidRequest(f"auth_mode must be open or authenticated, not {mode!r}")
    keep_alive, wake = params.get("http_keep_alive"), params.get("wake_on_http")
    return Tunnel(
        # Lower case letters and digits: the key is part of a DNS label ({port}-{key}).
        tunnel_key=secrets.token_hex(16),
        auth_mode=mode,
        create_time_ms=now_ms,
        http_keep_alive=True if keep_alive is None else bool(keep_alive),
        wake_on_http=bool(wake),
        auth_token=secrets.token_urlsafe(32) if mode == "authenticated" else None,
    )


class TunnelRefused(ApiError):
    """Why the proxy does not forward a request (a JSON error like any other)."""


class TunnelService:
    def __init__(self, db: Database, devboxes: DevboxService):
        self.db = db
        self.devboxes = devboxes
        self._held: dict[str, set[Callable[[], None]]] = {}  # devbox id -> cuts of its open connections
        self._held_lock = threading.Lock()
        devboxes.add_terminal_hook(lambda devbox: self._cut(devbox.id))

    # --- API actions -------------------------------------------------------------------

    def enable_tunnel(self, account: str, devbox_id: str, params: dict[str, Any]) -> Tunnel:
        """400 unless the devbox is running and has no tunnel yet."""
        self.devboxes.require_runtime()
        with self.db.transaction() as conn:
            devbox = found(devbox_store.get(conn, account, devbox_id), "devbox", devbox_id)
            if devbox.status != lifecycle.RUNNING:
                raise InvalidRequest(f"devbox {devbox_id} is {devbox.status}, not running", code="devbox_not_running")
            if devbox.tunnel is not None:
                raise InvalidRequest(f"devbox {devbox_id} already has a tunnel; remove it first", code="tunnel_exists")
            tunnel = new_tunnel(params, clock.now_ms())
            devbox_store.update(conn, replace(devbox, tunnel=tunnel))
        return tunnel

    def remove_tunnel(self, account: str, devbox_id: str) -> None:
        """400 when the devbox has no tunnel. New requests to its URL get 404 at once, and the
        connections already through it are cut."""
        self.devboxes.require_runtime()
        with self.db.transaction() as conn:
            devbox = found(devbox_store.get(conn, account, devbox_id), "devbox", devbox_id)
            if devbox.tunnel is None:
                raise InvalidRequest(f"devbox {devbox_id} has no tunnel", code="no_tunnel")
            devbox_store.update(conn, replace(devbox, tunnel=None))
        self._cut(devbox_id)

    # --- for the proxy -------------------------------------------------------------------

    def admit(self, tunnel_key: str, authorization: str | None) -> Devbox:
        """The devbox a request for ``tunnel_key`` goes to, checked: the key exists (404), the
        token matches on an authenticated tunnel (401). Its status is the caller's business."""
        with self.db.read() as conn:
            devbox = devbox_store.by_tunnel_key(conn, tunnel_key)
        if devbox is None or devbox.tunnel is None:
            raise TunnelRefused(f"no tunnel {tunnel_key!r}", code="not_found", status=404)
        token = devbox.tunnel.auth_token
        if devbox.tunnel.auth_mode == "authenticated":
            scheme, _, given = (authorization or "").strip().partition(" ")
            if token is None or scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                raise TunnelRefused(
                    f"tunnel {tunnel_key!r} needs {AUTH_HEADER}: Bearer <auth_token>", code="unauthorized", status=401
                )
        return devbox

    def hold(self, devbox_id: str, tunnel_key: str, cut: Callable[[], None]) -> Callable[[], None]:
        """Register an open connection to the devbox through tunnel ``tunnel_key``; ``cut()``
        (thread-safe, quick) ends it. Returns the release to call when it ends by itself.
        Blocking (a store read): run it in a thread.

        Registered first, then checked: a removal or an end that came since the request was
        admitted (during a resume or the connect) is seen here and cuts it at once; one that
        comes later finds it registered."""
        with self._held_lock:
            self._held.setdefault(devbox_id, set()).add(cut)

        def release() -> None:
            with self._held_lock:
                held = self._held.get(devbox_id)
                if held is not None:
                    held.discard(cut)
                    if not held:
                        del self._held[devbox_id]

        with self.db.read() as conn:
            devbox = devbox_store.by_tunnel_key(conn, tunnel_key)
        if devbox is None or devbox.id != devbox_id or devbox.status in lifecycle.TERMINAL:
            cut()
        return release

    def _cut(self, devbox_id: str) -> None:
        with self._held_lock:
            cuts = list(self._held.get(devbox_id, ()))
        for cut in cuts:
            try:
                cut()
            except Exception:
                log.exception("could not cut a tunnel connection to %s", devbox_id)

    def reached(self, devbox: Devbox) -> None:
        """A request went through: activity, if the tunnel says it counts."""
        if devbox.tunnel is not None and devbox.tunnel.http_keep_alive:
            self.devboxes.touch(devbox.id)

    def wake(self, devbox: Devbox) -> Devbox:
        """A running devbox for the request (blocking: run it in a thread): resumed first when
        suspended and HTTP resumes it (``lifecycle.resume_triggers.http``, else the tunnel's
        ``wake_on_http``); 502 when it is not running (provisioning, suspended without either,
        ended)."""
        if devbox.status == lifecycle.SUSPENDED and resumes_on_http(devbox.launch_parameters, devbox.tunnel):
            try:
                devbox = self.devboxes.resume_devbox(devbox.account, devbox.id)
            except ApiError:  # another request resumed it first (or it ended): as it is now
                devbox = self.devboxes.retrieve_devbox(devbox.account, devbox.id)
        if devbox.status != lifecycle.RUNNING:
            raise TunnelRefused(f"devbox {devbox.id} is {devbox.status}, not running", code="devbox_not_running",
                                status=502)
        return devbox

