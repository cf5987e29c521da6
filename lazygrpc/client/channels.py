"""URLs, channel options, and the shared channels lazygrpc opens (one per target and loop)."""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import grpc
import grpc.aio

from lazygrpc.client.service_config import DEFAULT_POLICY, ChannelPolicy
from lazygrpc.client.tls import TLS_PREFIX, channel_credentials


def channel_options(lookahead_bytes: int = 256 << 10) -> list[tuple[str, Any]]:
    """Options of the channels lazygrpc opens between hops.

    BDP probing off keeps each stream's HTTP/2 window at `lookahead_bytes`, so a relay hop
    holds a bounded amount per stream instead of growing to ~4-6 MB (docs/streaming.md).
    """
    return [
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", lookahead_bytes),
        ("grpc.max_metadata_size", 32 << 10),
        ("grpc.absolute_max_metadata_size", 64 << 10),
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 16 << 20),
        ("grpc.so_reuseport", 0),
        # A replica back from a restart or a broken link is connected again within 5 s
        # (grpc's default backoff grows to 120 s).
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]


class Endpoint(NamedTuple):
    """What a lazygrpc URL names: the grpc target, the module (or ""), the channel policy."""

    target: str
    module: str
    policy: ChannelPolicy


def parse_url(url: str) -> tuple[str, str]:
    """`grpc://host:port/module` → (`host:port`, `module`); `ValueError` names a bad URL.

    A `grpcs://` (TLS) URL keeps its scheme in the target: `grpcs://host:port`."""
    endpoint = parse_endpoint(url)
    return endpoint.target, endpoint.module


def parse_endpoint(url: str, policy: ChannelPolicy | None = None) -> Endpoint:
    """A URL's target, module and channel policy (`policy` with the URL's query applied).

    Forms: `grpc://HOST:PORT[/MODULE]`, `dns:///HOST:PORT[/MODULE]` (every address the
    name resolves to), `ipv4:A:P,B:Q[/MODULE]` / `ipv6:[A]:P,…` (a replica set by address);
    each may end in `?lb=pick_first|round_robin&health=0|1&idempotent=0|1&attempts=N`.
    """
    if not isinstance(url, str):
        raise ValueError(f"invalid lazygrpc URL {url!r}: expected a string")
    base = policy or DEFAULT_POLICY
    rest, _, query = url.partition("?")
    if query:
        base = base.with_query(query, url)
    for scheme in ("dns:///", "ipv4:", "ipv6:"):
        if rest.startswith(scheme):
            target, _, module = rest[len(scheme) :].partition("/")
            if not target:
                raise ValueError(f"invalid lazygrpc URL {url!r}: no address after {scheme}")
            return Endpoint(f"{scheme}{target}", _module(url, module), base)
    parts = urlsplit(rest)
    if parts.scheme not in ("grpc", "grpcs"):
        raise ValueError(
            f"invalid lazygrpc URL {url!r}: expected grpc://HOST:PORT[/MODULE], "
            "grpcs://HOST:PORT[/MODULE] (TLS), dns:///HOST:PORT or ipv4:HOST:PORT,HOST:PORT"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid lazygrpc URL {url!r}: port is not a number in 1-65535") from None
    if not parts.hostname or port is None or port == 0:
        raise ValueError(f"invalid lazygrpc URL {url!r}: needs a host and a port")
    if parts.fragment:
        raise ValueError(f"invalid lazygrpc URL {url!r}: unexpected fragment")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    prefix = TLS_PREFIX if parts.scheme == "grpcs" else ""
    return Endpoint(f"{prefix}{host}:{port}", _module(url, parts.path.strip("/")), base)


def _module(url: str, module: str) -> str:
    if "/" in module:
        raise ValueError(f"invalid lazygrpc URL {url!r}: module name {module!r} contains '/'")
    return module


def options_for(target: str, policy: ChannelPolicy = DEFAULT_POLICY) -> list[tuple[str, Any]]:
    """`channel_options()` plus the service config `policy` gives a channel to `target`."""
    return [
        *channel_options(),
        *policy.keepalive_options(target),
        ("grpc.service_config", policy.service_config(target)),
    ]


_lock = threading.Lock()
_sync: dict[tuple[str, ChannelPolicy], grpc.Channel] = {}
_stubs: dict[tuple[Any, str, ChannelPolicy], Any] = {}


class _LoopShare:
    """The asyncio channels and stubs of one event loop."""

    __slots__ = ("channels", "stubs")

    def __init__(self) -> None:
        self.channels: dict[tuple[str, ChannelPolicy], grpc.aio.Channel] = {}
        self.stubs: dict[tuple[Any, str, ChannelPolicy], Any] = {}


#: Per event loop, by the loop's id, with a weak reference that tells a live loop from a
#: gone one whose id was reused: a lookup is a dict access and a call, where a
#: WeakKeyDictionary runs Python code and makes a reference on every call.
_loops: dict[int, tuple[weakref.ref[asyncio.AbstractEventLoop], _LoopShare]] = {}


def _share(loop: asyncio.AbstractEventLoop) -> _LoopShare:
    entry = _loops.get(id(loop))
    if entry is not None and entry[0]() is loop:
        return entry[1]
    key = id(loop)

    def gone(ref: weakref.ref[asyncio.AbstractEventLoop]) -> None:
        # No lock: this runs in the garbage collector, maybe while this thread holds it.
        # The loop's memory is not free yet, so no new loop can have its id.
        if _loops.get(key, (None,))[0] is ref:
            _loops.pop(key, None)

    with _lock:
        share = _LoopShare()
        _loops[key] = (weakref.ref(loop, gone), share)
        return share


def open_channel(target: str, policy: ChannelPolicy = DEFAULT_POLICY, *, aio: bool = False) -> Any:
    """A new channel to `target` (from `parse_url`) with lazygrpc's options, `policy`'s
    service config and the security `channel_credentials` chooses for it: TLS for
    `grpcs://` targets, else plaintext."""
    address, credentials, extra = channel_credentials(target)
    options = [*options_for(address, policy), *extra]
    if credentials is None:
        if aio:
            return grpc.aio.insecure_channel(address, options=options)
        return grpc.insecure_channel(address, options)
    if aio:
        return grpc.aio.secure_channel(address, credentials, options=options)
    return grpc.secure_channel(address, credentials, options)


def sync_channel(target: str, policy: ChannelPolicy = DEFAULT_POLICY) -> grpc.Channel:
    """The shared sync channel for `target` (lazygrpc's clients add metadata themselves)."""
    key = (target, policy)
    with _lock:
        ch = _sync.get(key)
        if ch is None:
            ch = _sync[key] = open_channel(target, policy)
        return ch


def aio_channel(target: str, policy: ChannelPolicy = DEFAULT_POLICY) -> grpc.aio.Channel:
    """The shared asyncio channel for `target` on the running event loop."""
    share = _share(asyncio.get_running_loop())
    key = (target, policy)
    with _lock:
        ch = share.channels.get(key)
        if ch is None:
            ch = share.channels[key] = open_channel(target, policy, aio=True)
        return ch


def close_all() -> None:
    """Close the shared sync channels (asyncio ones close with their loop)."""
    with _lock:
        channels = list(_sync.values())
        _sync.clear()
        _stubs.clear()
    for ch in channels:
        ch.close()


async def aclose_all() -> None:
    """Close the shared asyncio channels of the running loop."""
    share = _share(asyncio.get_running_loop())
    with _lock:
        channels = list(share.channels.values())
        share.channels.clear()
        share.stubs.clear()
    for ch in channels:
        await ch.close()


def stub(cls: Any, target: str, policy: ChannelPolicy = DEFAULT_POLICY) -> Any:
    """A cached stub of `cls` on the shared sync channel for `target`."""
    key = (cls, target, policy)
    s = _stubs.get(key)
    if s is None:
        s = _stubs[key] = cls(sync_channel(target, policy))
    return s


def astub(cls: Any, target: str, policy: ChannelPolicy = DEFAULT_POLICY) -> Any:
    """A cached stub of `cls` on the running loop's shared channel for `target`."""
    stubs = _share(asyncio.get_running_loop()).stubs
    key = (cls, target, policy)
    s = stubs.get(key)
    if s is None:
        s = stubs[key] = cls(aio_channel(target, policy))
    return s
