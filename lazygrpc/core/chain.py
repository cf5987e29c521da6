"""Exception chains ⇄ `google.rpc.Status` details, pure functions (docs/errors.md).

The failing service writes the first `CallFrame`; every service above it that lets the
`RemoteError` escape prepends its own, so a chain reads entry → failure point. Limits keep
the trailer inside gRPC's 8 KiB default metadata budget of any receiving client, whatever a
peer below sent: the hop that relays a chain clips every field of it (`TRAILER_BUDGET_BYTES`).
"""

from __future__ import annotations

import datetime
import os
import socket
import time
import traceback as tb
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from lazygrpc.core import redaction
from lazygrpc.core.errors import RemoteError, StatusError, status_code_of
from lazygrpc.v1 import chain_pb2

DETAILS_TRAILER = "grpc-status-details-bin"
DOMAIN = "lazygrpc"
MAX_TRACEBACK_BYTES = 2048
MAX_FRAMES = 32
MAX_MESSAGE_CHARS = 1024
#: Any other string of a frame or of the `ErrorInfo` (types, names, ids, metadata values).
MAX_FIELD_BYTES = 128
#: The status line message (`grpc-message`), percent-encoded as grpc sends it.
MAX_STATUS_MESSAGE_BYTES = 512
#: Serialized `google.rpc.Status` budget: 4 KiB once base64-encoded in the trailer.
STATUS_BUDGET_BYTES = 3072
#: Everything an error sends in trailers (`grpc-status-details-bin`, `grpc-message`,
#: `lazy-globals-update`), names and grpc's 32 bytes per entry included: well inside the
#: 8 KiB `grpc.max_metadata_size` default of any client.
TRAILER_BUDGET_BYTES = 6144

_HOST = socket.gethostname()


def clip(text: str, limit: int) -> str:
    """`text`, cut to at most `limit` UTF-8 bytes (a cut one ends in "…")."""
    if len(text) <= limit // 4:
        return text
    data = text.encode(errors="replace")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "…"


def _clip_tail(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return "…" + data[-(limit - 3) :].decode(errors="ignore")


def make_frame(
    exc: BaseException,
    *,
    service: str,
    method: str,
    session_id: str = "",
    trace_id: str = "",
    expose_traceback: bool = False,
) -> chain_pb2.CallFrame:
    """The frame a service writes for an exception escaping one of its handlers."""
    if isinstance(exc, RemoteError):
        error_type, message = exc.remote_type or exc.code.name, exc.message
    else:
        error_type, message = type(exc).__name__, str(exc)
    frame = chain_pb2.CallFrame(
        service=service,
        method=method,
        host=_HOST,
        pid=os.getpid(),
        error_type=clip(error_type, MAX_FIELD_BYTES),
        message=clip(message, MAX_MESSAGE_CHARS),
        session_id=session_id,
        trace_id=trace_id,
    )
    # A StatusError is a deliberate answer (NotFound, InvalidArgument…): no traceback.
    if expose_traceback and not isinstance(exc, RemoteError | StatusError):
        text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
        frame.traceback = _clip_tail(text, MAX_TRACEBACK_BYTES)
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(time.time_ns())
    frame.time.CopyFrom(ts)
    return frame


def failure_chain(exc: BaseException, **where: Any) -> chain_pb2.CallChain:
    """The chain a hop sends for an exception escaping its handler: its own frame
    (`make_frame(exc, **where)`), then the frames from below (a `RemoteError`'s, or a raw
    stub's failed call read as one)."""
    if isinstance(exc, grpc.RpcError):
        exc = remote_error_from_rpc(exc)
    frame = make_frame(exc, **where)
    if isinstance(exc, RemoteError):
        return extend_chain(frame, exc.chain, exc.elided_frames)
    return extend_chain(frame, [])


def extend_chain(
    frame: chain_pb2.CallFrame, below: Sequence[chain_pb2.CallFrame], elided: int = 0
) -> chain_pb2.CallChain:
    """Prepend `frame` to the chain below it, eliding middle frames past `MAX_FRAMES`."""
    frames = [frame, *(_clipped(f) for f in below)]
    if len(frames) > MAX_FRAMES:
        keep_head = MAX_FRAMES // 2
        keep_tail = MAX_FRAMES - keep_head
        elided += len(frames) - MAX_FRAMES
        frames = frames[:keep_head] + frames[-keep_tail:]
    return chain_pb2.CallChain(frames=frames, elided_frames=elided)


def _clipped(frame: chain_pb2.CallFrame) -> chain_pb2.CallFrame:
    """A peer's frame with every field within our limits (peers are not trusted)."""
    for name in ("service", "method", "host", "error_type", "session_id", "trace_id"):
        value = getattr(frame, name)
        if len(value) > MAX_FIELD_BYTES // 4:
            setattr(frame, name, clip(value, MAX_FIELD_BYTES))
    frame.message = clip(frame.message, MAX_MESSAGE_CHARS)
    if len(frame.traceback.encode()) > MAX_TRACEBACK_BYTES:
        frame.traceback = _clip_tail(frame.traceback, MAX_TRACEBACK_BYTES)
    return frame


def _fit(status: status_pb2.Status, chain: chain_pb2.CallChain, pack: Any) -> None:
    """Shrink tracebacks, then messages, until the status fits `STATUS_BUDGET_BYTES`."""
    while status.ByteSize() > STATUS_BUDGET_BYTES:
        longest = max(chain.frames, key=lambda f: len(f.traceback) + len(f.message))
        if longest.traceback:
            longest.traceback = _clip_tail(longest.traceback, len(longest.traceback) // 2)
            if len(longest.traceback) < 64:
                longest.traceback = ""
        elif len(longest.message) > 80:
            longest.message = longest.message[: len(longest.message) // 2] + "…"
        elif len(chain.frames) > 2:
            del chain.frames[1]
            chain.elided_frames += 1
        elif len(status.message) > 80:
            status.message = status.message[: len(status.message) // 2] + "…"
        elif len(chain.frames) > 1:  # a last resort: the failure point alone
            chain.elided_frames += len(chain.frames) - 1
            del chain.frames[:-1]
        else:
            return
        pack(chain)


def status_message(exc: BaseException) -> str:
    """The status line message an escaping exception gets."""
    if isinstance(exc, RemoteError):
        return exc.message[:MAX_MESSAGE_CHARS]
    if isinstance(exc, StatusError):
        return (str(exc) or exc.code.name)[:MAX_MESSAGE_CHARS]
    return f"{type(exc).__name__}: {exc}"[:MAX_MESSAGE_CHARS]


def _grpc_message(text: str) -> str:
    """`text` cut so that grpc's percent-encoding of it (`grpc-message`: bytes outside
    0x20-0x7E and "%" take three) fits `MAX_STATUS_MESSAGE_BYTES`."""
    size = 0
    for i, ch in enumerate(text):
        size += 1 if " " <= ch <= "~" and ch != "%" else 3 * len(ch.encode(errors="replace"))
        if size > MAX_STATUS_MESSAGE_BYTES - 9:  # room for the "…" (three bytes, encoded)
            return text[:i] + "…"
    return text


def to_grpc_status(
    exc: BaseException,
    chain: chain_pb2.CallChain,
    *,
    service: str,
    method: str,
    session_id: str,
    redact: redaction.Redact | None = None,
) -> grpc.Status:
    """Build the `grpc.Status` (code, message, details trailer) for an escaping exception.

    `redact` (a mode) is for a caller this server does not trust: `chain` is redacted in
    place, and an exception not meant to be shown answers a plain INTERNAL error."""
    code = status_code_of(exc)
    if code == grpc.StatusCode.OK:
        code = grpc.StatusCode.UNKNOWN
    message = status_message(exc)
    if redact is not None:
        redaction.redact_chain(chain, exc, redact)
        if code == grpc.StatusCode.UNKNOWN and not redaction.exposed(exc):
            code = grpc.StatusCode.INTERNAL
        message = redaction.status_line(exc, message, redact, code)
    reason = (exc.remote_type if isinstance(exc, RemoteError) else "") or type(exc).__name__
    metadata = {"session_id": session_id, "service": service, "method": method}
    info = error_details_pb2.ErrorInfo(
        reason=clip(reason, MAX_FIELD_BYTES),
        domain=DOMAIN,
        metadata={key: clip(value, MAX_FIELD_BYTES) for key, value in metadata.items()},
    )
    status = status_pb2.Status(code=code.value[0], message=_grpc_message(message))
    any_info = any_pb2.Any()
    any_info.Pack(info)
    any_chain = any_pb2.Any()
    any_chain.Pack(chain)
    status.details.extend([any_info, any_chain])
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:  # a refusal that says when to try again
        any_retry = status.details.add()
        delay = duration_pb2.Duration()
        delay.FromTimedelta(datetime.timedelta(seconds=retry_after))
        any_retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))

    def pack(c: chain_pb2.CallChain) -> None:
        status.details[1].Pack(c)

    _fit(status, chain, pack)
    return rpc_status.to_status(status)


def fits_trailer_budget(metadata: Iterable[tuple[str, str | bytes]]) -> bool:
    """Whether an error's trailers `metadata`, with the `grpc-status` and `grpc-message`
    grpc adds, stay within `TRAILER_BUDGET_BYTES` as a client counts them: each entry's
    name and value (a `-bin` value base64-encoded) plus 32 bytes (HPACK's entry overhead)."""
    total = len("grpc-status") + 2 + len("grpc-message") + MAX_STATUS_MESSAGE_BYTES + 64
    for key, value in metadata:
        size = len(value) * 4 // 3 + 4 if isinstance(value, bytes) else len(value.encode())
        total += len(key) + size + 32
    return total <= TRAILER_BUDGET_BYTES


def remote_error_from(
    code: grpc.StatusCode,
    details: str,
    trailing: Iterable[tuple[str, str | bytes]] | None,
    *,
    service: str = "",
    method: str = "",
) -> RemoteError:
    """Decode a failed call's status into a `RemoteError`.

    Without lazygrpc details (a bare grpcio peer) or with corrupt ones, the chain holds one
    frame built from the plain status; decoding never raises.
    """
    raw = next((v for k, v in trailing or () if k == DETAILS_TRAILER), None)
    if isinstance(raw, bytes):
        try:
            status = status_pb2.Status.FromString(raw)
            info = error_details_pb2.ErrorInfo()
            chain = chain_pb2.CallChain()
            found = False
            for detail in status.details:
                if detail.Is(chain_pb2.CallChain.DESCRIPTOR):
                    found = detail.Unpack(chain)
                elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    detail.Unpack(info)
            if found and chain.frames:
                last = chain.frames[-1]
                return RemoteError(
                    code,
                    last.message or details or status.message,
                    remote_type=info.reason or last.error_type,
                    chain=list(chain.frames),
                    elided_frames=chain.elided_frames,
                    session_id=info.metadata.get("session_id", last.session_id),
                )
        except Exception:
            pass
    frame = chain_pb2.CallFrame(
        service=service, method=method, error_type=code.name, message=details or ""
    )
    return RemoteError(code, details or code.name, remote_type=code.name, chain=[frame])


def remote_error_from_rpc(
    err: grpc.RpcError, *, service: str = "", method: str = ""
) -> RemoteError:
    """`RemoteError` for a raw `grpc.RpcError` (sync or aio), with the error as `__cause__`."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    trailing = err.trailing_metadata() if callable(getattr(err, "trailing_metadata", None)) else ()
    remote = remote_error_from(
        code or grpc.StatusCode.UNKNOWN, details or "", trailing, service=service, method=method
    )
    remote.__cause__ = err
    return remote


def split_method(full_method: str) -> tuple[str, str]:
    """`/lazygrpc.v1.ModelService/Generate` → (`lazygrpc.v1.ModelService`, `Generate`)."""
    _, _, rest = full_method.partition("/")
    service, _, method = rest.partition("/")
    return service, method
