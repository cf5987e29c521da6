"""What the running code works for: the incoming call's scope and the current session.

Resolution order for the session: an explicit `session()` scope, else the session of the
incoming call the code runs under, else a per-thread default session in plain sync code.

grpcio propagates neither deadlines nor cancellation to calls a handler makes (grpc PRs
#17489, #18358 left core's parent-call propagation unexposed), so the server lifecycle
records the deadline in the call's `CallScope` and the client lifecycle reads it; child
calls register there and are cancelled when the parent ends early.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from concurrent import futures
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

from lazygrpc.core.session import Session
from lazygrpc.core.trust import GlobalsPolicy

if TYPE_CHECKING:
    from lazygrpc.broker.topic import Topic

P = ParamSpec("P")
T = TypeVar("T")


class Cancellable(Protocol):
    def cancel(self) -> Any: ...


#: Guards every scope's child calls and cancelled flag: a few set operations at a time, so
#: one lock for all scopes rather than one made per call.
_LOCK = threading.Lock()


class CallScope:
    """State of one incoming RPC, shared by every thread and task working for it."""

    __slots__ = (
        "_children",
        "_flat",
        "_header",
        "_session",
        "_sid",
        "cancelled",
        "deadline",
        "method",
        "policy",
        "service",
        "started",
        "topic",
        "trace_headers",
        "trace_id",
    )

    def __init__(
        self,
        session: Session | None,
        service: str,
        method: str,
        time_remaining: float | None,
        sid: str | None = None,
        header: str | None = None,
        flat: bool = True,
        policy: GlobalsPolicy | None = None,
    ) -> None:
        """A scope with `session`, or (None) with the session that its session id and
        `baggage` header, as `check_arrival` checked them, make when code first asks for it:
        a call whose code never touches its session makes none."""
        self._session = session
        self._sid = sid
        self._header = header
        self._flat = flat
        #: Which globals the calls made under this one may change (None: all).
        self.policy = policy
        self.service = service
        self.method = method
        #: When the call arrived (`time.monotonic()`): the server logs its duration.
        self.started = now = time.monotonic()
        # grpcio reports "no deadline" as None (aio) or a huge number (sync).
        self.deadline = (
            now + time_remaining if time_remaining is not None and time_remaining < 1e8 else None
        )
        #: The call's stream topic, when it streams through the broker.
        self.topic: Topic | None = None
        self.trace_id = ""
        #: The incoming W3C trace context, forwarded by calls made under this one when no
        #: OpenTelemetry span of this process takes its place.
        self.trace_headers: tuple[tuple[str, str], ...] = ()
        self.cancelled = False
        self._children: set[Cancellable] | None = None  # made by the first child call

    @property
    def session(self) -> Session:
        """The call's session (one per call, whichever thread asks first)."""
        s = self._session
        if s is None:
            made = Session.arrived(self._sid, self._header, self._flat)
            with _LOCK:
                if self._session is None:
                    self._session = made
                s = self._session
        return s

    def update_trailer(self) -> str:
        """The session's `lazy-globals-update` ("" when no session was made: none changed)."""
        return "" if self._session is None else self._session.update_trailer()

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


_call: contextvars.ContextVar[CallScope | None] = contextvars.ContextVar(
    "lazygrpc_call", default=None
)
_session: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "lazygrpc_session", default=None
)
_thread_default = threading.local()


#: `current_call()`: the incoming call the running code works for, if any. It is the context
#: variable's own `get`, asked on every call a handler makes and every stream it opens.
current_call: Callable[[], CallScope | None] = _call.get


def bind_call(scope: CallScope) -> contextvars.Token[CallScope | None]:
    """Make `scope` the current call of this context (a server call's own context: the
    call's task in aio, a copied context on a sync server); `unbind_call(token)` undoes it.

    A session bound around the server (one started inside `with session()`) must not stand
    in for the call's own, so it is unbound here for the rest of the context."""
    if _session.get() is not None:
        _session.set(None)
    return _call.set(scope)


def unbind_call(token: contextvars.Token[CallScope | None]) -> None:
    _call.reset(token)


def bound_session() -> Session | None:
    """The session of an explicit `session()` scope around the running code, if any."""
    return _session.get()


def current() -> Session:
    """The session code runs under now (explicit scope > incoming call > thread default)."""
    s = _session.get()
    if s is not None:
        return s
    scope = _call.get()
    if scope is not None:
        return scope.session
    s = getattr(_thread_default, "session", None)
    if s is None:
        s = _thread_default.session = Session()
    return s


@contextmanager
def session(id: str | None = None, **initial: Any) -> Iterator[Session]:
    """Run a block under a session: a given id (validated) or a fresh one.

    >>> with session("demo-1", user="ada") as s:
    ...     session_id(), globals["user"]
    ('demo-1', 'ada')
    """
    s = Session(id)
    for key, value in initial.items():
        s.set(key, value)
    token = _session.set(s)
    try:
        yield s
    finally:
        _session.reset(token)


def session_id() -> str:
    """The current session's id."""
    return current().id


class Globals(MutableMapping[str, Any]):
    """The current session's globals as a mapping; values must be JSON-serialisable."""

    def __getitem__(self, key: str) -> Any:
        return current().item(key)

    def __setitem__(self, key: str, value: Any) -> None:
        current().set(key, value)

    def __delitem__(self, key: str) -> None:
        current().delete(key)

    def __iter__(self) -> Iterator[str]:
        return iter(current().keys())

    def __len__(self) -> int:
        return len(current().keys())

    def __contains__(self, key: object) -> bool:
        return current().has(key)

    def __repr__(self) -> str:
        return f"lazygrpc.globals({current().values()!r})"


globals = Globals()


class ThreadPoolExecutor(futures.ThreadPoolExecutor):
    """A thread pool whose tasks run in the submitter's context: session and call follow."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> futures.Future[T]:
        ctx = contextvars.copy_context()
        return super().submit(ctx.run, fn, *args, **kwargs)  # type: ignore[arg-type]


def in_context(fn: Callable[P, T]) -> Callable[P, T]:
    """Wrap `fn` so that it runs in the current context from any thread."""
    ctx = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return ctx.copy().run(fn, *args, **kwargs)

    return run
