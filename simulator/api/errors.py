"""Translate every error to ``{"message": ..., "error_code": ...}`` exactly once.

Deliberate errors carry ``x-should-retry: false``: the SDK otherwise retries 408/409/429/5xx
with exponential back-off (about 30 s in all) before giving up.
"""

from __future__ import annotations

import errno
import logging
import sqlite3

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from simulator.errors import ApiError

log = logging.getLogger("devbox_sim.api")

_HTTP_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}


def error_response(status: int, code: str, message: str, retry: bool = False) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"message": message, "error_code": code},
        headers={"x-should-retry": "true" if retry else "false"},
    )


def _field_path(loc) -> str:
    """pydantic's ("body", "allowed_cidrs", 0, "cidr") as our own validators write it:
    "allowed_cidrs[0].cidr" (the leading source dropped; a field may be called "path")."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts.pop(0)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = _field_path(error.get("loc", ()))
        if error.get("type") == "json_invalid":
            parts.append("the request body is not valid JSON")
        elif error.get("type") == "missing" and tuple(error.get("loc", ())) == ("body",):
            parts.append("a JSON request body is required")
        elif tuple(error.get("loc", ())) == ("body",) and error.get("type") in ("model_attributes_type", "dict_type"):
            # e.g. a form or text body (curl -d without a JSON Content-Type)
            parts.append("the request body must be a JSON object, sent as Content-Type: application/json")
        elif error.get("type") == "missing" and where:
            parts.append(f"{where} is required")
        elif error.get("type") == "extra_forbidden" and where:
            parts.append(f"{where} is not a field of this object (misspelt?)")
        elif where:
            parts.append(f"{where}: {_message(error)}")
        else:
            parts.append(_message(error))
    return "; ".join(parts) or "invalid request"


def _message(error: dict) -> str:
    """pydantic's message without the "Value error, " it puts before a validator's own text."""
    message = str(error.get("msg"))
    if error.get("type") == "value_error" and message.startswith("Value error, "):
        return message[len("Value error, "):]
    return message


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, retry=exc.status == 408)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error_response(400, "invalid_request", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 400 and message == "There was an error parsing the body":
            message = "the request body could not be read as JSON (not UTF-8, or nested or numbers too deep)"
        return error_response(exc.status_code, code, message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        storage = _storage_problem(exc)
        if storage is not None:
            log.error("%s %s: %s", request.method, request.url.path, storage)
            # 507 with retry: space may be freed; nothing was stored (the transaction rolled back).
            return error_response(507, "insufficient_storage", storage, retry=True)
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"internal error: {type(exc).__name__}")


def _storage_problem(exc: BaseException) -> str | None:
    """What to tell the client when the store could not be written (the data dir's file
    system is full or read-only), else None."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        if "disk is full" in text or "readonly database" in text or "disk I/O error" in text:
            return f"the simulator cannot write its store ({text}); free space in its data dir's file system"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return f"the simulator cannot write its data dir ({exc.strerror}); free space in its file system"
    return None
