"""What a server logs about its calls: every failed call, and an access line per call.

Two loggers of the `lazygrpc` tree, configured by whoever runs the server (the CLI:
`lazygrpc.logs`); the library never configures logging itself.

    lazygrpc.server   every failed call: ERROR when the server failed (UNKNOWN, INTERNAL, ...),
                      WARNING when the caller did (INVALID_ARGUMENT, NOT_FOUND, ...); always
                      with the full traceback, whatever the server sends its peers
    lazygrpc.access   one DEBUG line per call that did not fail: status, duration

Each record carries `session`, `module`, `service`, `status`, `duration_ms`, `peer` and,
when the call belongs to a trace, `trace_id`, as one dict in its `FIELDS` attribute (`extra`;
one attribute, as `module` is a `LogRecord` attribute of its own), which the JSON format
writes as fields; the text format has them in the message. The server call lifecycle
(`lazygrpc.server.call`) is the only caller, so every server built on it logs the same way.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import grpc

from lazygrpc.core.context import CallScope
from lazygrpc.core.errors import SERVER_FAULT_CODES

SERVER_LOG = logging.getLogger("lazygrpc.server")
ACCESS_LOG = logging.getLogger("lazygrpc.access")

#: The record attribute that holds the fields of a record about a server or a call.
FIELDS = "lazygrpc"
#: The fields a call's records carry (the JSON format's fields, in this order).
CALL_FIELDS = ("session", "service", "module", "status", "duration_ms", "peer", "trace_id")


def access_enabled() -> bool:
    """Whether an access line would be written: the one check a successful call pays
    (`Logger.isEnabledFor` is a cached dict lookup), so a filtered-out line costs no more."""
    return ACCESS_LOG.isEnabledFor(logging.DEBUG)


def call_fields(scope: CallScope, context: Any, code: grpc.StatusCode) -> dict[str, Any]:
    """The attributes of a record about one call."""
    fields: dict[str, Any] = {
        "session": scope.session.id,
        "service": scope.service,
        "module": scope.method,
        "status": code.name,
        "duration_ms": round((time.monotonic() - scope.started) * 1000, 3),
        "peer": _peer(context),
    }
    trace_id = _trace_id(scope)
    if trace_id:
        fields["trace_id"] = trace_id
    return fields


def _describe(fields: dict[str, Any]) -> str:
    return " ".join(f"{key}={fields[key]}" for key in CALL_FIELDS if key in fields)


def failed(scope: CallScope, context: Any, status: grpc.Status, exc: BaseException | None) -> None:
    """Log one failed call, with `exc`'s traceback (None: the handler aborted by itself)."""
    code = status.code
    level = logging.ERROR if code in SERVER_FAULT_CODES else logging.WARNING
    if not SERVER_LOG.isEnabledFor(level):
        return
    fields = call_fields(scope, context, code)
    SERVER_LOG.log(
        level,
        "call failed: %s: %s",
        _describe(fields),
        status.details,
        exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None,
        extra={FIELDS: fields},
    )


def access(scope: CallScope, context: Any, code: grpc.StatusCode) -> None:
    """Log the access line of a call that did not fail (`access_enabled()` said so)."""
    fields = call_fields(scope, context, code)
    ACCESS_LOG.debug("call %s", _describe(fields), extra={FIELDS: fields})


def context_details(context: Any) -> str:
    """The status message a handler set on its context ("" when none)."""
    details = getattr(context, "details", None)
    value = details() if callable(details) else None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""


def _peer(context: Any) -> str:
    try:
        return str(context.peer())
    except Exception:  # a context that has no peer any more (the call is gone)
        return ""


def _trace_id(scope: CallScope) -> str:
    """The call's W3C trace id: the incoming one, else the span this server traces it in."""
    if scope.trace_id or "opentelemetry.trace" not in sys.modules:
        return scope.trace_id
    from opentelemetry import trace

    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else ""
