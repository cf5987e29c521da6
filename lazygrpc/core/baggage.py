"""Metadata codecs, pure functions: session id, globals ⇄ W3C baggage, the globals-update trailer.

Wire format (docs/wire-contract.md "Metadata"): session globals travel as `baggage` entries whose key
starts with `lazy.`; keys and values are percent-encoded, values are JSON. Other baggage
entries pass through untouched. The `lazy-globals-update` trailer uses the same encoding; a
deleted key carries the property `deleted` and an empty value.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterable
from typing import Any, NamedTuple
from urllib.parse import quote, unquote

from lazygrpc.core.values import check_depth, check_text

SESSION_HEADER = "lazy-session-id"
BAGGAGE_HEADER = "baggage"
UPDATE_TRAILER = "lazy-globals-update"
PREFIX = "lazy."
DELETED = "deleted"

#: W3C baggage limits, applied to the whole header.
MAX_BAGGAGE_BYTES = 8192
MAX_BAGGAGE_ENTRIES = 180
#: Any single metadata value a server accepts (gRPC's own soft limit is 8 KiB in total).
MAX_HEADER_BYTES = 8192

_SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
TRACEPARENT_HEADER = "traceparent"
TRACESTATE_HEADER = "tracestate"
#: A W3C `traceparent` lazygrpc forwards: version (not ff), trace id and parent id (neither
#: all zeros), flags, and only after a version above 00 more fields (the spec's versioning).
_TRACEPARENT = re.compile(
    r"(?!ff)([0-9a-f]{2})-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(-.*)?"
)
MAX_SESSION_ID = 128
# baggage-octet minus "%" (the escape character) and the always-safe unreserved set.
_VALUE_SAFE = "!#$&'()*+/:<=>?@[]^`{|}"
_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# Percent-encoding on the per-call path: JSON needs only a few characters escaped, and
# replacing just those is exact and a fraction of `urllib.parse.quote`/`unquote`'s cost. Any
# other character that needs it sends the text through the general functions.
_ALWAYS_SAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.~-"
# The characters JSON text commonly holds that baggage does not allow ("%" is done first).
_COMMON = [(ch, f"%{ord(ch):02X}") for ch in '",;\\ ']


def _leftover(safe: str) -> re.Pattern[str]:
    """Characters still unsafe once the common ones are escaped (the "%" of escapes is ok)."""
    return re.compile(f"[^{re.escape(_ALWAYS_SAFE + safe)}%]")


_KEY_LEFTOVER = _leftover("")
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} overflows a double")
    return value


# Strict JSON: NaN and ±Infinity (which json.loads accepts, and numbers like 1e999 become)
# are refused, as when encoding.
_DECODER = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)
# A value forwarded as it came must be W3C baggage octets, "%" only in "%XX" escapes.
_WIRE_VALUE = re.compile(r"(?:[\x21\x23\x24\x26-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]|%[0-9A-Fa-f]{2})*")

# A flat JSON value on the wire, as `encode_entry` writes it: a scalar, or an object or array
# of scalars, its strings printable ASCII without backslash escapes. Whatever matches is valid
# strict JSON and valid baggage octets, so a server can forward the entry as it came and
# decode the value only when code reads it (`Undecoded`).
# At most 200 integer digits and a 2-digit exponent: always a finite float and an int Python
# converts (longer numbers go through the eager decoder, which refuses what it cannot take).
# Runs of plain characters are taken whole and every repeat is possessive (`++`, `*+`,
# atomic `(?>…)`): what follows a repeat can never start with what it repeats, so this
# matches exactly what the backtracking form would, about twice as fast, and a failing
# match never backtracks into a run.
_W_NUM = r"-?(?:0|[1-9][0-9]{0,199}+)(?:\.[0-9]++)?(?:[eE][+-]?[0-9]{1,2}+)?"
_W_STR = r"%22(?>[A-Za-z0-9_.~!#$&'()*+/:<=>?@\[\]^`{|}-]+|%2[05C]|%3B)*+%22"
_W_SCALAR = f"(?:{_W_STR}|{_W_NUM}|true|false|null)"
_FLAT_WIRE = re.compile(
    f"{_W_SCALAR}"
    f"|\\{{(?:{_W_STR}:{_W_SCALAR}(?:%2C{_W_STR}:{_W_SCALAR})*+)?\\}}"
    f"|\\[(?:{_W_SCALAR}(?:%2C{_W_SCALAR})*+)?\\]"
)


# A whole `lazy.` entry with a flat value and a plain key, exactly as `encode_entry` writes
# it (no spaces, no properties): the name and the wire value in one match.
_FLAT_ENTRY = re.compile(
    f"{re.escape(PREFIX)}([!#$&'*+\\-.^_`|~0-9A-Za-z]++)=({_FLAT_WIRE.pattern})"
)


# A whole header of such entries, and the names in one.
_FLAT_HEADER = re.compile(f"{_FLAT_ENTRY.pattern}(?:,{_FLAT_ENTRY.pattern})*+")
_FLAT_NAMES = re.compile(r"(?:^|,)lazy\.([^=]*)=")


def is_flat_header(header: str) -> bool:
    """Whether a `baggage` header is only `lazy.` globals written the way `encode_entry`
    writes them, each name once, within the W3C limits: then `split_flat_header` takes it
    apart without checking it again (every value `Undecoded`, decoded when first read), and
    a hop forwards it as it is.

    A header in `KNOWN_FLAT` is known without the check; else `check_flat_header` (one
    pattern match) decides, and a header that passes is known from then on."""
    if header in KNOWN_FLAT:
        return True
    if check_flat_header(header):
        KNOWN_FLAT.add(header)
        return True
    return False


def check_flat_header(header: str) -> bool:
    """`is_flat_header` without what is known: the pattern match itself (`_FLAT_HEADER`)."""
    if len(header) > MAX_BAGGAGE_BYTES or _FLAT_HEADER.fullmatch(header) is None:
        return False
    if "," in header:
        names = _FLAT_NAMES.findall(header)
        if len(names) > MAX_BAGGAGE_ENTRIES or len(set(names)) != len(names):
            return False
    return True


class KnownHeaders(dict[str, None]):
    """Headers and entries known to pass `check_flat_header`: seen to pass it, or written by
    `encode_entry` (valid JSON, percent-encoded, a plain name). A session's header changes
    with its globals, but what comes down a chain is mostly what a hop wrote: the model's
    `usage` entry goes up in a trailer and comes down again in the next call's header, at
    every hop. So each hop checks it once, not on every call's way to its first token
    (docs/performance.md, "Known headers"). `header in known` is a plain dict lookup.
    Bounded in count and length; the oldest go first."""

    def __init__(self, size: int = 512, max_chars: int = 1024) -> None:
        super().__init__()
        self.size = size
        self.max_chars = max_chars
        self._lock = threading.Lock()

    def add(self, text: str) -> None:
        if len(text) > self.max_chars or text in self:
            return
        with self._lock:
            self[text] = None
            while len(self) > self.size:
                del self[next(iter(self))]


#: This process's known flat headers.
KNOWN_FLAT = KnownHeaders()


def split_flat_header(header: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(values, entries) of a header `is_flat_header` accepted: what `parse_baggage` gives
    for it, without checking it again (every value `Undecoded`)."""
    values: dict[str, Any] = {}
    entries: dict[str, str] = {}
    for entry in header.split(","):
        key, _, wire = entry.partition("=")
        key = key[5:]  # after "lazy."
        values[key] = Undecoded(wire)
        entries[key] = entry
    return values, entries


class Undecoded:
    """A global's value as it came on the wire (percent-encoded JSON), checked on arrival
    (`_FLAT_WIRE`) and decoded at its first read."""

    __slots__ = ("wire",)

    def __init__(self, wire: str) -> None:
        self.wire = wire

    def decode(self) -> tuple[Any, str]:
        """(value, JSON text)."""
        text = _unquote(self.wire)
        return decode_json(text), text

    def __repr__(self) -> str:
        return f"Undecoded({self.wire!r})"


def decode_json(text: str) -> Any:
    """Strict `json.loads(text)` for a str (`ValueError` if bad, NaN and ±Infinity too)."""
    try:
        value, end = _DECODER.raw_decode(text)
    except ValueError:
        value = _DECODER.decode(text)  # leading whitespace, or it says what is wrong
        end = len(text)
    if end != len(text) and text[end:].strip(" \t\n\r"):
        raise ValueError(f"extra data after the JSON value at {end}")
    if "\\u" in text:  # only an escape can make a lone surrogate, which is not text
        check_text(value)
    return value


def _quote(text: str, leftover: re.Pattern[str], safe: str) -> str:
    """`urllib.parse.quote(text, safe=safe)`."""
    out = _common_escaped(text)
    return quote(text, safe=safe) if leftover.search(out) else out


def _quote_value(text: str) -> str:
    """`urllib.parse.quote(text, safe=_VALUE_SAFE)`, for a global's JSON text.

    Once the common characters are escaped, printable ASCII is all safe in a value (tests
    check every character), so two str methods, one O(1) and one a single pass, replace
    `quote`'s search through a character class, character by character.
    """
    out = _common_escaped(text)
    return out if out.isascii() and out.isprintable() else quote(text, safe=_VALUE_SAFE)


def _common_escaped(text: str) -> str:
    out = text.replace("%", "%25") if "%" in text else text
    for ch, esc in _COMMON:
        if ch in out:
            out = out.replace(ch, esc)
    return out


def _unquote(text: str) -> str:
    """`urllib.parse.unquote(text, errors="strict")`."""
    if "%" not in text:
        return text
    out = text
    for ch, esc in _COMMON:
        if esc in out:
            out = out.replace(esc, ch)
    if "%" in out.replace("%25", ""):
        return unquote(text, errors="strict")  # other escapes: the general decoder decides
    return out.replace("%25", "%")


def check_session_id(value: str) -> str:
    """Return `value` if it is a valid session id, else raise `ValueError` naming the header."""
    if value.isalnum() and value.isascii() and len(value) <= MAX_SESSION_ID:
        return value  # the common case (hex ids), without the regex
    if not _SESSION_ID.fullmatch(value):
        shown = repr(value) if len(value) <= 40 else f"{value[:40]!r}… ({len(value)} characters)"
        raise ValueError(f"{SESSION_HEADER}: {shown} is not 1-128 characters of [A-Za-z0-9._:-]")
    return value


def trace_headers(traceparent: str | None, tracestate: str | None) -> tuple[tuple[str, str], ...]:
    """The W3C trace context headers a hop forwards: () unless `traceparent` is valid (the
    trace then restarts); a `tracestate` over `MAX_HEADER_BYTES` (all its headers together)
    is left out."""
    if not traceparent:
        return ()
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None or (match[1] == "00" and match[2] is not None):
        return ()
    if tracestate and len(tracestate) <= MAX_HEADER_BYTES:
        return ((TRACEPARENT_HEADER, traceparent), (TRACESTATE_HEADER, tracestate))
    return ((TRACEPARENT_HEADER, traceparent),)


def encode_json(key: str, value: Any) -> str:
    """JSON-encode a global's value; `TypeError` names the key when it is not JSON (or
    nests deeper than `values.MAX_DEPTH`)."""
    if isinstance(value, dict | list | tuple):
        check_depth(value, f"session global {key!r}")
    try:
        text = _ENCODER.encode(value)
        if not text.isascii():
            check_text(text)
        return text
    except (TypeError, ValueError) as exc:
        raise TypeError(f"session global {key!r}: value is not JSON-serialisable ({exc})") from None


def encode_entry(key: str, value_json: str, *props: str) -> str:
    """One baggage entry `lazy.<key>=<json>` with both parts percent-encoded."""
    name = _quote(key, _KEY_LEFTOVER, "")
    entry = f"{PREFIX}{name}={_quote_value(value_json)}"
    if props:
        return ";".join((entry, *props))
    if name == key:  # a plain name: what `check_flat_header` accepts
        KNOWN_FLAT.add(entry)
    return entry


def join_baggage(entries: Iterable[str]) -> str:
    """Join entries into one header value, enforcing the W3C size and count limits."""
    items = list(entries)
    header = ",".join(items)
    if len(items) > MAX_BAGGAGE_ENTRIES:
        raise ValueError(
            f"session globals: {len(items)} baggage entries, over the limit of "
            f"{MAX_BAGGAGE_ENTRIES} entries"
        )
    if len(header) > MAX_BAGGAGE_BYTES:
        raise ValueError(
            f"session globals: encoded baggage is {len(header)} bytes, over the limit of "
            f"{MAX_BAGGAGE_BYTES} bytes (8 KiB)"
        )
    return header


class ParsedBaggage(NamedTuple):
    """A parsed `baggage` header."""

    values: dict[str, Any]  #: the lazy globals
    texts: dict[str, str]  #: each global's JSON text as it came (to tell later changes)
    entries: dict[str, str]  #: each global's `lazy.key=value` entry as it came (to forward)
    others: list[str]  #: other entries, verbatim
    deleted: set[str]  #: keys marked `deleted` (in a `lazy-globals-update`)


def parse_baggage(header: str, *, defer: bool = False, update: bool = False) -> ParsedBaggage:
    """Parse a baggage header; `ValueError` names the header and the bad entry.

    Only a `lazy-globals-update` trailer (`update=True`) may mark a global `deleted`: in a
    request's `baggage` it is refused, never taken as "drop this global".
    With `defer=True` a flat JSON value (the common case) is validated but not decoded: its
    `values` item is `Undecoded`, and it has an `entries` item but no `texts` one.
    """
    values: dict[str, Any] = {}
    texts: dict[str, str] = {}
    entries: dict[str, str] = {}
    others: list[str] = []
    deleted: set[str] = set()
    if len(header) > MAX_BAGGAGE_BYTES:
        raise ValueError(
            f"{BAGGAGE_HEADER}: {len(header)} bytes, over the limit of {MAX_BAGGAGE_BYTES} bytes"
        )
    raw_entries = header.split(",") if header.strip() else []
    if len(raw_entries) > MAX_BAGGAGE_ENTRIES:
        raise ValueError(
            f"{BAGGAGE_HEADER}: {len(raw_entries)} entries, over the limit of "
            f"{MAX_BAGGAGE_ENTRIES} entries"
        )
    for entry in raw_entries:
        if defer and (flat := _FLAT_ENTRY.fullmatch(entry)) is not None:
            key, wire = flat.groups()  # the common case, in one match
            values[key] = Undecoded(wire)
            entries[key] = entry
            KNOWN_FLAT.add(entry)
            texts.pop(key, None)  # a repeated name: the last entry wins, whole
            continue
        entry = entry.strip()
        member, semi, props = entry.partition(";")
        raw_key, eq, raw_value = member.partition("=")
        raw_key = raw_key.strip()
        if not eq or not _KEY.fullmatch(raw_key):
            raise ValueError(f"{BAGGAGE_HEADER}: malformed entry {entry[:60]!r}")
        if not raw_key.startswith(PREFIX):
            others.append(entry)
            continue
        key = raw_key[len(PREFIX) :]
        if "%" in key:
            key = _unquote(key)
        if not key:
            raise ValueError(f"{BAGGAGE_HEADER}: entry {entry[:60]!r} has an empty global name")
        if semi and DELETED in (p.strip() for p in props.split(";")):
            if not update:
                raise ValueError(
                    f"{BAGGAGE_HEADER}: entry {entry[:60]!r} is marked {DELETED!r}, which only "
                    f"a {UPDATE_TRAILER} trailer may do"
                )
            deleted.add(key)
            continue
        raw_value = raw_value.strip()
        if defer and _FLAT_WIRE.fullmatch(raw_value):
            values[key] = Undecoded(raw_value)
            entries[key] = f"{raw_key}={raw_value}"
            texts.pop(key, None)
            continue
        try:
            text = _unquote(raw_value)
            values[key] = value = decode_json(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            why = str(exc) if "surrogate" in str(exc) else "does not hold percent-encoded JSON"
            raise ValueError(f"{BAGGAGE_HEADER}: entry {raw_key[:40]!r}: {why}") from None
        if isinstance(value, dict | list):
            try:
                check_depth(value, f"{BAGGAGE_HEADER}: entry {raw_key[:40]!r}")
            except TypeError as exc:
                raise ValueError(str(exc)) from None
        texts[key] = text
        if _WIRE_VALUE.fullmatch(raw_value):
            entries[key] = f"{raw_key}={raw_value}"
        else:  # encoded afresh when sent on (and never an earlier entry of the same name)
            entries.pop(key, None)
    return ParsedBaggage(values, texts, entries, others, deleted)


def join_update(entries: Iterable[str], deleted: Iterable[str]) -> str:
    """The `lazy-globals-update` value from encoded entries of set keys and deleted keys."""
    return ",".join([*entries, *(encode_entry(k, "", DELETED) for k in deleted)])


def get_header(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> str | None:
    """First value of `key` in gRPC metadata, decoded to str."""
    for k, v in metadata or ():
        if k == key:
            return v.decode("latin-1") if isinstance(v, bytes) else v
    return None
