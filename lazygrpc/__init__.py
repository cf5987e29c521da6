"""lazygrpc: a gRPC service-mesh toolkit for model services.

Sessions and globals that follow every hop, streams fed by a bounded broker with end-to-end
backpressure, and exception chains from the entry to the failing service.
"""

from lazygrpc.broker import BrokerStats, aemit, emit
from lazygrpc.broker import stats as broker_stats
from lazygrpc.chain import remote_error_from_rpc
from lazygrpc.client import LLM, Event, RemoteModule, connect
from lazygrpc.client_interceptors import (
    ClientInterceptor,
    aio_client_interceptors,
    intercept_aio_channel,
    intercept_channel,
)
from lazygrpc.errors import (
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
from lazygrpc.model import ModelConfig
from lazygrpc.server import Server
from lazygrpc.server_interceptors import (
    AioServerInterceptor,
    ServerInterceptor,
    server_interceptors,
)
from lazygrpc.session import Session, ThreadPoolExecutor, globals, in_context, session, session_id

__version__ = "0.1.0"

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
