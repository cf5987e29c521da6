"""URLs, channel options, and the shared channels lazygrpc opens (one per target and loop)."""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any
from urllib.parse import urlsplit

import grpc
import grpc.aio


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
    ]


def parse_url(url: str) -> tuple[str, str]:
    """`grpc://host:port/module` → (`host:port`, `module`); `ValueError` names a bad URL."""
    if not isinstance(url, str):
        raise ValueError(f"invalid lazygrpc URL {url!r}: expected a string")
    if url.startswith("dns:///"):
        target, _, module = url[len("dns:///") :].partition("/")
        if not target:
            raise ValueError(f"invalid lazygrpc URL {url!r}: no host after dns:///")
        return f"dns:///{target}", module
    parts = urlsplit(url)
    if parts.scheme != "grpc":
        raise ValueError(
            f"invalid lazygrpc URL {url!r}: expected grpc://HOST:PORT[/MODULE] or dns:///HOST:PORT"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid lazygrpc URL {url!r}: port is not a number in 1-65535") from None
    if not parts.hostname or port is None or port == 0:
        raise ValueError(f"invalid lazygrpc URL {url!r}: needs a host and a port")
    if parts.query or parts.fragment:
        raise ValueError(f"invalid lazygrpc URL {url!r}: unexpected query or fragment")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    module = parts.path.strip("/")
    if "/" in module:
        raise ValueError(f"invalid lazygrpc URL {url!r}: module name {module!r} contains '/'")
    return f"{host}:{port}", module


_lock = threading.Lock()
_sync: dict[str, grpc.Channel] = {}
_aio: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, grpc.aio.Channel]] = (
    weakref.WeakKeyDictionary()
)


def sync_channel(target: str) -> grpc.Channel:
    """The shared sync channel for `target` (lazygrpc's clients add metadata themselves)."""
    with _lock:
        ch = _sync.get(target)
        if ch is None:
            ch = _sync[target] = grpc.insecure_channel(target, channel_options())
        return ch


def aio_channel(target: str) -> grpc.aio.Channel:
    """The shared asyncio channel for `target` on the running event loop."""
    loop = asyncio.get_running_loop()
    with _lock:
        per_loop = _aio.setdefault(loop, {})
        ch = per_loop.get(target)
        if ch is None:
            ch = per_loop[target] = grpc.aio.insecure_channel(target, options=channel_options())
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
    loop = asyncio.get_running_loop()
    with _lock:
        channels = list(_aio.pop(loop, {}).values())
        _astubs.pop(loop, None)
    for ch in channels:
        await ch.close()


_stubs: dict[tuple[Any, str], Any] = {}
_astubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, str], Any]] = (
    weakref.WeakKeyDictionary()
)


def stub(cls: Any, target: str) -> Any:
    """A cached stub of `cls` on the shared sync channel for `target`."""
    key = (cls, target)
    s = _stubs.get(key)
    if s is None:
        s = _stubs[key] = cls(sync_channel(target))
    return s


def astub(cls: Any, target: str) -> Any:
    """A cached stub of `cls` on the running loop's shared channel for `target`."""
    per_loop = _astubs.setdefault(asyncio.get_running_loop(), {})
    key = (cls, target)
    s = per_loop.get(key)
    if s is None:
        s = per_loop[key] = cls(aio_channel(target))
    return s
