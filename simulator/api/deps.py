"""Request-scoped dependencies: the caller's account and the service container."""

from __future__ import annotations

import hashlib

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="Any API key; each key is its own account unless --api-keys is set")


async def services(request: Request):
    return request.app.state.services


async def account(request: Request, _: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> str:
    return request.app.state.services.accounts.account_for(request.headers.get("authorization"))


async def request_id(request: Request) -> str | None:
    """The key that makes a retried create return what the first attempt made: the client's
    ``x-request-id`` (the SDK keeps it across retries) with a digest of what was asked. A
    client that sends one id with every request (for tracing, say) still gets each different
    request carried out; only the same request again is a retry."""
    header = request.headers.get("x-request-id")
    if not header:
        return None
    # create_and_await_running is a create at /v1/devboxes: a retry may come by either.
    path = request.url.path.removesuffix("/create_and_await_running")
    digest = hashlib.sha256(b"%s %s\n%s" % (request.method.encode(), path.encode(), await request.body()))
    return f"{header}#{digest.hexdigest()[:32]}"
