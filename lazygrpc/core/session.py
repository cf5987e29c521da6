"""Session state: an id and JSON globals, and a record of what a call changed. No I/O.

Each incoming call gets its own `Session` (two concurrent calls with one session id never
share globals); what a call changes goes back to its caller in the `lazy-globals-update`
trailer (docs/sessions.md). Which session code runs under is `lazygrpc.core.context`'s
business, not this module's.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import Any

from lazygrpc.core import baggage, usage
from lazygrpc.core.baggage import Undecoded
from lazygrpc.core.errors import ResourceExhausted

#: Values that cannot change in place: their encoding stays right as long as they do.
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})
_MISSING = object()


def new_session_id() -> str:
    """A fresh unique session id (128 random bits, hex)."""
    return os.urandom(16).hex()


def check_arrival(id: str | None, header: str | None) -> bool:
    """Check an incoming call's session id and `baggage` header (`ValueError` names what is
    wrong), for every entry point (a server's calls, the HTTP edge's requests): whether the
    header holds flat globals only, which `Session.arrived` keeps as it came."""
    if id is not None:
        baggage.check_session_id(id)
    flat = not header or baggage.is_flat_header(header)
    if not flat:
        baggage.parse_baggage(header, defer=True)  # type: ignore[arg-type]  # raises
    return flat


class _Global:
    """One global: its value (`Undecoded` until first read), and what is known of it.

    `text` is the JSON text the call started with (to notice a value changed in place);
    `entry` its encoded baggage entry while that is known to be current; `exposed` means a
    mutable value was handed out, so it is encoded afresh whenever it is sent; `dirty` means
    this call set it (or merged it from a callee).
    """

    __slots__ = ("dirty", "entry", "exposed", "text", "value")

    def __init__(
        self, value: Any, text: str | None = None, entry: str | None = None, *, dirty: bool = False
    ) -> None:
        self.value = value
        self.text = text
        self.entry = entry
        self.dirty = dirty
        self.exposed = False


class Session:
    """One session's id and globals, with a record of what changed since it was created.

    A value changed in place (`globals["history"].append(x)`) counts as changed too: the
    update compares each handed-out value's encoding with the one the call started with.
    One lock guards the globals, since a call's threads (thread-pool fan-out) share them.

    A session that arrived in a header of flat globals keeps the header unparsed until code
    first touches a global, and forwards it as it came while no global changed.
    """

    __slots__ = (
        "_added",
        "_deleted",
        "_header",
        "_lock",
        "_pending",
        "_table",
        "_unparsed",
        "foreign_baggage",
        "id",
    )

    def __init__(
        self,
        id: str | None = None,
        values: dict[str, Any] | None = None,
        foreign_baggage: list[str] | None = None,
        *,
        checked: bool = False,
    ) -> None:
        """A session with `values` as its starting globals (not counted as changed);
        `checked=True`: `id` was checked already (`check_arrival`)."""
        if id is None:
            id = new_session_id()
        elif not checked:
            baggage.check_session_id(id)
        self.id: str = id
        self.foreign_baggage: list[str] = foreign_baggage or []
        self._lock = threading.Lock()
        self._table: dict[str, _Global] = {}
        self._deleted: set[str] = set()
        self._header: str | None = None  # the `baggage` header while it is current
        self._unparsed: str | None = None  # a checked flat header not taken apart yet
        self._added: dict[str, int] | None = None  # the usage this call added (`add_usage`)
        self._pending: dict[str, int] | None = None  # added, not yet in the `usage` global
        for key, value in (values or {}).items():
            g = self._table[key] = _Global(value, baggage.encode_json(key, value))
            g.exposed = type(value) not in _IMMUTABLE
        if not self._table and not self.foreign_baggage:
            self._header = ""  # no globals: the header is known (a call with none sends none)

    @classmethod
    def arrived(cls, id: str | None, header: str | None, flat: bool) -> Session:
        """The session of an incoming call from its headers, as `check_arrival` checked them
        (`flat` is what it said).

        A header of flat globals only (the common case) is taken apart when code first
        touches a global, and a hop that never does forwards it as it came."""
        session = cls(id, checked=True)
        if not header:
            return session
        if flat:
            session._header = session._unparsed = header
            return session
        parsed = baggage.parse_baggage(header, defer=True)
        session.foreign_baggage = parsed.others
        for key, value in parsed.values.items():
            session._table[key] = _Global(value, parsed.texts.get(key), parsed.entries.get(key))
        session._header = session._joined()
        return session

    def _globals(self) -> dict[str, _Global]:
        """The table of globals, the arrival header taken apart first if it was not yet."""
        if self._unparsed is not None:
            with self._lock:
                header = self._unparsed
                if header is not None:  # else another thread took it apart first
                    values, entries = baggage.split_flat_header(header)
                    for key, value in values.items():
                        self._table[key] = _Global(value, None, entries[key])
                    self._unparsed = None  # only now: readers without the lock wait till here
        if self._pending is not None:
            self._settle()
        return self._table

    def _settle(self) -> None:
        """Add the pending usage to the `usage` global, now that code or a header needs it."""
        with self._lock:
            pending, self._pending = self._pending, None
            if pending is None:
                return
            g = self._table.get(usage.USAGE)
            total = g.value if g is not None else None
            if type(total) is Undecoded:
                total = total.decode()[0]
            value = usage.added(total, pending)
            self._table[usage.USAGE] = _Global(value, None, None, dirty=True)
            self._deleted.discard(usage.USAGE)

    def _read(self, key: str) -> Any:
        """The value of `key` (`_MISSING` if unset), decoded and marked handed out."""
        table = self._globals()
        while True:
            g = table.get(key)
            if g is None:
                return _MISSING
            value = g.value
            if type(value) is not Undecoded:
                break
            decoded, text = value.decode()  # checked on arrival: cannot fail here
            with self._lock:
                # Another thread may have decoded, set, merged or deleted it meanwhile.
                if table.get(key) is g and g.value is value:
                    g.value, g.text = decoded, text
                    value = decoded
                    break
        if type(value) not in _IMMUTABLE and not g.exposed:
            with self._lock:  # not between `baggage()` building a header and keeping it
                g.exposed = True  # the caller may change it in place from now on
                self._header = None
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = self._read(key)
        return default if value is _MISSING else value

    def item(self, key: str) -> Any:
        value = self._read(key)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def has(self, key: object) -> bool:
        return key in self._globals()

    def keys(self) -> list[str]:
        """The names of the globals (a snapshot)."""
        table = self._globals()
        with self._lock:
            return list(table)

    def values(self) -> dict[str, Any]:
        """A snapshot of the globals."""
        snapshot = {key: self._read(key) for key in self.keys()}
        return {key: value for key, value in snapshot.items() if value is not _MISSING}

    def set(self, key: str, value: Any, *, owned: bool = False) -> None:
        """Set a global. `owned=True`: the caller hands `value` over and will not change it
        in place, so the encoding made now is the one sent on and back (a mutable value is
        otherwise encoded again whenever it is sent, in case it changed)."""
        if not isinstance(key, str) or not key:
            raise TypeError(f"session global key {key!r} must be a non-empty str")
        entry = baggage.encode_entry(key, baggage.encode_json(key, value))
        if len(entry) > baggage.MAX_BAGGAGE_BYTES:
            raise ValueError(
                f"session global {key!r}: {len(entry)} bytes encoded, over the limit of "
                f"{baggage.MAX_BAGGAGE_BYTES} bytes for all globals"
            )
        table = self._globals()
        g = _Global(value, None, entry, dirty=True)
        g.exposed = not owned and type(value) not in _IMMUTABLE
        with self._lock:
            table[key] = g
            self._deleted.discard(key)
            self._header = None

    def delete(self, key: str) -> None:
        table = self._globals()
        with self._lock:
            del table[key]
            self._deleted.add(key)
            self._header = None

    def merge_update(
        self, values: dict[str, Any], deleted: Iterable[str], entries: dict[str, str] | None = None
    ) -> None:
        """Apply a callee's `lazy-globals-update`; the keys count as changed here too.

        `entries` are the update's own encoded entries (`baggage.parse_baggage`): the values
        are then fresh objects or `Undecoded`, forwarded as they came. `usage` adds to this
        session's (`add_usage`). All or nothing: `ValueError` (and the globals are as they
        were) when the session would no longer fit the baggage limits."""
        values = dict(values)
        added = values.pop(usage.USAGE, None)
        deleted = [key for key in deleted if key != usage.USAGE]
        fresh = {
            key: _Global(value, None, (entries or {}).get(key), dirty=True)
            for key, value in values.items()
        }
        table = self._globals()
        with self._lock:
            merged = {**table, **fresh}
            for key in deleted:
                merged.pop(key, None)
            self._check_fits(merged, "merging a callee's update", [*fresh, *deleted])
            table.update(fresh)
            for key in fresh:
                self._deleted.discard(key)
            for key in deleted:
                table.pop(key, None)
                self._deleted.add(key)
            # The next call's header is joined now, under the lock, not on its way out.
            self._header = self._joined()
        if added is not None:
            counts = usage.counts_of(added.decode()[0] if type(added) is Undecoded else added)
            if counts is None:
                raise ValueError(f"{usage.USAGE}: a callee's update holds no usage counts")
            self.add_usage(counts)

    def add_usage(self, counts: dict[str, int]) -> None:
        """Add `counts` (checked: `usage.counts_of`) to the `usage` global; what goes back to
        this call's caller is what was added, which it adds to its own (`lazygrpc.core.usage`)."""
        with self._lock:  # the total is made when code reads it (`_settle`)
            self._added = usage.added(self._added, counts)
            self._pending = usage.added(self._pending, counts)

    def _check_fits(self, table: dict[str, _Global], doing: str, keys: Iterable[str]) -> None:
        """`ValueError` naming `keys` when `table`'s globals would not fit one header (under
        the lock)."""
        parts = [*self.foreign_baggage, *self._entries(table)]
        size = len(",".join(parts))
        if size > baggage.MAX_BAGGAGE_BYTES or len(parts) > baggage.MAX_BAGGAGE_ENTRIES:
            raise ValueError(
                f"session globals: {doing} would make {len(parts)} entries of {size} bytes, "
                f"over the limits of {baggage.MAX_BAGGAGE_ENTRIES} entries and "
                f"{baggage.MAX_BAGGAGE_BYTES} bytes (keys: {', '.join(sorted(keys))})"
            )

    def _joined(self) -> str | None:
        """The `baggage` header from the entries as they are, when every global has a current
        one (else None: `baggage()` encodes what it must)."""
        parts = list(self.foreign_baggage)
        for key, g in self._table.items():
            if key == usage.USAGE:
                continue  # flows up only (`_entries`)
            if g.entry is None or g.exposed:
                return None
            parts.append(g.entry)
        header = ",".join(parts)
        if len(header) > baggage.MAX_BAGGAGE_BYTES or len(parts) > baggage.MAX_BAGGAGE_ENTRIES:
            return None  # `baggage()` raises, naming the limit
        return header

    def _entries(self, table: dict[str, _Global]) -> list[str]:
        """The entries of the `baggage` header calls made under this session send (under the
        lock): every global but `usage`, which flows only upstream: no server adds to a
        usage it was sent (`lazygrpc.core.usage`), so sending it down is only bytes."""
        return [self._entry(k, g) for k, g in table.items() if k != usage.USAGE]

    def _entry(self, key: str, g: _Global) -> str:
        """The current baggage entry of a global (under the lock)."""
        if g.entry is None or g.exposed:
            g.entry = baggage.encode_entry(key, baggage.encode_json(key, g.value))
        return g.entry

    def baggage(self) -> str:
        """The encoded `baggage` header (`ValueError` past the W3C limits).

        Kept until a global changes or a mutable one is handed out; a handed-out value is
        encoded afresh every time."""
        header = self._header
        if header is not None:
            return header  # unchanged since it arrived (parsed or not) or was last built
        table = self._globals()
        with self._lock:
            parts = [*self.foreign_baggage, *self._entries(table)]
            header = baggage.join_baggage(parts)  # raises, naming the limit
            if not any(g.exposed for k, g in table.items() if k != usage.USAGE):
                self._header = header
        return header

    def update_trailer(self) -> str:
        """The `lazy-globals-update` value for what changed, or "" when nothing did.

        Raises `ResourceExhausted` naming the size when it would not fit the 8 KiB limit
        the caller enforces on it."""
        if self._unparsed is not None and self._added is None:
            return ""  # never touched: every global is as it came
        changed: list[str] = []
        names: list[str] = []
        with self._lock:
            if self._added is not None:  # what this call added, not the total (`add_usage`)
                added = baggage.encode_json(usage.USAGE, self._added)
                changed.append(baggage.encode_entry(usage.USAGE, added))
                names.append(usage.USAGE)
            for key, g in self._table.items():
                if key == usage.USAGE and self._added is not None:
                    continue
                if g.dirty:
                    changed.append(self._entry(key, g))
                elif g.exposed:
                    encoded = baggage.encode_json(key, g.value)
                    if _same_json(key, g.text, encoded):
                        continue
                    g.entry = baggage.encode_entry(key, encoded)
                    changed.append(g.entry)
                else:
                    continue  # never handed out, never set: as it came
                names.append(key)
            deleted = sorted(self._deleted)
            if changed or deleted:
                try:  # the caller's session, with this update merged, must still fit
                    self._check_fits(self._table, "this call's changes", names)
                except ValueError as exc:
                    raise ResourceExhausted(f"{baggage.UPDATE_TRAILER}: {exc}") from None
        if not changed and not deleted:
            return ""
        update = baggage.join_update(changed, deleted)
        if len(update) > baggage.MAX_BAGGAGE_BYTES:
            raise ResourceExhausted(
                f"{baggage.UPDATE_TRAILER}: changed globals encode to {len(update)} bytes, "
                f"over the limit of {baggage.MAX_BAGGAGE_BYTES} "
                f"(keys: {', '.join(sorted(names))})"
            )
        return update

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, globals={self.values()!r})"


def _same_json(key: str, initial: str | None, encoded: str) -> bool:
    """Whether a handed-out value still encodes to the JSON text it started with."""
    if initial is None:
        return False
    if initial == encoded:
        return True
    # The text came from a peer that formats JSON differently: compare canonically.
    try:
        return baggage.encode_json(key, baggage.decode_json(initial)) == encoded
    except (TypeError, ValueError, RecursionError):
        return False
