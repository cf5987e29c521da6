"""The lazygrpc exception hierarchy.

    LazyGrpcError
     ├── StatusError             raise one in a handler to answer with its status code
     │    ├── InvalidArgument    INVALID_ARGUMENT
     │    ├── NotFound           NOT_FOUND
     │    ├── AlreadyExists      ALREADY_EXISTS
     │    ├── PermissionDenied   PERMISSION_DENIED
     │    ├── Unauthenticated    UNAUTHENTICATED
     │    ├── ResourceExhausted  RESOURCE_EXHAUSTED
     │    ├── FailedPrecondition FAILED_PRECONDITION
     │    ├── Aborted            ABORTED
     │    ├── Unimplemented      UNIMPLEMENTED
     │    ├── Internal           INTERNAL
     │    ├── Unavailable        UNAVAILABLE
     │    └── DeadlineExceeded   DEADLINE_EXCEEDED
     ├── RemoteError             a service you called failed: code, remote type, call chain
     └── StreamClosed            the stream you emit into is gone (client cancelled or left)

"You called it wrong" stays a plain `ValueError` / `TypeError` whose message names the
offending key or value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import grpc

if TYPE_CHECKING:
    from lazygrpc.v1 import chain_pb2


class LazyGrpcError(Exception):
    """Base of every lazygrpc error."""


class StatusError(LazyGrpcError):
    """An error that maps to one gRPC status code when it escapes a handler."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN


class InvalidArgument(StatusError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(StatusError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(StatusError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(StatusError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(StatusError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(StatusError):
    """Too much of something; `retry_after` (seconds) goes to the caller as a
    `google.rpc.RetryInfo` detail: when to try again."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FailedPrecondition(StatusError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(StatusError):
    code = grpc.StatusCode.ABORTED


class Unimplemented(StatusError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(StatusError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(StatusError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(StatusError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class StreamClosed(LazyGrpcError):
    """Raised in a producer when the stream it emits into has closed."""


class RemoteError(LazyGrpcError):
    """A called service failed. `__cause__` is the raw `grpc.RpcError`.

    `chain` lists the services on the path, entry first, failure point last.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        remote_type: str = "",
        chain: list[chain_pb2.CallFrame] | None = None,
        elided_frames: int = 0,
        session_id: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.remote_type = remote_type
        self.chain = list(chain or [])
        self.elided_frames = elided_frames
        self.session_id = session_id

    @property
    def path(self) -> str:
        """`gateway.Run → retriever.search → model.Generate`, or "" without a chain."""
        hops = [f"{f.service}.{f.method}" if f.method else f.service for f in self.chain]
        if self.elided_frames and len(hops) > 1:
            hops.insert(1, f"… {self.elided_frames} more …")
        return " → ".join(hops)

    def __str__(self) -> str:
        kind = self.remote_type or self.code.name
        head = f"{self.path}: " if self.chain else ""
        return f"{head}{kind}: {self.message}"

    def report(self) -> str:
        """The error, its status and session, and every frame of its chain (tracebacks
        included where the services sent them), as lines for a terminal or a log."""
        lines = [f"error: {self}", f"status: {self.code.name}   session: {self.session_id or '-'}"]
        for i, frame in enumerate(self.chain):
            where = f"{frame.host}:{frame.pid}" if frame.host else "?"
            lines.append(
                f"  {i + 1}. {frame.service}.{frame.method} ({where}) "
                f"{frame.error_type}: {frame.message}"
            )
            lines.extend(f"       | {line}" for line in frame.traceback.rstrip().splitlines())
        if self.elided_frames:
            lines.append(f"  ({self.elided_frames} middle frames elided)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"RemoteError(code={self.code.name}, remote_type={self.remote_type!r}, "
            f"message={self.message!r}, frames={len(self.chain)})"
        )


#: Codes that say the server failed, not the caller (OpenTelemetry's semantic conventions for
#: gRPC servers): the others (NOT_FOUND, INVALID_ARGUMENT, ...) are the caller's mistake.
SERVER_FAULT_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def status_code_of(exc: BaseException) -> grpc.StatusCode:
    """The status an exception escaping a handler turns into."""
    if isinstance(exc, RemoteError | StatusError):
        return exc.code
    if isinstance(exc, StreamClosed):
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    return grpc.StatusCode.UNKNOWN
