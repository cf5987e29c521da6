"""What a `Server` hands grpc: one generic handler for all its services, and health."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2


class Health(health.aio.HealthServicer):  # type: ignore[misc]
    """grpcio-health-checking's servicer with `List`, which its aio servicer leaves
    unimplemented (UNIMPLEMENTED) although reflection shows it."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        """Implementation of grpc.health.v1.Health; not part of the lazygrpc API."""
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._server_status.items()
            }
        )


class Handlers(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Every handler of a `Server`, wrapped once, in one dict that grpc reads per call.

    It stands in for the server in `add_XServicer_to_server`, which registers each service
    twice: as a generic handler and by `add_registered_method_handlers`. Handlers reach grpc
    only as this one generic handler: on grpc.aio (1.85) each method registered with grpc
    itself costs every call the server takes some instructions, whichever service it is for
    (docs/performance.md, "One generic handler"); a generic lookup is one dict access.
    """

    def __init__(self, wrap: Any) -> None:
        self._wrap = wrap
        self._methods: dict[str, Any] = {}
        self._generic: list[Any] = []  # the same services' generic handlers, and others'

    def service(self, handler_call_details: Any) -> Any:
        """Implementation of grpc.GenericRpcHandler; not part of the lazygrpc API."""
        method = handler_call_details.method
        handler = self._methods.get(method)
        if handler is None:
            for generic in self._generic:
                found = generic.service(handler_call_details)
                if found is not None:
                    handler = self._methods[method] = self._wrap(method, found)
                    break
        return handler

    def add_generic_rpc_handlers(self, generic_handlers: Any) -> None:
        """What `add_XServicer_to_server` calls; not part of the lazygrpc API."""
        self._generic.extend(generic_handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        """What `add_XServicer_to_server` calls; not part of the lazygrpc API."""
        for name, handler in handlers.items():
            full_method = f"/{service}/{name}"
            if full_method not in self._methods:
                self._methods[full_method] = self._wrap(full_method, handler)
