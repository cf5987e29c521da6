"""lazygrpc: a gRPC service-mesh toolkit for model services.

Sessions and globals that follow every hop, streams fed by a bounded broker with end-to-end
backpressure, and exception chains from the entry to the failing service. The layers are
drawn in docs/architecture.md.
"""

from lazygrpc.broker import BrokerStats, aemit, emit
from lazygrpc.broker import stats as broker_stats
from lazygrpc.client.interceptors import (
    ClientInterceptor,
    aio_client_interceptors,
    intercept_aio_channel,
    intercept_channel,
)
from lazygrpc.client.llm import LLM
from lazygrpc.client.remote import RemoteModule, connect
from lazygrpc.core.chain import remote_error_from_rpc
from lazygrpc.core.context import ThreadPoolExecutor, globals, in_context, session, session_id
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
    Unavailable,
)
from lazygrpc.core.events import Event
from lazygrpc.core.session import Session
from lazygrpc.server.builder import Server
from lazygrpc.server.interceptors import (
    AioServerInterceptor,
    ServerInterceptor,
    server_interceptors,
)
from lazygrpc.server.model import ModelConfig
from lazygrpc.version import __version__ as __version__

__all__ = [
    "LLM",
    "AioServerInterceptor",
    "BrokerStats",
    "ClientInterceptor",
    "DeadlineExceeded",
    "Event",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "LazyGrpcError",
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
    "ThreadPoolExecutor",
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
]
