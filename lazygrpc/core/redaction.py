"""What an error chain may show a caller it does not trust (docs/errors.md "Redaction by trust").

A server trusts a caller on loopback (`is_loopback_peer`) unless told otherwise. To a caller
it does not trust it sends no traceback, host name or pid in any frame (its own or those it
relays from below), no text of an exception it did not mean to expose (a plain internal
error), and the messages of the frames from below reduced by its `redact` mode:

    short   the first line of each message, at most `SHORT_MESSAGE_CHARS` characters
    drop    no message at all (frames keep their service, method and error type)
"""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import unquote

import grpc

from lazygrpc.core.errors import RemoteError, StatusError
from lazygrpc.v1 import chain_pb2

Redact = Literal["short", "drop"]
REDACT_MODES: tuple[Redact, ...] = ("short", "drop")
SHORT_MESSAGE_CHARS = 80
#: The status message an untrusted caller gets for an exception not meant to be shown.
PLAIN_INTERNAL = "internal error"


def is_loopback_peer(peer: str) -> bool:
    """Whether a grpc peer string (`context.peer()`) is this host: `ipv4:127.x.x.x:port`,
    `ipv6:[::1]:port` (or an IPv4-mapped loopback), or a unix socket. grpc writes peers as
    URIs: the brackets may come percent-encoded (`ipv6:%5B::1%5D:port`)."""
    kind, _, rest = peer.partition(":")
    if "%" in rest:
        rest = unquote(rest)
    if kind in ("unix", "unix-abstract"):
        return True
    if kind == "ipv4":
        host = rest.rpartition(":")[0]
    elif kind == "ipv6":
        host = rest[1:].partition("]")[0] if rest.startswith("[") else rest
    else:
        return False
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def check_mode(redact: str) -> Redact:
    """`redact` if it is a mode (`REDACT_MODES`), else `ValueError` naming it."""
    for mode in REDACT_MODES:
        if redact == mode:
            return mode
    raise ValueError(f"redact={redact!r}: expected one of {', '.join(REDACT_MODES)}")


def exposed(exc: BaseException) -> bool:
    """Whether an exception's text was meant for the caller: a `StatusError` raised on
    purpose, or a `RemoteError` relayed from below (redacted by frame)."""
    return isinstance(exc, StatusError | RemoteError)


def short(message: str) -> str:
    """The first line of `message`, at most `SHORT_MESSAGE_CHARS` characters."""
    line = message.strip().partition("\n")[0]
    if len(line) > SHORT_MESSAGE_CHARS:
        return line[: SHORT_MESSAGE_CHARS - 1] + "…"
    return line


def redact_chain(chain: chain_pb2.CallChain, exc: BaseException, mode: Redact) -> None:
    """Redact `chain` (this hop's frame first, for `exc`) for a caller not trusted."""
    for i, frame in enumerate(chain.frames):
        frame.host = ""
        frame.pid = 0
        frame.traceback = ""
        if i == 0 and isinstance(exc, StatusError):
            continue  # this hop's deliberate answer, meant for the caller
        if i == 0 and not exposed(exc):
            frame.message = ""
        else:
            frame.message = short(frame.message) if mode == "short" else ""


def status_line(exc: BaseException, message: str, mode: Redact, code: grpc.StatusCode) -> str:
    """The status line message for a caller not trusted, from the one a trusted caller
    would read; `code` is the status the call ends with."""
    if isinstance(exc, StatusError):
        return message
    if isinstance(exc, RemoteError):
        if mode == "short":
            return short(message)
        return f"{exc.remote_type or exc.code.name} (details withheld)"
    if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
        return PLAIN_INTERNAL
    name: str = code.name
    return name.lower().replace("_", " ")  # e.g. a TimeoutError: "deadline exceeded"
