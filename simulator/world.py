"""The offline world: hosts on documentation ranges, their services, and the DNS that names them.

``--world FILE`` (TOML) builds a network namespace that stands in for the internet::

    resolver = "198.51.100.53"      # the world's public DNS (upstream of our resolver)
    ttl = 300                       # TTL of every answer the world's DNS gives

    [hosts."github.com"]
    address = "192.0.2.10"
    aliases = ["www.github.com"]    # CNAMEs pointing at github.com
    http = [80]                     # answers GET with "<name> <path>"
    tcp_echo = [22, 443]            # echoes what it receives
    udp_echo = [7]                  # echoes each datagram

The router's uplink leads here, so nothing a devbox sends leaves the machine. Every service
socket is bound to its host's own address (a UDP server on 0.0.0.0 answers from the wrong
source address), inside the world namespace, and served by threads of this process.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import socketserver
import threading
import tomllib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import idna

from dns import DnsServer, Zone, bind_udp_tcp
from netns import links, namespaces
from simulator import hostnames

log = logging.getLogger(__name__)

DOCUMENTATION_NETS = tuple(
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
)


MAX_TTL = 2**31 - 1  # RFC 2181


class WorldConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    aliases: tuple[str, ...] = ()
    http: tuple[int, ...] = ()
    tcp_echo: tuple[int, ...] = ()
    udp_echo: tuple[int, ...] = ()


@dataclass(frozen=True)
class WorldConfig:
    resolver: str = "198.51.100.53"
    ttl: int = 300
    hosts: tuple[Host, ...] = ()

    @classmethod
    def load(cls, path: Path) -> WorldConfig:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc  # no "[Errno N] ..."
            raise WorldConfigError(f"{path}: {why}") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict, where: str = "world") -> WorldConfig:
        _known_keys(data, {"resolver", "ttl", "hosts"}, where)
        resolver = _documentation_address(data.get("resolver", cls.resolver), f"{where}: resolver")
        ttl = data.get("ttl", cls.ttl)
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_TTL:
            raise WorldConfigError(f"{where}: ttl {ttl!r} is not a whole number of seconds from 0 to {MAX_TTL}")
        hosts_table = data.get("hosts") or {}
        if not isinstance(hosts_table, dict):
            raise WorldConfigError(f"{where}: hosts must be a table of [hosts.\"<name>\"] entries")
        hosts = []
        for name, spec in hosts_table.items():
            here = f"{where}: hosts.{name!r}"
            if not isinstance(spec, dict) or "address" not in spec:
                raise WorldConfigError(f"{here}: needs an address")
            _known_keys(spec, {"address", "aliases", "http", "tcp_echo", "udp_echo"}, here)
            aliases = spec.get("aliases", [])
            if not isinstance(aliases, list):
                raise WorldConfigError(f"{here}: aliases must be a list of names")
            hosts.append(
                Host(
                    name=_host_name(name, here),
                    address=_documentation_address(spec["address"], here),
                    aliases=tuple(_host_name(alias, f"{here}: alias") for alias in aliases),
                    http=_ports(spec.get("http", []), here),
                    tcp_echo=_ports(spec.get("tcp_echo", []), here),
                    udp_echo=_ports(spec.get("udp_echo", []), here),
                )
            )
        config = cls(resolver=resolver, ttl=ttl, hosts=tuple(hosts))
        _check_services_unique(config, where)
        seen: set[str] = set()
        for name in [n for host in hosts for n in (host.name, *host.aliases)]:
            if name in seen:
                raise WorldConfigError(f"{where}: {name!r} is given twice (a name is one host, or an alias of one)")
            seen.add(name)
        try:
            config.zone()
        except ValueError as exc:
            raise WorldConfigError(f"{where}: {exc}") from None
        return config

    def zone(self) -> Zone:
        records: dict[str, list[str]] = {}
        cnames: dict[str, str] = {}
        for host in self.hosts:
            records.setdefault(host.name, []).append(host.address)
            for alias in host.aliases:
                cnames[alias] = host.name
        return Zone(records, cnames, ttl=self.ttl)

    def addresses(self) -> list[str]:
        return sorted({self.resolver, *(h.address for h in self.hosts)})


def _check_services_unique(config: WorldConfig, where: str) -> None:
    """Each (address, protocol, port) is served once, and the world's resolver keeps UDP and
    TCP 53 on its address: checked here, before anything is built, so a clash is one line
    naming the host rather than "address already in use" from a bind half-way through."""
    taken = {(config.resolver, "udp", 53): "the world's resolver", (config.resolver, "tcp", 53): "the world's resolver"}
    for host in config.hosts:
        services = [("tcp", port, "http") for port in host.http]
        services += [("tcp", port, "tcp_echo") for port in host.tcp_echo]
        services += [("udp", port, "udp_echo") for port in host.udp_echo]
        for protocol, port, kind in services:
            owner = taken.get((host.address, protocol, port))
            if owner is not None:
                raise WorldConfigError(
                    f"{where}: hosts.{host.name!r}: {kind} port {port} on {host.address} is already "
                    f"served by {owner} ({protocol.upper()} {port} can be served once per address)"
                )
            taken[(host.address, protocol, port)] = f"hosts.{host.name!r} ({kind})"


def _documentation_address(value: object, where: str) -> str:
    """World hosts live only on documentation ranges: never a real address by mistake."""
    try:
        address = ipaddress.IPv4Address(str(value))
    except ValueError:
        raise WorldConfigError(f"{where}: {value!r} is not an IPv4 address") from None
    if not any(address in net for net in DOCUMENTATION_NETS):
        raise WorldConfigError(
            f"{where}: {address} is outside the documentation ranges 192.0.2.0/24, "
            "198.51.100.0/24 and 203.0.113.0/24"
        )
    return str(address)


def _known_keys(table: dict, known: set[str], where: str) -> None:
    """A misspelt key (``tcp_echos``) would silently leave a service out: refuse it."""
    unknown = sorted(set(table) - known)
    if unknown:
        raise WorldConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")


def _host_name(value: object, where: str) -> str:
    """A plain DNS name (one a devbox can ask for): lower case, no trailing dot, IDN labels in
    punycode. As policy patterns, except that a label may hold "_" (``_dmarc.example.com``,
    ``_http._tcp.example.com``): the world serves such names, and a devbox may ask for them."""
    if not isinstance(value, str) or not value.strip(". "):
        raise WorldConfigError(f"{where}: {value!r} is not a name")
    if "*" in value:
        raise WorldConfigError(f"{where}: {value!r}: the world's names are plain names, not wildcards")
    labels = []
    for label in value.lower().rstrip(".").split("."):
        if not label.isascii():
            try:
                label = idna.encode(label, uts46=True, transitional=False).decode("ascii")
            except UnicodeError as exc:
                raise WorldConfigError(f"{where}: {value!r} is not a valid internationalised name ({exc})") from None
        if not _WORLD_LABEL.match(label):
            raise WorldConfigError(f"{where}: {value!r}: label {label[:20]!r} may only hold letters, digits, "
                                   "'_' and inner hyphens, at most 63 of them")
        labels.append(label)
    name = ".".join(labels)
    if len(name) > hostnames.MAX_NAME_LENGTH:
        raise WorldConfigError(f"{where}: {value!r} is longer than {hostnames.MAX_NAME_LENGTH} characters")
    return name


_WORLD_LABEL = re.compile(r"^(?=.{1,63}$)[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?$")


def _ports(values, where: str) -> tuple[int, ...]:
    if not isinstance(values, list):
        raise WorldConfigError(f"{where}: ports must be a list, e.g. [80]")
    ports = tuple(values)
    for port in ports:
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise WorldConfigError(f"{where}: {port!r} is not a port")
    return ports


# --- services ------------------------------------------------------------------------------


# Devboxes (untrusted) talk to these services, which run in the simulator's own process: each
# service handles at most this many connections (or UDP datagrams) at once and closes the
# rest at once, so holding connections open cannot grow the simulator's threads and file
# descriptors without bound; an idle connection is closed after IDLE_SECONDS.
MAX_CONCURRENT_PER_SERVICE = 64
MAX_CONCURRENT_PER_CLIENT = 16  # so one devbox cannot hold them all
IDLE_SECONDS = 30


class _EchoTCP(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(IDLE_SECONDS)
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass


class _EchoUDP(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(data, self.client_address)


def _http_handler(host_name: str):
    class Handler(BaseHTTPRequestHandler):
        server_version = "devbox-sim-world"
        timeout = IDLE_SECONDS  # a half-sent request does not hold its thread for ever

        def do_GET(self):  # noqa: N802 (http.server's naming)
            body = f"{host_name} {self.path}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


class _Bounded:
    """Mixed into a threading server: at most ``MAX_CONCURRENT_PER_SERVICE`` requests at once,
    ``MAX_CONCURRENT_PER_CLIENT`` of them from one address (the next is closed, or its
    datagram dropped), and a request that fails (a client gone mid-reply) is no traceback on
    the simulator's stderr."""

    daemon_threads = True

    def verify_request(self, request, client_address) -> bool:
        # Runs on the serving thread only; the counts are released on the request threads.
        if "_held" not in self.__dict__:
            self._held: dict[str, int] = {}
            self._held_lock = threading.Lock()
        client = client_address[0]
        with self._held_lock:
            held = self._held.get(client, 0)
            if held >= MAX_CONCURRENT_PER_CLIENT or sum(self._held.values()) >= MAX_CONCURRENT_PER_SERVICE:
                return False
            self._held[client] = held + 1
        return True

    def _release(self, client_address) -> None:
        with self._held_lock:
            left = self._held.get(client_address[0], 1) - 1
            if left > 0:
                self._held[client_address[0]] = left
            else:
                self._held.pop(client_address[0], None)

    def process_request(self, request, client_address) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started (the machine is out of them): free the slot
            self._release(client_address)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(client_address)

    def handle_error(self, request, client_address) -> None:
        log.debug("world service %s: request from %s failed", self.server_address, client_address, exc_info=True)


class _ThreadingTCP(_Bounded, socketserver.ThreadingTCPServer):
    allow_reuse_address = True


class _ThreadingUDP(_Bounded, socketserver.ThreadingUDPServer):
    pass


class _ThreadingHTTP(_Bounded, ThreadingHTTPServer):
    pass


@dataclass
class World:
    """A running offline world: namespace, addresses, services and DNS."""

    ns_name: str
    config: WorldConfig
    _net: links.World | None = None
    _servers: list[socketserver.BaseServer] = field(default_factory=list)
    _dns: DnsServer | None = None

    def start(self) -> None:
        self._net = links.World(self.ns_name)
        self._net.setup()
        try:
            for address in self.config.addresses():
                self._net.add_address(address)
            with namespaces.entered(self.ns_name):
                udp, tcp = bind_udp_tcp(self.config.resolver, 53)
            self._dns = DnsServer(self.config.zone().resolve, udp_sockets=[udp], tcp_sockets=[tcp], name="world-dns")
            self._dns.start()
            for host in self.config.hosts:
                for port in host.http:
                    self._serve(_ThreadingHTTP, (host.address, port), _http_handler(host.name))
                for port in host.tcp_echo:
                    self._serve(_ThreadingTCP, (host.address, port), _EchoTCP)
                for port in host.udp_echo:
                    self._serve(_ThreadingUDP, (host.address, port), _EchoUDP)
        except BaseException:
            self.stop()
            raise

    def _serve(self, server_class, address: tuple[str, int], handler) -> None:
        server = server_class(address, handler, bind_and_activate=False)
        server.socket.close()
        # The socket must be created inside the world namespace; binding happens there too.
        server.socket = namespaces.socket_in(self.ns_name, socket.AF_INET, server.socket_type)
        with namespaces.entered(self.ns_name):
            server.server_bind()
            server.server_activate()
        self._servers.append(server)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                         name=f"world-{address[0]}:{address[1]}").start()

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()
        if self._dns is not None:
            self._dns.stop()
            self._dns = None
        if self._net is not None:
            self._net.teardown()
            self._net = None
