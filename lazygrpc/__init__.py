"""lazygrpc: a gRPC service-mesh toolkit for model services.

Sessions and globals that follow every hop, streams fed by a bounded broker with end-to-end
backpressure, and exception chains from the entry to the failing service. The layers are
drawn in docs/architecture.md.

The names below load with the layer that defines them, when first used: `import lazygrpc`
and the client side alone never load the server, and no layer's import runs through this
one (PEP 562).
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from lazygrpc.version import __version__ as __version__

#: Each public name and the module that defines it (`broker_stats` is `broker.stats`).
_EXPORTS = {
    "AioServerInterceptor": "lazygrpc.server.interceptors",
    "BearerToken": "lazygrpc.server.security",
    "BrokerStats": "lazygrpc.broker",
    "ChannelPolicy": "lazygrpc.client.service_config",
    "ClientInterceptor": "lazygrpc.client.interceptors",
    "ClientTLS": "lazygrpc.client.tls",
    "DeadlineExceeded": "lazygrpc.core.errors",
    "Edge": "lazygrpc.edge.app",
    "Event": "lazygrpc.core.events",
    "FailedPrecondition": "lazygrpc.core.errors",
    "GlobalsPolicy": "lazygrpc.core.trust",
    "Internal": "lazygrpc.core.errors",
    "InvalidArgument": "lazygrpc.core.errors",
    "LLM": "lazygrpc.client.llm",
    "Limits": "lazygrpc.server.admission",
    "LazyGrpcError": "lazygrpc.core.errors",
    "ModelConfig": "lazygrpc.server.model",
    "NotFound": "lazygrpc.core.errors",
    "PermissionDenied": "lazygrpc.core.errors",
    "RemoteError": "lazygrpc.core.errors",
    "RemoteModule": "lazygrpc.client.remote",
    "ResourceExhausted": "lazygrpc.core.errors",
    "Server": "lazygrpc.server.builder",
    "ServerInterceptor": "lazygrpc.server.interceptors",
    "Session": "lazygrpc.core.session",
    "StatusError": "lazygrpc.core.errors",
    "StreamClosed": "lazygrpc.core.errors",
    "TLSConfig": "lazygrpc.server.security",
    "ThreadPoolExecutor": "lazygrpc.core.context",
    "Unauthenticated": "lazygrpc.core.errors",
    "Unavailable": "lazygrpc.core.errors",
    "aemit": "lazygrpc.broker",
    "aio_client_interceptors": "lazygrpc.client.interceptors",
    "broker_stats": "lazygrpc.broker",
    "connect": "lazygrpc.client.remote",
    "emit": "lazygrpc.broker",
    "globals": "lazygrpc.core.context",
    "in_context": "lazygrpc.core.context",
    "intercept_aio_channel": "lazygrpc.client.interceptors",
    "intercept_channel": "lazygrpc.client.interceptors",
    "remote_error_from_rpc": "lazygrpc.core.chain",
    "server_interceptors": "lazygrpc.server.interceptors",
    "session": "lazygrpc.core.context",
    "session_id": "lazygrpc.core.context",
    "set_client_tls": "lazygrpc.client.tls",
    "set_token": "lazygrpc.client.credentials",
}
_RENAMED = {"broker_stats": "stats"}
_LAYERS = (
    "backends",
    "broker",
    "cli",
    "client",
    "core",
    "demo",
    "edge",
    "server",
    "telemetry",
    "v1",
)

__all__ = [
    "LLM",
    "AioServerInterceptor",
    "BearerToken",
    "BrokerStats",
    "ChannelPolicy",
    "ClientInterceptor",
    "ClientTLS",
    "DeadlineExceeded",
    "Edge",
    "Event",
    "FailedPrecondition",
    "GlobalsPolicy",
    "Internal",
    "InvalidArgument",
    "LazyGrpcError",
    "Limits",
    "ModelConfig",
    "NotFound",
    "PermissionDenied",
    "RemoteError",
    "RemoteModule",
    "ResourceExhausted",
    "Server",
    "ServerInterceptor",
    "Session",
    "StatusError",
    "StreamClosed",
    "TLSConfig",
    "ThreadPoolExecutor",
    "Unauthenticated",
    "Unavailable",
    "aemit",
    "aio_client_interceptors",
    "broker_stats",
    "connect",
    "emit",
    "globals",
    "in_context",
    "intercept_aio_channel",
    "intercept_channel",
    "remote_error_from_rpc",
    "server_interceptors",
    "session",
    "session_id",
    "set_client_tls",
    "set_token",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    elif name in _LAYERS:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _namespace[name] = value  # loaded once
    return value


def __dir__() -> list[str]:
    return sorted({*_namespace, *__all__})


#: This module's namespace (its public `globals` is the session mapping, not the builtin).
_namespace = sys.modules[__name__].__dict__


if TYPE_CHECKING:
    from lazygrpc.broker import BrokerStats, aemit, emit
    from lazygrpc.broker import stats as broker_stats
    from lazygrpc.client.credentials import set_token
    from lazygrpc.client.interceptors import (
        ClientInterceptor,
        aio_client_interceptors,
        intercept_aio_channel,
        intercept_channel,
    )
    from lazygrpc.client.llm import LLM
    from lazygrpc.client.remote import RemoteModule, connect
    from lazygrpc.client.service_config import ChannelPolicy
    from lazygrpc.client.tls import ClientTLS, set_client_tls
    from lazygrpc.core.chain import remote_error_from_rpc
    from lazygrpc.core.context import (
        ThreadPoolExecutor,
        globals,
        in_context,
        session,
        session_id,
    )
    from lazygrpc.core.errors import (
        DeadlineExceeded,
        FailedPrecondition,
        Internal,
        InvalidArgument,
        LazyGrpcError,
        NotFound,
        PermissionDenied,
        RemoteError,
        ResourceExhausted,
        StatusError,
        StreamClosed,
        Unauthenticated,
        Unavailable,
    )
    from lazygrpc.core.events import Event
    from lazygrpc.core.session import Session
    from lazygrpc.core.trust import GlobalsPolicy
    from lazygrpc.edge.app import Edge
    from lazygrpc.server.admission import Limits
    from lazygrpc.server.builder import Server
    from lazygrpc.server.interceptors import (
        AioServerInterceptor,
        ServerInterceptor,
        server_interceptors,
    )
    from lazygrpc.server.model import ModelConfig
    from lazygrpc.server.security import BearerToken, TLSConfig
