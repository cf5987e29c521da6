"""Benchmark servers, each run in its own process: `python -m benchmarks._servers KIND ...`.

Prints `listening on HOST:PORT` once serving, like `python -m lazygrpc serve`.

Bare grpcio (hand-written servicers on the same protos, no lazygrpc code on the call path):
  bare-modules [--model HOST:PORT] [--interceptors | --noop-interceptors]
      ModuleService: `Call` echoes its input; `Stream` module "tokens" yields N one-token
      deltas (N = the input number), module "relay" relays `Generate` of the bare model server
      at --model, one message per token. --interceptors adds lazygrpc's server interceptors
      (only used by bench_interceptors); --noop-interceptors adds one that does nothing,
      to show what grpc's own interceptor machinery costs.
  bare-model
      ModelService `Generate`: the echo backend's tokens, one chunk per token.

lazygrpc (public API only):
  lazy-model              `Server().add_model(ModelConfig(make_backend("echo", token_delay=0)))`
  lazy-modules [--model URL]   modules `echo`, `tokens` (async generator) and `relay`, a
                          gateway that streams `LLM(--model).astream(x)`
  lazy-hop --prefix P --downstream URL   `hop(x, ...)` forwards hop below's deltas for P + x
  lazy-hop3               `tokens(x)`: the LazyLLM harness's hop-3 producer (sync generator)

`--log-level LEVEL` configures logging as the `lazygrpc` command does (`off`: none at all).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

import grpc
import grpc.aio
from google.protobuf import struct_pb2

import lazygrpc
from lazygrpc.backends.echo import split_tokens
from lazygrpc.v1 import model_pb2, model_pb2_grpc, module_pb2, module_pb2_grpc

#: Presets of the benchmark model: enough tokens for the 100k-token stream.
MAX_TOKENS = 1_000_000


def token_prompt(n: int) -> str:
    """A prompt the echo backend streams back as exactly `n` tokens ('t', ' t', ...)."""
    return ("t " * n).strip()


def prompt_chars(n: int) -> int:
    return max(2 * n - 1, 0)


# -- bare grpcio -----------------------------------------------------------------------------


class BareModules(module_pb2_grpc.ModuleServiceServicer):
    def __init__(self, model: str | None = None) -> None:
        self.model = model
        self._stub: Any = None

    async def Call(
        self, request: module_pb2.CallRequest, context: grpc.aio.ServicerContext
    ) -> module_pb2.CallResponse:
        return module_pb2.CallResponse(output=request.input)

    async def Stream(
        self, request: module_pb2.CallRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[module_pb2.Event]:
        seq = 0
        if request.module == "relay":
            if self._stub is None:
                assert self.model, "relay needs --model"
                self._stub = model_pb2_grpc.ModelServiceStub(grpc.aio.insecure_channel(self.model))
            text = request.input.string_value
            parts = []
            async for chunk in self._stub.Generate(model_pb2.GenerateRequest(input=text)):
                if chunk.text:
                    parts.append(chunk.text)
                    yield module_pb2.Event(
                        seq=seq, source="relay", delta=struct_pb2.Value(string_value=chunk.text)
                    )
                    seq += 1
            result = struct_pb2.Value(string_value="".join(parts))
        else:
            n = int(request.input.number_value)
            for _ in range(n):
                yield module_pb2.Event(
                    seq=seq, source="tokens", delta=struct_pb2.Value(string_value="t")
                )
                seq += 1
            result = struct_pb2.Value(number_value=n)
        yield module_pb2.Event(seq=seq, source=request.module, result=result)


class BareModel(model_pb2_grpc.ModelServiceServicer):
    async def Generate(
        self, request: model_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[model_pb2.GenerateChunk]:
        i = 0
        for i, token in enumerate(split_tokens(request.input)):
            yield model_pb2.GenerateChunk(text=token, index=i, source="echo")
        yield model_pb2.GenerateChunk(
            index=i + 1, source="echo", finish_reason=model_pb2.FINISH_REASON_STOP
        )


class NoopServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Does nothing: what any grpc.aio server interceptor costs."""

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        return await continuation(handler_call_details)


async def serve_bare(servicer: Any, add: Any, interceptors: list[Any]) -> None:
    server = grpc.aio.server(interceptors=interceptors)
    add(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


# -- lazygrpc --------------------------------------------------------------------------------


def make_lazy_modules(model_url: str | None) -> dict[str, Any]:
    from lazygrpc import LLM

    def echo(x: Any) -> Any:
        return x

    async def aecho(x: Any) -> Any:
        return x

    async def tokens(n: int) -> AsyncIterator[str]:
        for _ in range(int(n)):
            yield "t"

    llm = LLM(model_url) if model_url else None

    async def relay(prompt: str) -> AsyncIterator[str]:
        """A gateway: the model's deltas, as they come."""
        assert llm is not None, "relay needs --model"
        async for delta in llm.astream(prompt):
            yield delta

    return {"echo": echo, "aecho": aecho, "tokens": tokens, "relay": relay}


def make_hop(prefix: str, downstream: str) -> dict[str, Any]:
    """hop1/hop2 of the three-hop pipeline: add a prefix, forward what the hop below streams."""
    from lazygrpc import connect

    below = connect(downstream)

    async def hop(x: str) -> AsyncIterator[Any]:
        async for ev in below.astream(prefix + x):
            if ev.kind == "delta":
                yield ev.value

    return {"hop": hop}


def hop3_tokens(x: str) -> Iterator[str]:
    """hop 3: the LazyLLM harness's producer. Input 'h2|h1|<n>|<stopfile or ->'.

    Its `finally` records wall-clock time in <stopfile>: cancel-to-stop is measured there.
    """
    parts = x.split("|")
    n, stopfile = int(parts[-2]), parts[-1]
    produced, reason = 0, "finished"
    try:
        for i in range(n):
            yield f"t{i} "
            produced += 1
    except GeneratorExit:
        reason = "closed (GeneratorExit)"
        raise
    except BaseException as e:
        reason = f"error: {type(e).__name__}"
        raise
    finally:
        if stopfile != "-":
            with open(stopfile, "w") as f:
                f.write(json.dumps({"t": time.time(), "produced": produced, "reason": reason}))


async def serve_lazy(
    modules: dict[str, Any] | None = None, model: bool = False, backend: Any = None
) -> None:
    """`modules` and, with `model`, a model server of `backend` (default: echo, no delay)."""
    from lazygrpc import Server
    from lazygrpc.backends import make_backend
    from lazygrpc.backends.base import SamplingParams
    from lazygrpc.server.model import ModelConfig

    server = Server(name="bench")
    if model:
        server.add_model(
            ModelConfig(
                backend or make_backend("echo", token_delay=0),
                presets=SamplingParams(max_tokens=MAX_TOKENS),
            )
        )
    if modules:
        server.add_modules(modules)
    port = await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await server.wait()


async def serve_wrapped(servicer: Any, metrics: bool = False) -> None:
    """The hand-written servicer on `lazygrpc.Server`: lazygrpc's layer wraps its handlers
    (and Prometheus metrics' hooks with `metrics`)."""
    server = lazygrpc.Server(name="bench", metrics_port=0 if metrics else None)
    server.add_service(
        "lazygrpc.v1.ModuleService", module_pb2_grpc.add_ModuleServiceServicer_to_server, servicer
    )
    port = await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await server.wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind")
    p.add_argument("--model", help="downstream model server (bare: HOST:PORT, lazy: URL)")
    p.add_argument("--interceptors", action="store_true")
    p.add_argument("--noop-interceptors", action="store_true")
    p.add_argument(
        "--wrapped", action="store_true", help="bare-modules on lazygrpc.Server (its own layer)"
    )
    p.add_argument("--metrics", action="store_true", help="--wrapped with metrics on")
    p.add_argument("--prefix", default="")
    p.add_argument("--downstream", default="")
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error", "off"],
        help="configure logging as the CLI does (off: logging.disable); default: untouched",
    )
    a = p.parse_args()
    if a.log_level == "off":
        import logging

        logging.disable(logging.CRITICAL)
    elif a.log_level:
        from lazygrpc import logs

        logs.configure(a.log_level)
    if a.kind == "bare-modules" and a.wrapped:
        coro = serve_wrapped(BareModules(a.model), a.metrics)
    elif a.kind == "bare-modules":
        interceptors: list[Any] = []
        if a.interceptors:
            from lazygrpc import server_interceptors

            interceptors = server_interceptors("bench", aio=True)
        elif a.noop_interceptors:
            interceptors = [NoopServerInterceptor()]
        coro = serve_bare(
            BareModules(a.model), module_pb2_grpc.add_ModuleServiceServicer_to_server, interceptors
        )
    elif a.kind == "bare-model":
        coro = serve_bare(BareModel(), model_pb2_grpc.add_ModelServiceServicer_to_server, [])
    elif a.kind == "lazy-model":
        coro = serve_lazy(model=True)
    elif a.kind == "lazy-modules":
        coro = serve_lazy(make_lazy_modules(a.model))
    elif a.kind == "lazy-hop":
        coro = serve_lazy(make_hop(a.prefix, a.downstream))
    elif a.kind == "lazy-hop3":
        coro = serve_lazy({"tokens": hop3_tokens})
    else:
        raise SystemExit(f"unknown server kind {a.kind!r}")
    run_server(coro)


def run_server(coro: Coroutine[Any, Any, None]) -> None:
    """Serve until interrupted (the benchmark stops its servers with SIGTERM or SIGINT)."""
    try:
        asyncio.run(coro)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
