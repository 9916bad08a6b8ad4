"""Cap the size of an API request body, per route: 413 ``request_too_large`` past it.

Without a cap, one request could make the simulator hold any amount: JSON bodies are read
whole (text_check buffers them, then FastAPI parses them, on the event loop: a 127 MiB policy
body held 2.3 GB and stalled every other request for seconds), and an upload is spooled to a
temporary file before the route sees its size. So most routes take little (``LIMITS.default``:
a policy at its caps is under 1 MiB), and only those that carry file contents take a file's
worth: a 64 MiB file (``files.MAX_FILE_BYTES``) as JSON text in ``write_file_contents`` or
in a create's ``file_mounts`` (JSON escaping makes a control character six bytes,
``\u001b``), or in ``upload_file``'s form. The routes' own checks (``file_too_large``)
answer anything between.

Two ways a body is over: its ``Content-Length`` says so (answered at once, nothing read), or
it is sent without one (chunked, or HTTP/2) and the bytes run past the cap while the route
reads them. Then the route is told the client left (so it stops, having changed nothing: a
body is parsed whole before any state changes), whatever it answers is dropped, and the 413
goes out instead. Tunnel traffic never comes here: it carries a devbox's bytes, not the API's.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from simulator.api.errors import error_response
from simulator.files import MAX_FILE_BYTES

MiB = 1 << 20


class Limits(NamedTuple):
    default: int  # every route but the two below
    file_json: int  # JSON bodies that carry file contents (or stdin)
    upload: int  # upload_file's multipart form


LIMITS = Limits(default=8 * MiB, file_json=6 * MAX_FILE_BYTES + MiB, upload=MAX_FILE_BYTES + MiB)

# POST routes whose JSON carries file contents or other data: write_file_contents, the creates
# with file_mounts, and a command's stdin.
_FILE_JSON = re.compile(r"^/v1/(?:devboxes/[^/]+/write_file_contents|devboxes(?:/create_and_await_running)?"
                        r"|devboxes/[^/]+/executions/[^/]+/send_std_in|blueprints(?:/preview)?)$")
_UPLOAD = re.compile(r"^/v1/devboxes/[^/]+/upload_file$")


def limit_for(limits: Limits, path: str) -> int:
    if _FILE_JSON.match(path):
        return limits.file_json
    if _UPLOAD.match(path):
        return limits.upload
    return limits.default


class BodyLimit:
    def __init__(self, app, limits: Limits = LIMITS):
        self.app = app
        self.limits = limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = limit_for(self.limits, scope["path"])
        declared = _content_length(scope)
        if declared is not None:
            # The server reads no more than a declared length (h11, httptools; h2_server
            # resets a stream whose body runs past it): only that number needs judging.
            if declared > limit:
                return await _refuse(limit, scope, receive, send)
            return await self.app(scope, receive, send)
        received = 0
        over = False
        answered = False  # the route began its own response before the body ran over

        async def counting_receive():
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal answered
            if over and not answered:
                return  # the route's answer to a body it never got whole: replaced below
            answered = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not over or answered:
                raise
        if over and not answered:
            await _refuse(limit, scope, receive, send)


async def _refuse(limit: int, scope, receive, send):
    response = error_response(
        413, "request_too_large",
        f"the request body is larger than the {limit} bytes {scope['method']} {scope['path']} may carry",
    )
    await response(scope, receive, send)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length itself
    return None
