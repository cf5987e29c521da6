"""Sessions: an id and JSON globals that follow a request through every hop.

Resolution order: an explicit `session()` scope, else the session of the incoming call the
code runs under, else a per-thread default session in plain sync code. Each incoming call
gets its own `Session` object (two concurrent calls with one session id never share a dict);
what a call changes goes back to its caller in the `lazy-globals-update` trailer.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable, Iterator, MutableMapping
from concurrent import futures
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from lazygrpc import calls, metadata
from lazygrpc.calls import current_call as _current_call

P = ParamSpec("P")
T = TypeVar("T")


def new_session_id() -> str:
    """A fresh unique session id (128 random bits, hex)."""
    return os.urandom(16).hex()


_Keys = set[str]


#: Values that cannot change in place: their encoding stays right as long as they do.
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})
_MISSING = object()
_MAX_SESSION_ID = metadata.MAX_SESSION_ID


class Session:
    """One session's id and globals, with a record of what changed since it was created.

    A value changed in place (`globals["history"].append(x)`) counts as changed too: the
    update compares each value's encoding with the one the call started with. One lock
    guards the globals, since a call's threads (thread-pool fan-out) share its session.

    Encoded entries are kept per key while they cannot be stale: a value that came off the
    wire and was never handed out (or is immutable) is forwarded as it came and is known
    unchanged at the end, without encoding it again. A mutable value handed out by `get`
    is "exposed" and encoded afresh whenever it is sent. A flat value that came off the
    wire is decoded only when it is first read (`metadata.Deferred`).
    """

    __slots__ = (
        "_baggage",
        "_deleted",
        "_dirty",
        "_entries",
        "_exposed",
        "_initial",
        "_lock",
        "_raw",
        "_values",
        "foreign_baggage",
        "id",
    )

    def __init__(
        self,
        id: str | None = None,
        values: dict[str, Any] | None = None,
        foreign_baggage: list[str] | None = None,
        texts: dict[str, str] | None = None,
        entries: dict[str, str] | None = None,
        header: str | None = None,
    ) -> None:
        """`texts` and `entries` are the values' JSON texts and baggage entries as they came
        off the wire (then `values` are fresh objects nobody else holds, or `Deferred`
        values not decoded yet: those have an entry and no text). `header` is the baggage
        header they came in when it is exactly what `baggage()` would build from them: a hop
        then forwards it as it is until a global changes."""
        if id is None:
            id = new_session_id()
        elif not (id.isalnum() and id.isascii() and len(id) <= _MAX_SESSION_ID):
            metadata.validate_session_id(id)  # raises unless it has "._:-" in it
        self.id: str = id
        self._dirty: _Keys = set()
        self._deleted: _Keys = set()
        self._lock = threading.Lock()
        self._baggage: str | None = header  # the header while no global changed
        self._raw: str | None = None  # a checked header not parsed yet (`arrived`)
        self.foreign_baggage: list[str] = foreign_baggage or []
        # Encodings the call started with, to notice values changed in place.
        if texts is not None:
            self._values: dict[str, Any] = values or {}
            self._initial = texts
            self._entries = entries if entries is not None else {}
            self._exposed: _Keys = set()
        elif not values:
            self._values, self._initial, self._entries, self._exposed = {}, {}, {}, set()
        else:
            self._values = values
            self._initial = {k: metadata.encode_json(k, v) for k, v in values.items()}
            self._entries = {}
            self._exposed = {k for k, v in values.items() if type(v) not in _IMMUTABLE}

    def _parse(self) -> None:
        """Parse the header `arrived` checked and kept (every global a flat `Deferred`)."""
        with self._lock:
            raw = self._raw
            if raw is None:
                return  # another thread parsed it first
            self._values, self._entries = metadata.split_flat_header(raw)
            self._raw = None

    def _hand_out(self, key: str, value: Any) -> Any:
        if type(value) not in _IMMUTABLE:
            self._exposed.add(key)  # the caller may change it in place from now on
        return value

    def _decode(self, key: str, deferred: metadata.Deferred) -> Any:
        """Decode a value that came off the wire unread (validated then) and return the
        key's value now; `_MISSING` if another thread deleted the key meanwhile."""
        while True:
            value, text = deferred.decode()
            with self._lock:
                current = self._values.get(key, _MISSING)
                if current is deferred:
                    self._values[key] = value
                    self._initial[key] = text
                    return value
            if type(current) is not metadata.Deferred:
                return current  # another thread decoded, set or deleted it first
            deferred = current  # a merged update put a newer undecoded value there

    def get(self, key: str, default: Any = None) -> Any:
        if self._raw is not None:
            self._parse()
        value = self._values.get(key, _MISSING)
        if type(value) is metadata.Deferred:
            value = self._decode(key, value)
        if value is _MISSING:
            return default
        return self._hand_out(key, value)

    def item(self, key: str) -> Any:
        if self._raw is not None:
            self._parse()
        value = self._values[key]
        if type(value) is metadata.Deferred:
            value = self._decode(key, value)
            if value is _MISSING:
                raise KeyError(key)
        return self._hand_out(key, value)

    def set(self, key: str, value: Any, *, owned: bool = False) -> None:
        """Set a global. `owned=True`: the caller hands `value` over and will not change it
        in place, so the encoding made now is the one sent on and back (a mutable value is
        otherwise encoded again at the end, in case it changed)."""
        if not isinstance(key, str) or not key:
            raise TypeError(f"session global key {key!r} must be a non-empty str")
        entry = metadata.encode_entry(key, metadata.encode_json(key, value))
        if self._raw is not None:
            self._parse()
        if len(entry) > metadata.MAX_BAGGAGE_BYTES:
            raise ValueError(
                f"session global {key!r}: {len(entry)} bytes encoded, over the limit of "
                f"{metadata.MAX_BAGGAGE_BYTES} bytes for all globals"
            )
        with self._lock:
            self._baggage = None
            self._values[key] = value
            self._entries[key] = entry
            if owned:
                self._exposed.discard(key)
            else:
                self._hand_out(key, value)
            self._dirty.add(key)
            self._deleted.discard(key)

    def delete(self, key: str) -> None:
        if self._raw is not None:
            self._parse()
        with self._lock:
            self._baggage = None
            del self._values[key]
            self._entries.pop(key, None)
            self._exposed.discard(key)
            self._dirty.discard(key)
            self._deleted.add(key)

    def merge_update(
        self, values: dict[str, Any], deleted: _Keys, entries: dict[str, str] | None = None
    ) -> None:
        """Apply a callee's `lazy-globals-update`; the keys count as changed here too.

        `entries` are the update's own encoded entries (from `metadata.parse_baggage`): the
        values are then fresh objects or `Deferred` ones (decoded when first read), and the
        trailer already held every entry to its 8 KiB limit.
        """
        if self._raw is not None:
            self._parse()
        if entries is None:
            for key, value in values.items():
                self.set(key, value)
        else:
            with self._lock:
                for key, value in values.items():
                    self._values[key] = value
                    entry = entries.get(key)
                    if entry is None:  # not forwardable as it came: encoded when sent
                        self._entries.pop(key, None)
                    else:
                        self._entries[key] = entry
                    self._exposed.discard(key)
                    self._dirty.add(key)
                    self._deleted.discard(key)
                # Under the lock: a concurrent baggage() cannot keep an older header. The
                # next call's header is joined now, at the end of this one, not on its way.
                self._baggage = self._joined()
        with self._lock:
            for key in deleted:
                self._values.pop(key, None)
                self._entries.pop(key, None)
                self._exposed.discard(key)
                self._dirty.discard(key)
                self._deleted.add(key)
            if deleted:
                self._baggage = None

    def _joined(self) -> str | None:
        """The `baggage` header from the entries as they are, when every global has one and
        none is handed out (else None: `baggage()` builds it); under the lock."""
        if self._exposed:
            return None
        entries = self._entries
        parts = list(self.foreign_baggage)
        for key in self._values:
            entry = entries.get(key)
            if entry is None:
                return None
            parts.append(entry)
        header = ",".join(parts)
        if len(header) > metadata.MAX_BAGGAGE_BYTES or len(parts) > metadata.MAX_BAGGAGE_ENTRIES:
            return None  # `baggage()` raises, naming the limit
        return header

    def has(self, key: object) -> bool:
        if self._raw is not None:
            self._parse()
        return key in self._values

    def keys(self) -> list[str]:
        """The names of the globals (a snapshot)."""
        if self._raw is not None:
            self._parse()
        with self._lock:
            return list(self._values)

    def values(self) -> dict[str, Any]:
        """A snapshot of the globals."""
        if self._raw is not None:
            self._parse()
        for key, value in list(self._values.items()):
            if type(value) is metadata.Deferred:
                self._decode(key, value)
        with self._lock:
            for key, value in self._values.items():
                if type(value) is metadata.Deferred:  # merged while the others decoded
                    value, self._initial[key] = value.decode()
                    self._values[key] = value
                self._hand_out(key, value)
            return dict(self._values)

    def _entry(self, key: str, value: Any) -> str:
        """The encoded baggage entry of a global (under the lock)."""
        entry = self._entries.get(key)
        if entry is None or key in self._exposed:
            entry = self._entries[key] = metadata.encode_entry(
                key, metadata.encode_json(key, value)
            )
        return entry

    def baggage(self) -> str:
        """The encoded `baggage` header (`ValueError` past the W3C limits).

        Kept until a global changes; a value handed out (changeable in place) is encoded
        afresh every time."""
        header = self._baggage
        if header is not None and not self._exposed:
            return header  # unchanged since it arrived (parsed or not) or was last built
        if self._raw is not None:
            self._parse()
        if not self._values and not self.foreign_baggage:
            return ""
        with self._lock:
            parts = list(self.foreign_baggage)
            for key, value in self._values.items():
                parts.append(self._entry(key, value))
            header = ",".join(parts)
            if (
                len(header) > metadata.MAX_BAGGAGE_BYTES
                or len(parts) > metadata.MAX_BAGGAGE_ENTRIES
            ):
                metadata.join_baggage(parts)  # raises, naming the limit
            self._baggage = header
        return header

    def update_trailer(self) -> str:
        """The `lazy-globals-update` value for what changed, or "" when nothing did.

        Raises `ResourceExhausted` naming the size when it would not fit the 8 KiB limit
        the caller enforces on it.
        """
        if not self._dirty and not self._exposed and not self._deleted:
            return ""  # nothing set, deleted or handed out: every global is as it came
        if self._raw is not None:
            self._parse()
        changed: list[str] = []
        names: list[str] = []
        with self._lock:
            for key, value in self._values.items():
                if key in self._dirty:
                    changed.append(self._entry(key, value))
                elif key in self._exposed:
                    encoded = metadata.encode_json(key, value)
                    if self._unchanged(key, encoded):
                        continue
                    entry = self._entries[key] = metadata.encode_entry(key, encoded)
                    changed.append(entry)
                else:
                    continue  # never handed out, never set: as it came
                names.append(key)
            deleted = set(self._deleted)
        if not changed and not deleted:
            return ""
        update = metadata.join_update(changed, deleted)
        if len(update) > metadata.MAX_BAGGAGE_BYTES:
            from lazygrpc.errors import ResourceExhausted

            raise ResourceExhausted(
                f"{metadata.UPDATE_TRAILER}: changed globals encode to {len(update)} bytes, "
                f"over the limit of {metadata.MAX_BAGGAGE_BYTES} "
                f"(keys: {', '.join(sorted(names))})"
            )
        return update

    def _unchanged(self, key: str, encoded: str) -> bool:
        initial = self._initial.get(key)
        if initial is None:
            return False
        if initial == encoded:
            return True
        # The text came from a peer that formats JSON differently: compare canonically.
        try:
            return metadata.encode_json(key, metadata.decode_json(initial)) == encoded
        except (TypeError, ValueError, RecursionError):
            return False

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, globals={self.values()!r})"


def check_headers(id: str | None, header: str | None) -> tuple[str | None, str | None, bool]:
    """Check an incoming call's `lazy-session-id` and `baggage` (`ValueError` names what is
    wrong); what `from_headers` makes its session from, when code first asks for it.

    A header of flat globals only (`metadata.is_flat_header`) is kept as it came; any other
    is parsed now (and again when the session is made: such headers are rare)."""
    if id is not None and not (id.isalnum() and id.isascii() and len(id) <= _MAX_SESSION_ID):
        metadata.validate_session_id(id)
    flat = not header or metadata.is_flat_header(header)
    if not flat:
        metadata.parse_baggage_fields(header, True)  # type: ignore[arg-type]
    return id, header, flat


def from_headers(args: tuple[str | None, str | None, bool] | None) -> Session:
    """The session of `check_headers`'s result (a fresh one for None)."""
    if args is None:
        return Session()
    id, header, flat = args
    if not header:
        return Session(id)
    if flat:
        session = Session(id, header=header)
        session._raw = header
        return session
    return arrived(id, header)


calls._from_headers = from_headers


def arrived(id: str | None, header: str) -> Session:
    """The session of an incoming call from its `lazy-session-id` and `baggage` headers.

    Both are checked now (`ValueError` names what is wrong). A header of flat globals only
    (the common case, `metadata.is_flat_header`: one pattern match) is parsed when code first
    touches the globals, and a hop that never does forwards it as it came; any other header
    is parsed now, its flat values decoded at first read.
    """
    if metadata.is_flat_header(header):
        session = Session(id, header=header)
        session._raw = header
        return session
    values, texts, entries, others, _ = metadata.parse_baggage_fields(header, True)
    # Every global undecoded and forwardable as it came: the header it sends on is their
    # entries in the globals' order (a repeated name once), joined once.
    forward = (
        ",".join([entries[key] for key in values])
        if not texts and not others and len(entries) == len(values)
        else None
    )
    return Session(id, values, others, texts, entries, forward)


_current: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "lazygrpc_session", default=None
)
_thread_default = threading.local()


def current() -> Session:
    """The session code runs under now (explicit scope > incoming call > thread default)."""
    s = _current.get()
    if s is not None:
        return s
    scope = _current_call()
    if scope is not None:
        return scope.session
    s = getattr(_thread_default, "session", None)
    if s is None:
        s = _thread_default.session = Session()
    return s


#: Make a session current in this context (the server interceptors' per-call step, a bound C
#: method: no Python frame): `bind(s)` returns a token for `unbind(token)`.
bind: Callable[[Session | None], contextvars.Token[Session | None]] = _current.set
unbind: Callable[[contextvars.Token[Session | None]], None] = _current.reset


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
    token = _current.set(s)
    try:
        yield s
    finally:
        _current.reset(token)


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
