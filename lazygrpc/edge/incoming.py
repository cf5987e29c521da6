"""A request's body and headers, checked: JSON within the size limit, the session headers,
the deadline, a module call's input and kwargs. Each refusal names what is wrong."""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request

from lazygrpc.core import baggage
from lazygrpc.core.context import CallScope
from lazygrpc.core.session import check_arrival
from lazygrpc.edge.errors import HTTPProblem

MAX_TIMEOUT = 24 * 3600.0
SESSION_HEADERS = (baggage.SESSION_HEADER, "x-session-id")
TIMEOUT_HEADER = "x-request-timeout"
#: A body past the limit is read to its end (not kept) up to this many times the limit,
#: so that a client still sending it reads the 413 instead of a reset connection.
DRAIN_FACTOR = 16


def _too_large(limit: int, size: str) -> HTTPProblem:
    return HTTPProblem(
        413,
        f"request body of {size[:20]} bytes is over the edge's limit of {limit} bytes",
        code="request_too_large",
    )


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON: 413 past `limit` bytes, 400 for bytes that are not UTF-8 or text
    that is not JSON. Never holds more than `limit` bytes of it."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit * DRAIN_FACTOR):
        raise _too_large(limit, declared)
    size = 0
    parts: list[bytes] = []
    async for part in request.stream():
        size += len(part)
        if size <= limit:
            parts.append(part)
        elif size > limit * DRAIN_FACTOR:
            break
    if size > limit:
        raise _too_large(limit, str(size))
    raw = b"".join(parts)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPProblem(
            400,
            f"request body is not UTF-8: byte {exc.start} is {raw[exc.start]:#04x}",
            code="invalid_encoding",
        ) from None
    try:
        return baggage.decode_json(text)
    except (ValueError, RecursionError) as exc:
        raise HTTPProblem(
            400, f"request body is not valid JSON: {exc}", code="invalid_json"
        ) from None


def call_scope(request: Request, service: str, default_timeout: float) -> CallScope:
    """The request's call scope: its checked session headers (the session is made from
    them when first asked for, as on any server) and its deadline."""
    sid = next((v for h in SESSION_HEADERS if (v := request.headers.get(h))), None)
    header = request.headers.get(baggage.BAGGAGE_HEADER)
    try:
        flat = check_arrival(sid, header)
    except ValueError as exc:
        message = str(exc)
        param = baggage.SESSION_HEADER if message.startswith(baggage.SESSION_HEADER) else "baggage"
        raise HTTPProblem(400, message, param=param) from None
    raw = request.headers.get(TIMEOUT_HEADER)
    timeout = default_timeout
    if raw is not None:
        try:
            timeout = float(raw)
        except ValueError:
            timeout = math.nan
        if not 0 < timeout <= MAX_TIMEOUT:
            raise HTTPProblem(
                400,
                f"{TIMEOUT_HEADER}: {raw[:40]!r} is not a number of seconds in (0, 86400]",
                param=TIMEOUT_HEADER,
            )
    return CallScope(None, service, request.url.path, timeout, sid, header, flat)


def module_body(body: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A module call's (args, kwargs) from `CallRequest`'s JSON form without the module."""
    if not isinstance(body, dict):
        raise HTTPProblem(400, 'request body must be a JSON object: {"input": …, "kwargs": {…}}')
    unknown = sorted(set(body) - {"input", "kwargs"})
    if unknown:
        raise HTTPProblem(
            400,
            f"unknown field {unknown[0]!r} (a module call takes input and kwargs)",
            param=unknown[0],
        )
    kwargs = body.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise HTTPProblem(400, "kwargs: expected a JSON object", param="kwargs")
    return ((body["input"],) if "input" in body else ()), kwargs
