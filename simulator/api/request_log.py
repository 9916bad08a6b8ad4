"""One log line per request: method, path, status, duration. Pure ASGI, so it adds ~nothing."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("devbox_sim.access")


class RequestLog:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if log.isEnabledFor(logging.INFO):
                query = scope.get("query_string") or b""
                path = scope["path"] + ("?" + query.decode("latin-1") if query else "")
                log.info("%s %s %d %.1fms", scope["method"], path, status, (time.perf_counter() - start) * 1000)
