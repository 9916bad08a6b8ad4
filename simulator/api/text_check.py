"""Reject JSON bodies holding lone UTF-16 surrogates ("\\ud800") with a 400, before any handler.

JSON allows such escapes and Python decodes them into ``str`` values that cannot be encoded
as UTF-8. Accepted, they made requests fail with a 500 AFTER state changed (a stored
blueprint whose build then broke, devbox metadata that made every later list of the
account fail). One check at the door keeps all of that out; valid surrogate pairs (emoji)
decode to ordinary characters and pass.

Cost: a regex over the raw body; only a body that contains a surrogate escape is parsed.
"""

from __future__ import annotations

import json
import re

from simulator.api.errors import error_response

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _has_lone_surrogate(value) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def lone_surrogates(body: bytes) -> bool:
    """True when ``body`` is JSON holding a string that is not valid Unicode text."""
    if not _SURROGATE_ESCAPE.search(body):
        return False
    try:
        return _has_lone_surrogate(json.loads(body))
    except ValueError:
        return False  # not JSON: the route's own validation answers


class RejectLoneSurrogates:
    """Pure ASGI: buffers JSON request bodies (FastAPI reads them whole anyway), checks them,
    then replays them to the app unchanged."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not _is_json(scope):
            return await self.app(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message], receive), send)  # e.g. a disconnect
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if lone_surrogates(body):
            response = error_response(
                400, "invalid_request", "the request holds a lone UTF-16 surrogate (\\ud800-\\udfff): not valid text"
            )
            return await response(scope, receive, send)
        await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)


def _is_json(scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return b"json" in value.lower()
    return False


def _replay(messages, receive):
    """``messages`` first, then the real ``receive`` (which reports an actual disconnect)."""
    pending = list(messages)

    async def replay():
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
