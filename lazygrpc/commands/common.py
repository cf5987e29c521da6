"""What every subcommand shares: exit codes, the two failure kinds, argument parsing helpers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

#: Exit codes of every `lazygrpc` command (documented in `lazygrpc --help`).
OK, FAILED, USAGE = 0, 1, 2

EXIT_CODES = "exit codes: 0 success, 1 the call or the server failed, 2 usage error"


class UsageError(Exception):
    """The command line is wrong: one line naming the fix, exit 2."""


class Failed(Exception):
    """The command could not do its job (a server that cannot start, a call that failed):
    one line naming the fix, exit 1."""


def json_or_text(text: str) -> Any:
    """`text` as JSON when it parses, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def json_of(text: str, option: str, kind: type) -> Any:
    """`text` parsed as JSON of `kind` (list or dict); `UsageError` naming `option` if not."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {text!r} is not JSON ({exc})") from None
    if not isinstance(value, kind):
        what = "array" if kind is list else "object"
        raise UsageError(f"{option} must be a JSON {what}, got {text!r}")
    return value


def key_values(pairs: Sequence[str], what: str) -> dict[str, Any]:
    """`KEY=VALUE` pairs (VALUE as `json_or_text`); `UsageError` naming a bad one."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise UsageError(f"{what} {pair!r} must look like KEY=VALUE")
        out[key] = json_or_text(value)
    return out


def show(value: Any) -> str:
    """A value as a terminal line: text as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
