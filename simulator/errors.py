"""Domain errors: each carries an HTTP status, a stable error code and a human message.

Services raise these; ``simulator.api.errors`` turns them into
``{"message": ..., "error_code": ...}`` responses in one place.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")

class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class InvalidRequest(ApiError):
    status = 400
    code = "invalid_request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class RequestTimeout(ApiError):
    status = 408
    code = "timeout"


class Conflict(ApiError):
    status = 409
    code = "conflict"


def found(value: T | None, what: str, id: str) -> T:
    """``value``, or 404 ``not_found`` naming what was looked up (e.g. ``found(row, "devbox", id)``)."""
    if value is None:
        raise NotFound(f"{what} {id!r} not found")
    return value
