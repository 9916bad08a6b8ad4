"""/v1/devboxes/{id}/execute*, /v1/devboxes/{id}/executions/...: commands in a devbox.

Holding endpoints (``execute``, ``execute_sync``, ``wait_for_status``) and the SSE streams are
``async`` and await a wake-up, so held requests take no worker thread.
"""

from __future__ import annotations

import asyncio
import weakref
from functools import partial

import anyio
import anyio.to_thread
from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import StreamingResponse

from simulator.api import deps
from simulator.api.devbox_schemas import (
    LONG_POLL_TIMEOUT,
    NO_RUNTIME,
    AsyncExecutionView,
    ExecuteAsyncParams,
    ExecuteParams,
    ExecutionKillParams,
    ExecutionWaitForStatusParams,
    SendStdInParams,
    SendStdInResult,
    SyncExecutionView,
)
from simulator.api.devboxes import runtime_ready
from simulator.api.schemas import ERROR_RESPONSES, NOT_FOUND
from simulator.api.sse import SSE_RESPONSES, event_stream
from simulator.devbox_model import Execution
from simulator.errors import Conflict, InvalidRequest

router = APIRouter(
    prefix="/v1/devboxes",
    tags=["executions"],
    responses={**ERROR_RESPONSES, **NO_RUNTIME, **NOT_FOUND},
    dependencies=[Depends(runtime_ready)],
)

LAST_N = Query(None, description="Only the last N lines of stdout and stderr (default: all of them)")


def _tail(text: str | None, last_n: int | None) -> tuple[str | None, bool]:
    """The last ``last_n`` lines of ``text``, and whether anything was cut."""
    if text is None or last_n is None:
        return text, False
    lines = text.splitlines(keepends=True)
    return "".join(lines[-last_n:]) if last_n else "", len(lines) > last_n


def _last_n(value: str | None) -> int | None:
    # The SDK types last_n as a string.
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise InvalidRequest(f"last_n must be a whole number, got {value!r}") from None
    if number < 0:
        raise InvalidRequest(f"last_n must not be negative, got {number}")
    return number


def view(execution: Execution, last_n: str | None = None) -> dict:
    lines = _last_n(last_n)
    stdout, stdout_cut = _tail(execution.stdout, lines)
    stderr, stderr_cut = _tail(execution.stderr, lines)
    return {
        "devbox_id": execution.devbox_id,
        "execution_id": execution.id,
        "status": execution.status,
        "exit_status": execution.exit_status,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_truncated": execution.stdout_truncated or stdout_cut,
        "stderr_truncated": execution.stderr_truncated or stderr_cut,
    }


@router.post("/{id}/execute_async", response_model=AsyncExecutionView, summary="Start a command")
def execute_async(
    id: str,
    params: ExecuteAsyncParams,
    account: str = Depends(deps.account),
    request_id: str | None = Depends(deps.request_id),
    services=Depends(deps.services),
):
    return view(services.executions.execute_async(account, id, params.command, request_id, bool(params.attach_stdin)))


@router.post(
    "/{id}/execute",
    response_model=AsyncExecutionView,
    summary="Start a command (idempotent by command_id) and hold up to optimistic_timeout for its end",
)
async def execute(
    id: str,
    params: ExecuteParams,
    last_n: str | None = LAST_N,
    account: str = Depends(deps.account),
    request_id: str | None = Depends(deps.request_id),
    services=Depends(deps.services),
):
    _last_n(last_n)  # a bad last_n is a 400 before the command runs
    execution = await services.executions.execute(
        account, id, params.command, params.command_id, params.optimistic_timeout, request_id
    )
    return view(execution, last_n)


@router.post(
    "/{id}/execute_sync",
    response_model=SyncExecutionView,
    responses=LONG_POLL_TIMEOUT,
    summary="Run a command to completion (deprecated by Runloop)",
)
async def execute_sync(
    id: str,
    params: ExecuteAsyncParams,
    account: str = Depends(deps.account),
    request_id: str | None = Depends(deps.request_id),
    services=Depends(deps.services),
):
    execution = await services.executions.execute_sync(account, id, params.command, request_id)
    return {
        "devbox_id": execution.devbox_id,
        "exit_status": execution.exit_status,
        "stdout": execution.stdout,
        "stderr": execution.stderr,
    }


@router.get("/{devbox_id}/executions/{execution_id}", response_model=AsyncExecutionView, summary="Get an execution")
def retrieve_execution(
    devbox_id: str,
    execution_id: str,
    last_n: str | None = LAST_N,
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    return view(services.executions.retrieve_execution(account, devbox_id, execution_id), last_n)


@router.post(
    "/{devbox_id}/executions/{execution_id}/wait_for_status",
    response_model=AsyncExecutionView,
    responses=LONG_POLL_TIMEOUT,
    summary="Hold until the execution has one of the statuses (408 when the hold runs out)",
)
async def wait_for_status(
    devbox_id: str,
    execution_id: str,
    params: ExecutionWaitForStatusParams,
    last_n: str | None = LAST_N,
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    _last_n(last_n)
    execution = await services.executions.wait_for_status(
        account, devbox_id, execution_id, params.statuses, params.timeout_seconds
    )
    return view(execution, last_n)


@router.post(
    "/{devbox_id}/executions/{execution_id}/kill",
    response_model=AsyncExecutionView,
    summary="Kill the command's process group",
)
def kill_execution(
    devbox_id: str,
    execution_id: str,
    params: ExecutionKillParams | None = Body(None),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    return view(services.executions.kill_execution(account, devbox_id, execution_id))


@router.post(
    "/{devbox_id}/executions/{execution_id}/send_std_in",
    response_model=SendStdInResult,
    summary="Write text to a command's stdin, close it (EOF) or interrupt the command (needs attach_stdin)",
)
async def send_std_in(
    devbox_id: str,
    execution_id: str,
    params: SendStdInParams,
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    action = partial(services.executions.send_std_in, account, devbox_id, execution_id, params.text, params.signal)
    if params.text is None:  # EOF or INTERRUPT: nothing to wait for
        success = await anyio.to_thread.run_sync(action)
    else:
        # A write may wait up to STDIN_WRITE_SECONDS for a command that does not read: on
        # threads of the account's own, so that such waits take neither the threads other
        # requests run on nor another account's; more than it has threads for are refused.
        writers = _stdin_writers(account)
        if writers.available_tokens < 1:
            raise Conflict(f"{STDIN_WRITERS} writes of this account are waiting for commands to read their stdin;"
                           " send after one of them ends", code="stdin_busy")
        success = await anyio.to_thread.run_sync(action, limiter=writers)
    return {"devbox_id": devbox_id, "execution_id": execution_id, "success": success}


STDIN_WRITERS = 8  # per account
_stdin_limiters: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> {account: limiter}


def _stdin_writers(account: str) -> anyio.CapacityLimiter:
    loop = asyncio.get_running_loop()  # a limiter belongs to one loop (tests run several)
    per_account = _stdin_limiters.setdefault(loop, {})
    limiter = per_account.get(account)
    if limiter is None:
        limiter = per_account[account] = anyio.CapacityLimiter(STDIN_WRITERS)
    return limiter


OFFSET = Query(
    None,
    description="Byte offset to start from (UTF-8 of the output text); each event's offset is the position after it",
)


def _offset(value: str | None) -> int:
    # The SDK types offset as a string.
    if value is None or value == "":
        return 0
    try:
        number = int(value)
    except ValueError:
        raise InvalidRequest(f"offset must be a whole number, got {value!r}") from None
    if number < 0:
        raise InvalidRequest(f"offset must not be negative, got {number}")
    return number


@router.get(
    "/{devbox_id}/executions/{execution_id}/stream_stdout_updates",
    response_class=StreamingResponse,
    responses=SSE_RESPONSES,
    summary="Stream the command's stdout (SSE) from offset until it completes",
)
async def stream_stdout_updates(
    devbox_id: str,
    execution_id: str,
    offset: str | None = OFFSET,
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    chunks = await services.executions.stream_stdout_updates(account, devbox_id, execution_id, _offset(offset))
    return event_stream(chunks)


@router.get(
    "/{devbox_id}/executions/{execution_id}/stream_stderr_updates",
    response_class=StreamingResponse,
    responses=SSE_RESPONSES,
    summary="Stream the command's stderr (SSE) from offset until it completes",
)
async def stream_stderr_updates(
    devbox_id: str,
    execution_id: str,
    offset: str | None = OFFSET,
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    chunks = await services.executions.stream_stderr_updates(account, devbox_id, execution_id, _offset(offset))
    return event_stream(chunks)
