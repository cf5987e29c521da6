"""The incoming call a piece of code runs under: deadline, child calls to cancel, its topic.

grpcio propagates neither deadlines nor cancellation to calls a handler makes (grpc PRs
#17489, #18358 left core's parent-call propagation unexposed), so the server interceptor
records the deadline here and the client interceptor reads it; child calls register here and
are cancelled when the parent ends early.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from lazygrpc.broker import Topic
    from lazygrpc.session import Session


class Cancellable(Protocol):
    def cancel(self) -> Any: ...


#: Guards every scope's child calls and cancelled flag: a few set operations at a time, so
#: one lock for all costs less than one made per call.
_LOCK = threading.Lock()


def _not_loaded(args: Any) -> Session:
    raise RuntimeError("lazygrpc.session is not imported")


#: `lazygrpc.session.from_headers`, set when that module loads (it imports this one).
_from_headers: Callable[[Any], Session] = _not_loaded


class CallScope:
    """State of one incoming RPC, shared by every thread and task working for it."""

    __slots__ = (
        "_children",
        "_session",
        "_session_args",
        "cancelled",
        "deadline",
        "method",
        "service",
        "topic",
        "trace_headers",
        "trace_id",
    )

    def __init__(
        self, session: Session | None, service: str, method: str, time_remaining: float | None
    ) -> None:
        # None: made from `_session_args` (checked headers) when code first asks for it.
        self._session = session
        self._session_args: tuple[str | None, str | None, bool] | None = None
        self.service = service
        self.method = method
        # grpcio reports "no deadline" as None (aio) or a huge number (sync).
        self.deadline = (
            time.monotonic() + time_remaining
            if time_remaining is not None and time_remaining < 1e8
            else None
        )
        self.topic: Topic | None = None
        self.trace_id = ""
        #: The incoming W3C trace context, forwarded by calls made under this one when no
        #: OpenTelemetry span of this process takes its place.
        self.trace_headers: tuple[tuple[str, str], ...] = ()
        self.cancelled = False
        self._children: set[Cancellable] | None = None  # made by the first child call

    @property
    def session(self) -> Session:
        """The call's session: made from its headers when first asked for, so that a call
        whose code never touches the session (or not before its first token) makes none."""
        s = self._session
        if s is None:
            made = _from_headers(self._session_args)  # outside the lock every scope shares
            with _LOCK:
                s = self._session
                if s is None:  # else another thread made it first: one session per call
                    s = self._session = made
        return s

    def update_trailer(self) -> str:
        """The session's `lazy-globals-update` ("" when no session was made: nothing changed)."""
        s = self._session
        return "" if s is None else s.update_trailer()

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def add_child(self, call: Cancellable) -> bool:
        """Track a child call; False (and the call is cancelled) if this call already ended."""
        with _LOCK:
            if not self.cancelled:
                if self._children is None:
                    self._children = set()
                self._children.add(call)
                return True
        call.cancel()
        return False

    def discard_child(self, call: Cancellable) -> None:
        with _LOCK:
            if self._children is not None:
                self._children.discard(call)

    def cancel(self) -> None:
        """The parent call ended early: cancel every child call and close the topic."""
        with _LOCK:
            self.cancelled = True
            children, self._children = self._children, None
        for child in children or ():
            child.cancel()
        if self.topic is not None:
            self.topic.cancel()


_current: contextvars.ContextVar[CallScope | None] = contextvars.ContextVar(
    "lazygrpc_call", default=None
)


# The per-call path reads and sets the scope through these bound C methods (no Python frame
# per call).
#: The incoming call the running code works for, if any: `current_call()`.
current_call: Callable[[], CallScope | None] = _current.get
#: Make `scope` the current call in this context: `bind_call(scope)` returns a token.
bind_call: Callable[[CallScope | None], contextvars.Token[CallScope | None]] = _current.set
#: Undo a `bind_call`: `unbind_call(token)`.
unbind_call: Callable[[contextvars.Token[CallScope | None]], None] = _current.reset
