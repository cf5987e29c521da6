"""Server-sent events: the frame encoding, and the response that streams frames as produced.

`EventStream` is an ASGI response that pulls one frame at a time and writes it before it
pulls the next: a slow reader makes `send` wait (uvicorn's flow control), the edge stops
reading its gRPC stream, and the gRPC window stops the producers below (docs/streaming.md).
Nothing is queued in between. A second task waits for the client to leave; when it does,
the pulling task is cancelled, which cancels the gRPC call and so every hop below it
(`until_left`, which a JSON answer's call runs under too).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

#: The headers every event stream has (no proxy buffering, no caching).
SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}
DONE = b"data: [DONE]\n\n"
T = TypeVar("T")


def dumps(value: Any) -> str:
    """Compact JSON on one line (JSON escapes every newline, so one `data:` line holds it)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def frame(data: Any, event: str | None = None) -> bytes:
    """One SSE message: `event: NAME` when named, then `data: JSON`."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {dumps(data)}\n\n".encode()


@dataclass(frozen=True)
class Failure:
    """How a stream that failed ends: a JSON response while nothing was sent yet, else a
    last `event: error` frame."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]

    def as_frame(self) -> bytes:
        return frame(self.body, "error")


#: One frame, and whether it commits the response (a token: headers go out now).
Frame = tuple[bytes, bool]


class EventStream(Response):
    """Streams `frames` as SSE, holding the first ones back until one commits the response
    (or `hold` are held): an error before the first token still gets its HTTP status.

    `fail(exc)` says how an exception from `frames` ends the response; `closed()` runs
    once the response is over, however it ended. `frames` runs in `context` (the request's
    call scope is bound there)."""

    def __init__(
        self,
        frames: AsyncGenerator[Frame, None],
        *,
        context: contextvars.Context,
        fail: Callable[[BaseException], Failure],
        closed: Callable[[], None],
        headers: dict[str, str] | None = None,
        hold: int = 32,
    ) -> None:
        # As StreamingResponse does: no `body`, so no Content-Length header.
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, **(headers or {})})
        self.frames = frames
        self.context = context
        self.fail = fail
        self.closed = closed
        self.hold = hold

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await until_left(self._pump(send), receive, self.context)
        except ClientLeft:
            pass  # the pump was cancelled, and with it the gRPC call
        finally:
            self.closed()

    async def _start(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})

    async def _pump(self, send: Send) -> None:
        held: list[bytes] = []
        started = False
        try:
            async for data, commit in self.frames:
                if started:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                    continue
                held.append(data)
                if commit or len(held) >= self.hold:
                    await self._start(send)
                    started = True
                    body = b"".join(held)
                    held.clear()
                    await send({"type": "http.response.body", "body": body, "more_body": True})
        except Exception as exc:
            failure = self.fail(exc)
            if not started:
                response = _json_response(failure)
                await response({"type": "http"}, _never, send)
                return
            held.append(failure.as_frame())
        finally:
            await self.frames.aclose()  # here, in its own context, however it ended
        if not started:
            await self._start(send)
        await send({"type": "http.response.body", "body": b"".join(held), "more_body": False})


def _json_response(failure: Failure) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse(failure.body, failure.status, headers=failure.headers)


async def _never() -> Any:
    raise RuntimeError("a response does not receive")


class ClientLeft(Exception):
    """The HTTP client disconnected before its answer was complete."""


async def until_left(
    work: Coroutine[Any, Any, T], receive: Receive, context: contextvars.Context | None = None
) -> T:
    """`await work` (as a task, in `context`: by default the current one), unless the
    client leaves first: then `work` is cancelled (its gRPC calls with it) and `ClientLeft`
    is raised. The request body must have been read already."""
    task = asyncio.create_task(work, context=context)
    watch = asyncio.ensure_future(_client_left(receive))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()  # a no-op once it finished
        watch.cancel()
        await asyncio.gather(task, watch, return_exceptions=True)
    if task.cancelled():
        raise ClientLeft
    return task.result()


async def _client_left(receive: Receive) -> None:
    """Returns when the client disconnects (the request body was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
