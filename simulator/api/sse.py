"""Server-sent events for the output streams: ``data: {"output", "offset"}`` per chunk.

A chunk of None (nothing new for a while) becomes a comment line, which SSE clients ignore
but which resets their read timeout.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from simulator.api.devbox_schemas import ExecutionUpdateChunk

SSE_RESPONSES = {
    200: {
        "description": "Server-sent events: `data: {\"output\", \"offset\"}` per chunk, until the command completed",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def event_stream(chunks: AsyncIterator[tuple[str, int] | None]) -> StreamingResponse:
    async def events():
        async for item in chunks:
            if item is None:
                yield ": keep-alive\n\n"  # a comment: resets the client's read timeout
            else:
                text, offset = item
                data = ExecutionUpdateChunk(output=text, offset=offset).model_dump()
                yield f"data: {json.dumps(data)}\n\n"

    # no-cache / no buffering: each event must reach the client when it happens
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
