"""``devbox-sim events DEVBOX [--follow]``: the decision log as a readable table.

Talks to a running simulator over HTTP (stdlib only): ``--base-url`` / ``RUNLOOP_BASE_URL``
and ``--api-key`` / ``RUNLOOP_API_KEY``, like the SDK. With ``--follow`` it keeps printing new
events until the devbox ends or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime

TERMINAL = {"shutdown", "failure"}
COLOURS = {"allowed": "\033[32m", "denied": "\033[31m", "error": "\033[33m"}
RESET = "\033[0m"
FOLLOW_INTERVAL_S = 0.5


class EventsError(Exception):
    pass


def add_arguments(parser) -> None:
    parser.add_argument("devbox", help="devbox id")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new events until the devbox ends")
    parser.add_argument("--verdict", choices=["allowed", "denied", "error"], help="only these")
    parser.add_argument("--base-url", default=os.environ.get("RUNLOOP_BASE_URL", "http://127.0.0.1:8484"),
                        help="the simulator's URL (RUNLOOP_BASE_URL; default http://127.0.0.1:8484)")
    parser.add_argument("--api-key", default=os.environ.get("RUNLOOP_API_KEY"),
                        help="the account's API key, as the SDK's (RUNLOOP_API_KEY)")
    parser.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                        help="colour verdicts: auto = when writing to a terminal (default auto)")


def run(args) -> int:
    if not args.api_key:
        print("devbox-sim events: set RUNLOOP_API_KEY or pass --api-key", file=sys.stderr)
        return 2
    colour = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    client = _Client(args.base_url, args.api_key)
    try:
        cursor = None
        client.get(f"/v1/devboxes/{args.devbox}")  # an unknown devbox or key: the error alone
        print(_header(), flush=True)
        while True:
            cursor = _print_new(client, args, cursor, colour)
            if not args.follow:
                return 0
            status = client.get(f"/v1/devboxes/{args.devbox}")["status"]
            if status in TERMINAL:
                _print_new(client, args, cursor, colour)  # whatever arrived meanwhile
                print(f"-- devbox {args.devbox} is {status}", flush=True)
                return 0
            time.sleep(FOLLOW_INTERVAL_S)  # polling the API for new events
    except EventsError as exc:
        print(f"devbox-sim events: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader left (`... | head`): end as a killed-by-SIGPIPE tool would, without a
        # traceback, and with stdout pointed at /dev/null so the exit's flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _print_new(client, args, cursor, colour) -> int | None:
    while True:
        params = {"limit": 1000, **({"starting_after": cursor} if cursor is not None else {}),
                  **({"verdict": args.verdict} if args.verdict else {})}
        page = client.get(f"/v1/devboxes/{args.devbox}/network_events", params)
        for event in page["network_events"]:
            print(_row(event, colour), flush=True)
            cursor = event["seq"]
        if not page["has_more"]:
            return cursor


def _header() -> str:
    return f"{'TIME':12}  {'VERDICT':8}  {'REASON':20}  {'TYPE':5}  {'NAME':40}  DETAIL"


def _row(event: dict, colour: bool) -> str:
    when = datetime.fromtimestamp(event["time_ms"] / 1000).strftime("%H:%M:%S.%f")[:12]
    verdict = f"{event['verdict']:8}"
    if colour:
        verdict = COLOURS.get(event["verdict"], "") + verdict + RESET
    detail = ", ".join(event["addresses"])
    if event["kind"] == "blocked":
        detail = f"{event['protocol']} {event['addresses'][0]}" + (f":{event['port']}" if event.get("port") else "")
    if event.get("matched_pattern"):
        detail = f"{detail} (by {event['matched_pattern']})".strip()
    if event["kind"] == "dns" and event.get("verdict") == "allowed" and not event["addresses"] and event.get("rcode"):
        detail = f"{event['rcode']} {detail}".strip()  # e.g. NXDOMAIN from the upstream
    if event.get("error"):
        detail = event["error"]
    kind = event["qtype"] if event["kind"] == "dns" else "CONN"
    return f"{when:12}  {verdict}  {event['reason']:20}  {kind:5}  {event['name'] or '-':40}  {detail}"


class _Client:
    def __init__(self, base_url: str, api_key: str):
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"}

    def get(self, path: str, params: dict | None = None) -> dict:
        url = self.base_url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        request = urllib.request.Request(url, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            try:
                message = json.load(exc).get("message", "")
            except ValueError:
                message = ""
            raise EventsError(f"{exc.code} {message or exc.reason}") from None
        except urllib.error.URLError as exc:
            raise EventsError(f"cannot reach {self.base_url}: {exc.reason}") from None
