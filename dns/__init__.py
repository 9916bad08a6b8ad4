"""DNS proxy for devboxes: answers only what a devbox's policy allows, and tells the firewall first.

(Named ``dns`` like dnspython's import name on purpose; dnspython must never be installed next
to it. Wire format comes from dnslib. Nothing here imports ``simulator`` or ``netns``.)

Data flow for one query::

    devbox ──UDP/TCP──▶ server.DnsServer            sockets, threads, framing, truncation (TC)
                           │ handler(client_ip, request)
                           ▼
                        resolver.Resolver            policy; never raises
                           │  clients(ip) ─▶ client.ClientView   (matcher, allow_all, ipv6,
                           │                                      local_answer)
                           │  patterns.HostnameMatcher.match(qname)   exact / *.suffix
                           │  cache.AnswerCache  ◀─▶  upstream.Upstream ──UDP(/TCP)──▶ zone.Zone
                           │                                                   (offline world)
                           │  on_answer(client_ip, qname, [(addr, ttl)])  ─▶ firewall (caller's)
                           │      called BEFORE the reply is returned; raising => SERVFAIL
                           │  on_query(event.QueryEvent)                 ─▶ decision log
                           ▼
    devbox ◀── reply ── server.DnsServer

Hot path: when DnsServer serves ``Resolver.resolve`` it calls ``Resolver.resolve_wire`` on the
thread that received the datagram. Plain queries are answered from wire bytes (``wire``):
cached answer sections are spliced behind the client's question with TTLs patched, upstream
answers are relayed as received (pooled upstream sockets). Anything unusual goes the dnslib
way above. Same policy, callbacks and order on both paths.

The DNS side only *reports* answered addresses; opening them in nftables is the caller's job.
"""

from .cache import AnswerCache
from .client import ClientView
from .event import QueryEvent
from .patterns import HostnameMatcher, normalise_name
from .resolver import Resolver
from .server import DnsServer, bind_tcp, bind_udp, bind_udp_tcp
from .upstream import Upstream, UpstreamError
from .zone import Zone

__all__ = [
    "AnswerCache",
    "ClientView",
    "DnsServer",
    "HostnameMatcher",
    "QueryEvent",
    "Resolver",
    "Upstream",
    "UpstreamError",
    "Zone",
    "bind_tcp",
    "bind_udp",
    "bind_udp_tcp",
    "normalise_name",
]
