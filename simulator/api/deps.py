"""Request-scoped dependencies: the caller's account and the service container."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="Any API key; each key is its own account unless --api-keys is set")


async def services(request: Request):
    return request.app.state.services


async def account(request: Request, _: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> str:
    return request.app.state.services.accounts.account_for(request.headers.get("authorization"))


async def request_id(request: Request) -> str | None:
    return request.headers.get("x-request-id") or None
