"""The `usage` global: counts that add up along a chain, and never from what a caller says.

A model adds what it counted for one call (`Session.add_usage`). What goes back upstream in
`lazy-globals-update` is what the call below added, not a total: each caller adds it to
its own `usage`. So an incoming `usage` (a header anyone can write) is never a count that
a server adds to; a forged one only changes what its sender reads back, and clients leave `usage` out of the
headers they send down (`Session.baggage`): it flows only upstream. Counts are
non-negative integers under `MAX_COUNT`, at most `MAX_KEYS` of them (docs/sessions.md).
"""

from __future__ import annotations

from typing import Any

USAGE = "usage"
MAX_COUNT = 2**53  # what every JSON reader holds exactly
MAX_KEYS = 16


def counts_of(value: Any) -> dict[str, int] | None:
    """`value` as usage counts, or None when it is not a mapping of names to counts."""
    if not isinstance(value, dict) or len(value) > MAX_KEYS:
        return None
    for key, n in value.items():
        if type(n) is not int or not 0 <= n < MAX_COUNT or not isinstance(key, str):
            return None
    return value


def added(total: Any, counts: dict[str, int]) -> dict[str, int]:
    """`counts` added to `total` (a `usage` value as read: anything but counts is none)."""
    out = dict(counts_of(total) or {})
    for key, n in counts.items():
        if key in out or len(out) < MAX_KEYS:
            out[key] = min(out.get(key, 0) + n, MAX_COUNT - 1)
    return out
