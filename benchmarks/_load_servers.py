"""Servers of the load benchmark (`bench_load.py`), one process per hop:
`python -m benchmarks._load_servers KIND ...` prints `listening on HOST:PORT` once serving.

Every leaf is the same paced producer (`_pace.paced`: token k due at start + k * pace), the
stream's input the kwargs `n` (tokens) and `pace` (seconds a token).

lazygrpc (the documented API only, so the figures are whatever lazygrpc does):
  lazy-leaf                `Server().add_modules({"tokens": paced})`
  lazy-gateway --leaf URL [--model URL]
                           module `relay`: `async for ev in connect(leaf).astream(...): yield ev`;
                           with --model, module `llm`: `async for d in LLM(model).astream(p):
                           yield d` (the prompt says `n pace`)
  lazy-model               `Server().add_model(...)` of a backend yielding the paced tokens
bare grpcio (hand-written grpc.aio servicers of the same ModuleService proto):
  bare-leaf                `Stream` yields one `Event` per token, then the result
  bare-gateway --leaf HOST:PORT
                           `Stream` reads the leaf's `Stream` and yields a new `Event` per
                           message (decode and re-encode, as hand-written relays do)
  floor-gateway --leaf HOST:PORT
                           the least a grpc.aio relay can do per token: the leaf's events read
                           as bytes (`call.read()`) and written on as they came
                           (`context.write`), no decoding, no Python between them
"""

from __future__ import annotations

import argparse
import resource
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from google.protobuf import struct_pb2

from benchmarks._pace import paced
from benchmarks._servers import run_server, serve_bare, serve_lazy
from lazygrpc.v1 import module_pb2, module_pb2_grpc


def raise_nofile() -> None:
    """Lift this process's open-file limit to its hard limit (1024 streams, many sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def stream_args(request: module_pb2.CallRequest) -> tuple[int, float]:
    fields = request.kwargs.fields
    return int(fields["n"].number_value), fields["pace"].number_value


# -- bare grpcio -----------------------------------------------------------------------------


class BareLeaf(module_pb2_grpc.ModuleServiceServicer):
    async def Stream(
        self, request: module_pb2.CallRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[module_pb2.Event]:
        n, pace = stream_args(request)
        seq = 0
        async for token in paced(n, pace):
            yield module_pb2.Event(
                seq=seq, source="tokens", delta=struct_pb2.Value(string_value=token)
            )
            seq += 1
        yield module_pb2.Event(seq=seq, source="tokens", result=struct_pb2.Value(number_value=n))


class BareGateway(module_pb2_grpc.ModuleServiceServicer):
    def __init__(self, leaf: str) -> None:
        self.leaf = leaf
        self._stub: Any = None

    async def Stream(
        self, request: module_pb2.CallRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[module_pb2.Event]:
        if self._stub is None:  # made on the server's loop
            self._stub = module_pb2_grpc.ModuleServiceStub(grpc.aio.insecure_channel(self.leaf))
        below = module_pb2.CallRequest(module="tokens", kwargs=request.kwargs)
        seq = 0
        async for ev in self._stub.Stream(below):
            if ev.HasField("delta"):
                yield module_pb2.Event(seq=seq, source="relay", delta=ev.delta)
            else:
                yield module_pb2.Event(seq=seq, source="relay", result=ev.result)
            seq += 1


def floor_gateway(leaf: str) -> grpc.GenericRpcHandler:
    """`ModuleService.Stream` relayed as bytes, with nothing else: grpc.aio's own floor."""
    stub: list[Any] = []

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> None:
        if not stub:  # made on the server's loop
            channel = grpc.aio.insecure_channel(leaf)
            stub.append(channel.unary_stream("/lazygrpc.v1.ModuleService/Stream"))
        below = module_pb2.CallRequest.FromString(request)
        below.module = "tokens"
        call = stub[0](below.SerializeToString())
        while (event := await call.read()) is not grpc.aio.EOF:
            await context.write(event)

    handler = grpc.unary_stream_rpc_method_handler(stream)  # bytes in, bytes out
    return grpc.method_handlers_generic_handler("lazygrpc.v1.ModuleService", {"Stream": handler})


# -- lazygrpc --------------------------------------------------------------------------------


def lazy_gateway(leaf_url: str, model_url: str | None) -> dict[str, Any]:
    from lazygrpc import LLM, connect

    leaf = connect(f"{leaf_url}/tokens")

    async def relay(n: int, pace: float) -> AsyncIterator[Any]:
        """A gateway relaying a module's stream, as the docs show it."""
        async for ev in leaf.astream(n=n, pace=pace):
            yield ev

    modules: dict[str, Any] = {"relay": relay}
    if model_url:
        llm = LLM(model_url)

        async def relay_llm(n: int, pace: float) -> AsyncIterator[str]:
            """A gateway relaying a model's deltas."""
            async for delta in llm.astream(f"{n} {pace}"):
                yield delta

        modules["llm"] = relay_llm
    return modules


class PacedBackend:
    """A model backend whose prompt `"n pace"` asks for `n` paced tokens."""

    name = "paced"

    def count_tokens(self, text: str) -> int:
        return 2

    async def generate(self, prompt: str, params: Any) -> AsyncIterator[str]:
        n, pace = prompt.split()
        async for token in paced(int(n), float(pace)):
            yield token


def _add_generic(handler: grpc.GenericRpcHandler, server: Any) -> None:
    server.add_generic_rpc_handlers((handler,))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind")
    p.add_argument("--leaf", default="", help="the hop below (lazy: URL, bare: HOST:PORT)")
    p.add_argument("--model", default=None, help="lazy-gateway: a model server's URL")
    a = p.parse_args()
    raise_nofile()
    if a.kind == "lazy-leaf":
        coro = serve_lazy({"tokens": paced})
    elif a.kind == "lazy-gateway":
        coro = serve_lazy(lazy_gateway(a.leaf, a.model))
    elif a.kind == "lazy-model":
        coro = serve_lazy(model=True, backend=PacedBackend())
    elif a.kind in ("bare-leaf", "bare-gateway"):
        servicer = BareLeaf() if a.kind == "bare-leaf" else BareGateway(a.leaf)
        coro = serve_bare(servicer, module_pb2_grpc.add_ModuleServiceServicer_to_server, [])
    elif a.kind == "floor-gateway":
        coro = serve_bare(floor_gateway(a.leaf), _add_generic, [])
    else:
        raise SystemExit(f"unknown server kind {a.kind!r}")
    run_server(coro)


if __name__ == "__main__":
    main()
