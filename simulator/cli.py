"""``devbox-sim`` command line: ``devbox-sim serve`` runs the API with uvicorn."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

from simulator.accounts import Accounts
from simulator.config import (
    LOG_LEVELS,
    PRIVATE_NETWORK_MODES,
    RUNTIMES,
    UPLINKS,
    Settings,
    parse_servers,
    parse_subnet,
)
from simulator.data_dir_lock import lock_data_dir
from simulator.fd_limit import raise_open_file_limit

log = logging.getLogger("devbox_sim")

# A stop waits this long for requests in flight (after the devboxes ended), then cancels them.
GRACEFUL_SHUTDOWN_SECONDS = 10.0


def _checked(parse):
    """An argparse type from a parser raising ValueError: its message becomes the error line
    (argparse would print only "invalid <function name> value")."""
    def check(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    check.__name__ = parse.__name__
    return check


def _whole_number(low: int, high: int | None):
    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if number < low or (high is not None and number > high):
            raise ValueError(f"{number} is out of range: from {low}" + (f" to {high}" if high is not None else " up"))
        return number
    return _checked(parse)


def build_parser(defaults: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devbox-sim", description="Offline Runloop network-policy simulator")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the API server (env: DEVBOX_SIM_*)")
    serve.add_argument("--host", default=defaults.host, help="listen address (DEVBOX_SIM_HOST; default %(default)s)")
    serve.add_argument("--port", type=_whole_number(0, 65535), default=defaults.port, help="listen port, 0 = any free port (DEVBOX_SIM_PORT; default %(default)s)")
    serve.add_argument("--data-dir", type=Path, default=defaults.data_dir, help="SQLite store and devbox files (DEVBOX_SIM_DATA_DIR; default %(default)s)")
    serve.add_argument("--api-keys", type=Path, default=defaults.api_keys, help="file of 'TOKEN ACCOUNT' lines; unknown tokens get 401 (DEVBOX_SIM_API_KEYS)")
    serve.add_argument("--max-policies", type=_whole_number(0, None), default=defaults.max_policies_per_account, dest="max_policies_per_account", help="network policies per account (DEVBOX_SIM_MAX_POLICIES; default %(default)s)")
    serve.add_argument("--unique-policy-names", action=argparse.BooleanOptionalAction, default=defaults.unique_policy_names, help="refuse a network policy name already used in the account (400 duplicate_name); by default names may repeat, as in the API's current version (DEVBOX_SIM_UNIQUE_POLICY_NAMES)")
    serve.add_argument("--log-level", default=defaults.log_level, choices=LOG_LEVELS, help="one access-log line per request at info (DEVBOX_SIM_LOG_LEVEL; default %(default)s)")
    serve.add_argument("--runtime", default=defaults.runtime, choices=RUNTIMES, help="devbox runtime: docker containers or netns namespaces (both need root), none = API only, auto = docker when a daemon answers, else netns when possible (DEVBOX_SIM_RUNTIME; default %(default)s)")
    serve.add_argument("--image", default=defaults.image, help="docker runtime: the devboxes' image, already in the daemon (never pulled); default: a busybox image built offline (DEVBOX_SIM_IMAGE)")
    serve.add_argument("--uplink", default=defaults.uplink, choices=UPLINKS, help="where devbox egress goes: the host's network, or the offline world (DEVBOX_SIM_UPLINK; default offline with --world, else host)")
    serve.add_argument("--world", type=Path, default=defaults.world, help="TOML file describing the offline world (DEVBOX_SIM_WORLD)")
    serve.add_argument("--subnet", type=_checked(parse_subnet), default=defaults.subnet, help="devbox subnet inside the router namespace, a /8 to a /24 (DEVBOX_SIM_SUBNET; default %(default)s)")
    serve.add_argument("--upstream-dns", type=_checked(parse_servers), default=defaults.upstream_dns, help="host uplink: upstream DNS servers, IP[:PORT],... (DEVBOX_SIM_UPSTREAM_DNS; default /etc/resolv.conf)")
    serve.add_argument("--private-networks", default=defaults.private_networks, choices=PRIVATE_NETWORK_MODES, help="private networks (10/8, 172.16/12, 192.168/16, 100.64/10, 198.18/15: the host's LAN, VPNs, Docker's bridges): open = reachable like the internet; by-cidr = only through an allowed CIDR, not allow_all, no policy or a DNS answer (DEVBOX_SIM_PRIVATE_NETWORKS; default open)")
    events = commands.add_parser("events", help="a devbox's network decisions as a table (--follow to keep watching)")
    from simulator import events_cli

    events_cli.add_arguments(events)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        defaults, bad_variable = Settings.from_env(), None
    except ValueError as exc:
        defaults, bad_variable = Settings(), exc
    args = build_parser(defaults).parse_args(argv)
    if args.command == "serve":
        if bad_variable is not None:  # a DEVBOX_SIM_* variable that does not parse: one line, exit 2
            print(f"devbox-sim: error: {bad_variable}", file=sys.stderr, flush=True)
            return 2
        return serve(args)
    if args.command == "events":
        from simulator import events_cli

        return events_cli.run(args)
    return 2


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    global _data_dir_lock
    raise_open_file_limit()
    try:
        # Before anything touches the instance's kernel state. Never closed: the process's
        # exit releases it, after its last thread.
        _data_dir_lock = lock_data_dir(args.data_dir)
        server, sock = _start(args)
    except _setup_errors() as exc:
        # A setup problem the user can fix (data dir in use, port taken, a bad key or world
        # file, a runtime this machine cannot run): one line, exit 2. Anything else is a bug
        # and keeps its traceback.
        log.debug("startup failed", exc_info=True)
        print(f"devbox-sim: error: {_describe(exc)}", file=sys.stderr, flush=True)
        return 2
    server.run(sockets=[sock])
    return 0


class SetupError(Exception):
    """A setup problem found by ``serve`` itself (the listening port, the key file)."""


def _setup_errors() -> tuple[type[BaseException], ...]:
    from netns.links import BrNetfilterMissing
    from simulator.data_dir_lock import DataDirInUse, DataDirUnusable
    from simulator.db import StoreTooNew
    from simulator.runtime.base import RuntimeFailure
    from simulator.runtime.factory import RuntimeUnavailable
    from simulator.world import WorldConfigError

    # RuntimeFailure: a runtime refusing to start says why for users (e.g. --image missing).
    return (SetupError, DataDirInUse, DataDirUnusable, StoreTooNew, RuntimeUnavailable, RuntimeFailure,
            WorldConfigError, BrNetfilterMissing)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:  # without "[Errno N]"
        return exc.strerror if exc.filename is None else f"{exc.strerror}: {exc.filename}"
    return str(exc) or type(exc).__name__


_data_dir_lock: int | None = None  # the held lock's descriptor (serve)


def _start(args: argparse.Namespace):
    """The uvicorn server and its bound socket, the app built (runtime and data plane up)."""
    import uvicorn

    from simulator.app import create_app

    settings = Settings(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        api_keys=args.api_keys,
        max_policies_per_account=args.max_policies_per_account,
        unique_policy_names=args.unique_policy_names,
        log_level=args.log_level,
        runtime=args.runtime,
        image=args.image,
        uplink=args.uplink,
        world=args.world,
        subnet=args.subnet,
        upstream_dns=tuple(args.upstream_dns),
        private_networks=args.private_networks,
    )
    if settings.world is not None and settings.effective_uplink == "host":
        # Refused rather than ignored: whoever gave a world means devboxes to reach it only.
        raise SetupError("--world is the offline uplink's world; with --uplink host it would be ignored:"
                         " give one or the other")
    # Bind before starting so that --port 0 can report the port actually chosen.
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listener's proto says TCP; with proto 0, keep-alive requests stall ~40 ms on delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.host, settings.port))
        except OSError as exc:
            raise SetupError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}") from exc
        port = sock.getsockname()[1]
        try:
            Accounts.from_file(settings.api_keys)  # read again by the app; checked here to say so
        except (OSError, ValueError) as exc:
            raise SetupError(f"--api-keys: {_describe(exc)}") from exc
        if settings.world is not None:
            from simulator.world import WorldConfig

            WorldConfig.load(settings.world)  # checked whatever the runtime (none ignores it)
        app = create_app(settings)
    except BaseException:
        sock.close()
        raise
    from simulator.api.tunnel_headers import DefaultHeaders

    config = uvicorn.Config(
        DefaultHeaders(app), log_level=args.log_level, access_log=False, log_config=None,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS, **uvicorn_protocol_options(),
    )
    # Printed whatever the log level: tests and scripts read the port from it (--port 0).
    shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host  # an IPv6 URL has brackets
    print(f"devbox-sim listening on http://{shown_host}:{port} (data dir {settings.data_dir.resolve()})", file=sys.stderr, flush=True)
    return _server_class()(config, app.state.end_devboxes), sock


def uvicorn_protocol_options() -> dict:
    """How uvicorn speaks to clients, for the API and its tunnels (tests serve with these too)."""
    from simulator.api.h2c import H2cOrHttp1Protocol
    from simulator.api.tunnel_websocket import ServerWebSocketProtocol

    return dict(
        # uvicorn's HTTP/1.1, plus HTTP/2 (h2c prior knowledge) for a connection opening with
        # its preface: the TypeScript SDK's node:http2 client speaks it over http://.
        http=H2cOrHttp1Protocol,
        ws=ServerWebSocketProtocol,  # wsproto: tunnels carry WebSockets (the API's routes refuse them)
        # No compression with clients: wsproto inflates a frame without a size limit before
        # uvicorn counts it (a 250 KiB frame took 250 MiB), and the relay copies messages anyway.
        ws_per_message_deflate=False,
        # Date and Server come from the app (tunnel_headers.with_default_headers): uvicorn's
        # would be put in front of a devbox's own answer through a tunnel, two of each.
        server_header=False, date_header=False,
    )


def _server_class():
    import asyncio

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that a stop ends the devboxes first. uvicorn waits for
        every open connection to finish before the app's shutdown runs, and a command's
        output stream or a long poll only finishes when its devbox ends: without this, a stop
        would wait for them (up to GRACEFUL_SHUTDOWN_SECONDS, then cancel them)."""

        def __init__(self, config, end_devboxes):
            super().__init__(config)
            self._end_devboxes = end_devboxes

        async def shutdown(self, sockets=None) -> None:
            for server in self.servers:  # no new connection first (uvicorn does it again)
                server.close()
            if self._end_devboxes is not None:
                try:
                    await asyncio.to_thread(self._end_devboxes)
                except Exception:  # the app's shutdown still closes the runtime: go on to it
                    log.exception("ending the devboxes failed")
            await super().shutdown(sockets)

    return Server


if __name__ == "__main__":
    raise SystemExit(main())
