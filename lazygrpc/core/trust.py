"""Which globals cross a server's boundaries: from its callers, and back from its callees.

By default every global crosses both ways (docs/sessions.md, "Trust"): any caller may send
any global, and any service a handler calls may change or delete any of the caller's. A
server that takes globals from callers it does not trust, or calls services it does not
trust with its own, names what may cross (`GlobalsPolicy`). The `usage` global is always
merged from callees, as counts it adds (`lazygrpc.core.usage`), never as a total.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from lazygrpc.core import baggage
from lazygrpc.core.usage import USAGE

_log = logging.getLogger(__name__)


def _names(names: Iterable[str] | None) -> frozenset[str] | None:
    return None if names is None else frozenset(names)


@dataclass(frozen=True)
class GlobalsPolicy:
    """`accept`: the globals a server takes from its callers (the others are dropped on
    arrival); `from_callees`: the globals that the services its handlers call may change
    (other changes are dropped, with a warning). None: all."""

    accept: frozenset[str] | None = None
    from_callees: frozenset[str] | None = None

    @classmethod
    def of(
        cls, accept: Iterable[str] | None = None, from_callees: Iterable[str] | None = None
    ) -> GlobalsPolicy:
        return cls(_names(accept), _names(from_callees))

    def incoming(self, header: str | None) -> str | None:
        """The `baggage` header with only the accepted globals (other entries as they are)."""
        if self.accept is None or not header:
            return header
        kept = []
        for entry in header.split(","):
            name = entry.strip().partition("=")[0].partition(";")[0].strip()
            if name.startswith(baggage.PREFIX):
                key = unquote(name[len(baggage.PREFIX) :])
                if key not in self.accept:
                    continue
            kept.append(entry)
        return ",".join(kept) or None

    def from_callee(self, values: dict[str, Any], deleted: set[str]) -> None:
        """Drop, in place, the changes of an update that callees may not make."""
        if self.from_callees is None:
            return
        refused = sorted(k for k in (*values, *deleted) if k not in self.from_callees)
        refused = [k for k in refused if k != USAGE]
        for key in refused:
            values.pop(key, None)
            deleted.discard(key)
        if refused:
            _log.warning("a callee's changes to globals %s were dropped (policy)", refused)
