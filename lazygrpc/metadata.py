"""Metadata codecs, pure functions: session id, globals ⇄ W3C baggage, the globals-update trailer.

Wire format (DESIGN.md "Metadata"): session globals travel as `baggage` entries whose key
starts with `lazy.`; keys and values are percent-encoded, values are JSON. Other baggage
entries pass through untouched. The `lazy-globals-update` trailer uses the same encoding; a
deleted key carries the property `deleted` and an empty value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote

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
# baggage-octet minus "%" (the escape character) and the always-safe unreserved set.
_VALUE_SAFE = "!#$&'()*+/:<=>?@[]^`{|}"
_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def validate_session_id(value: str) -> str:
    """Return `value` if it is a valid session id, else raise `ValueError` naming the header."""
    if not _SESSION_ID.fullmatch(value):
        raise ValueError(
            f"{SESSION_HEADER}: {value[:40]!r} is not 1-128 characters of [A-Za-z0-9._:-]"
        )
    return value


def encode_json(key: str, value: Any) -> str:
    """JSON-encode a global's value; `TypeError` names the key when it is not JSON."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"session global {key!r}: value is not JSON-serialisable ({exc})") from None


def encode_entry(key: str, value_json: str, *props: str) -> str:
    """One baggage entry `lazy.<key>=<json>` with both parts percent-encoded."""
    entry = f"{PREFIX}{quote(key, safe='')}={quote(value_json, safe=_VALUE_SAFE)}"
    return ";".join((entry, *props)) if props else entry


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


def encode_globals(values: Mapping[str, Any], other_entries: Iterable[str] = ()) -> str:
    """Globals (plus foreign baggage entries kept as they were) → a `baggage` header value."""
    own = [encode_entry(k, encode_json(k, v)) for k, v in values.items()]
    return join_baggage([*other_entries, *own])


def split_baggage(header: str) -> tuple[dict[str, Any], list[str], set[str]]:
    """Parse a baggage header: (lazy globals, other entries verbatim, keys marked deleted).

    Raises `ValueError` naming the header and the bad entry.
    """
    values: dict[str, Any] = {}
    others: list[str] = []
    deleted: set[str] = set()
    if len(header) > MAX_BAGGAGE_BYTES:
        raise ValueError(
            f"{BAGGAGE_HEADER}: {len(header)} bytes, over the limit of {MAX_BAGGAGE_BYTES} bytes"
        )
    raw_entries = [e.strip() for e in header.split(",")] if header.strip() else []
    if len(raw_entries) > MAX_BAGGAGE_ENTRIES:
        raise ValueError(
            f"{BAGGAGE_HEADER}: {len(raw_entries)} entries, over the limit of "
            f"{MAX_BAGGAGE_ENTRIES} entries"
        )
    for entry in raw_entries:
        member, _, props = entry.partition(";")
        raw_key, eq, raw_value = member.partition("=")
        raw_key = raw_key.strip()
        if not eq or not _KEY.fullmatch(raw_key):
            raise ValueError(f"{BAGGAGE_HEADER}: malformed entry {entry[:60]!r}")
        if not raw_key.startswith(PREFIX):
            others.append(entry)
            continue
        key = unquote(raw_key[len(PREFIX) :], errors="strict")
        if DELETED in (p.strip() for p in props.split(";")):
            deleted.add(key)
            continue
        try:
            values[key] = json.loads(unquote(raw_value.strip(), errors="strict"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ValueError(
                f"{BAGGAGE_HEADER}: entry {raw_key[:40]!r} does not hold percent-encoded JSON"
            ) from None
    return values, others, deleted


def encode_update(changed: Mapping[str, Any], deleted: Iterable[str]) -> str:
    """The `lazy-globals-update` trailer value for keys a call set or deleted."""
    entries = [encode_entry(k, encode_json(k, v)) for k, v in changed.items()]
    entries += [encode_entry(k, "", DELETED) for k in deleted]
    return ",".join(entries)


def decode_update(value: str) -> tuple[dict[str, Any], set[str]]:
    """Parse a `lazy-globals-update` trailer: (set keys with values, deleted keys)."""
    values, _, deleted = split_baggage(value)
    return values, deleted


def get_header(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> str | None:
    """First value of `key` in gRPC metadata, decoded to str."""
    for k, v in metadata or ():
        if k == key:
            return v.decode("latin-1") if isinstance(v, bytes) else v
    return None
