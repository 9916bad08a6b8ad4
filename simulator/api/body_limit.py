"""Cap the size of an API request body: 413 ``request_too_large`` past ``MAX_BODY_BYTES``.

Without a cap, one request could make the simulator hold any amount: JSON bodies are read
whole (text_check buffers them, then FastAPI parses them), and an upload is spooled to a
temporary file before the route sees its size. The largest legitimate body is a 64 MiB file
(``files.MAX_FILE_BYTES``) in ``write_file_contents``, whose JSON escaping may double it
(a newline is two characters, ``\\n``), or in ``upload_file``'s form: the cap leaves room for
both, and the routes' own checks (``file_too_large``) still answer anything between.

Two ways a body is over: its ``Content-Length`` says so (answered at once, nothing read), or
it is sent without one (chunked, or HTTP/2) and the bytes run past the cap while the route
reads them. Then the route is told the client left (so it stops, having changed nothing: a
body is parsed whole before any state changes), whatever it answers is dropped, and the 413
goes out instead. Tunnel traffic never comes here: it carries a devbox's bytes, not the API's.
"""

from __future__ import annotations

from simulator.api.errors import error_response
from simulator.files import MAX_FILE_BYTES

MAX_BODY_BYTES = 2 * MAX_FILE_BYTES + (1 << 20)


class BodyLimit:
    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            return await self._refuse(scope, receive, send)
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
                if received > self.limit:
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
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        response = error_response(
            413, "request_too_large",
            f"the request body is larger than the {self.limit} bytes a request may carry "
            f"(a file is at most {MAX_FILE_BYTES} bytes: see upload_file and write_file_contents)",
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
