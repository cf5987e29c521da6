"""gRPC status → HTTP status, and OpenAI's error JSON with the call chain. Pure functions.

Every error the edge answers with has OpenAI's shape (`{"error": {"message", "type",
"param", "code"}}`), so OpenAI SDKs raise their usual exceptions; lazygrpc adds `status`
(the gRPC code), `session_id` and `chain`: one object per hop, entry first, failure point
last (docs/edge.md).
"""

from __future__ import annotations

from typing import Any

import grpc

from lazygrpc.core import chain
from lazygrpc.core.errors import RemoteError
from lazygrpc.v1 import chain_pb2

#: gRPC code → HTTP status; any other code is 500.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 499,  # the client went away (nginx's code): rarely seen
}

#: HTTP status → OpenAI's error `type`.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout",
}

#: Seconds a client told 429 (RESOURCE_EXHAUSTED, or the edge's stream limit) should wait.
RETRY_AFTER_SECONDS = 1


class HTTPProblem(Exception):
    """A request the edge refuses itself (bad JSON, a bad param, too large, too many): the
    HTTP status and OpenAI's `param` and `code` for the body."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status a failed call answers with."""
    return HTTP_STATUS.get(code, 500)


def headers_for(status: int) -> dict[str, str]:
    """Headers an error response carries: `Retry-After` on 429."""
    return {"retry-after": str(RETRY_AFTER_SECONDS)} if status == 429 else {}


def problem_body(problem: HTTPProblem) -> dict[str, Any]:
    """OpenAI's error JSON for a request the edge refused itself."""
    return {
        "error": {
            "message": problem.message,
            "type": _TYPES.get(problem.status, "server_error"),
            "param": problem.param,
            "code": problem.code,
        }
    }


def remote_body(
    err: RemoteError, *, edge: str, route: str, session_id: str, expose_tracebacks: bool
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, OpenAI's error JSON with the chain) for a failed upstream call.

    The edge's own frame goes in front of the chain from below (`chain.failure_chain`), as
    any hop's does; tracebacks stay in only with `expose_tracebacks` and only where the
    services below sent them."""
    status = http_status(err.code)
    calls = chain.failure_chain(err, service=edge, method=route, session_id=session_id)
    message = chain.status_message(err)
    return status, {
        "error": {
            "message": f"{err.path}: {message}" if err.chain else message,
            "type": _TYPES.get(status, "server_error"),
            "param": None,
            "code": err.remote_type or err.code.name,
            "status": err.code.name,
            "session_id": err.session_id or session_id,
            "chain": [frame_json(f, expose_tracebacks) for f in calls.frames],
            "elided_frames": calls.elided_frames,
        }
    }


def frame_json(frame: chain_pb2.CallFrame, expose_traceback: bool) -> dict[str, Any]:
    """One hop of a chain as JSON: where, what, and the traceback when allowed and sent."""
    out: dict[str, Any] = {
        "service": frame.service,
        "method": frame.method,
        "error_type": frame.error_type,
        "message": frame.message,
    }
    if frame.host:
        out["host"] = frame.host
    if expose_traceback and frame.traceback:
        out["traceback"] = frame.traceback
    return out


def internal_body() -> dict[str, Any]:
    """What an edge bug answers with: nothing of it leaves but the fact (the log has it)."""
    return problem_body(HTTPProblem(500, "internal error in the lazygrpc edge (see its log)"))
