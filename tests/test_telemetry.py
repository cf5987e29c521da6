"""OpenTelemetry: one SERVER span per hop, one trace across processes, chains as events."""

from __future__ import annotations

import gc
import importlib
import sys
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import lazygrpc
from lazygrpc import telemetry
from lazygrpc.backends import make_backend
from lazygrpc.core.values import from_value, to_value
from lazygrpc.server.builder import SERVER_OPTIONS
from lazygrpc.server.model import ModelConfig
from lazygrpc.v1 import chain_pb2, module_pb2, module_pb2_grpc

# Spans end inside the handler wrapper, before the status goes out, and SimpleSpanProcessor
# exports on end: once a call has returned (or a stream is drained), its spans are here.


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    exporter.clear()
    yield exporter
    exporter.clear()


def server_spans(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    """The finished SERVER spans by `lazygrpc.service` (the server's name)."""
    out: dict[str, ReadableSpan] = {}
    for span in exporter.get_finished_spans():
        if span.kind is trace.SpanKind.SERVER:
            name = str((span.attributes or {}).get("lazygrpc.service", span.name))
            assert name not in out, f"two server spans for {name}"
            out[name] = span
    return out


def is_ancestor(upper: ReadableSpan, lower: ReadableSpan, everything: list[ReadableSpan]) -> bool:
    by_id = {s.context.span_id: s for s in everything}
    parent = lower.parent
    while parent is not None:
        if parent.span_id == upper.context.span_id:
            return True
        above = by_id.get(parent.span_id)
        parent = above.parent if above is not None else None
    return False


def three_hops(servers: Any, style: str, hop3: Any) -> str:
    """hop1 → hop2 → hop3 on three telemetry servers; returns hop1's module URL."""
    url3 = servers.modules({"hop3": hop3}, name="hop3", telemetry=True) + "/hop3"
    if style == "async":

        async def hop2(x: Any) -> Any:
            return await lazygrpc.connect(url3).acall(x)

        url2 = servers.modules({"hop2": hop2}, name="hop2", telemetry=True) + "/hop2"

        async def hop1(x: Any) -> Any:
            return await lazygrpc.connect(url2).acall(x)

    else:

        def hop2(x: Any) -> Any:
            return lazygrpc.connect(url3)(x)

        url2 = servers.modules({"hop2": hop2}, name="hop2", telemetry=True) + "/hop2"

        def hop1(x: Any) -> Any:
            return lazygrpc.connect(url2)(x)

    return servers.modules({"hop1": hop1}, name="hop1", telemetry=True) + "/hop1"


def shout(x: str) -> str:
    return x.upper()


def fail(x: str) -> str:
    raise ValueError(f"hop3 failed on {x!r}")


@pytest.mark.parametrize("rpc", ["call", "stream"])
@pytest.mark.parametrize("style", ["async", "sync"])
def test_three_hops_make_one_trace_in_parent_child_order(
    servers: Any, spans: InMemorySpanExporter, style: str, rpc: str
) -> None:
    url = three_hops(servers, style, shout)
    with lazygrpc.session("sess-otel-1"):
        if rpc == "call":
            assert lazygrpc.connect(url)("hi") == "HI"
        else:
            events = list(lazygrpc.connect(url).stream("hi"))
            assert events[-1].kind == "result" and events[-1].value == "HI"

    everything = list(spans.get_finished_spans())
    hops = server_spans(spans)
    assert set(hops) == {"hop1", "hop2", "hop3"}
    hop1, hop2, hop3 = hops["hop1"], hops["hop2"], hops["hop3"]
    assert len({s.context.trace_id for s in hops.values()}) == 1
    assert hop1.parent is None  # the test client had no span: hop1 starts the trace
    assert is_ancestor(hop1, hop2, everything) and is_ancestor(hop2, hop3, everything)
    method = "Call" if rpc == "call" else "Stream"
    for name, span in hops.items():
        attributes = span.attributes or {}
        assert span.name == f"lazygrpc.v1.ModuleService/{method}"
        assert attributes["session.id"] == "sess-otel-1"
        assert attributes["lazygrpc.module"] == name
        assert attributes["rpc.system"] == "grpc"
        assert attributes["rpc.service"] == "lazygrpc.v1.ModuleService"
        assert attributes["rpc.method"] == method
        assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
        assert span.status.status_code is trace.StatusCode.UNSET
        assert not span.events


def test_caller_span_is_the_parent_of_the_entry_span(
    servers: Any, spans: InMemorySpanExporter
) -> None:
    url = servers.modules({"shout": shout}, name="solo", telemetry=True) + "/shout"
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller") as caller:
        assert lazygrpc.connect(url)("x") == "X"
    solo = server_spans(spans)["solo"]
    assert solo.parent is not None
    assert solo.parent.span_id == caller.get_span_context().span_id
    assert solo.context.trace_id == caller.get_span_context().trace_id


@pytest.mark.parametrize("style", ["async", "sync"])
def test_failing_call_records_the_chain(
    servers: Any, spans: InMemorySpanExporter, style: str
) -> None:
    url = three_hops(servers, style, fail)
    with lazygrpc.session("sess-otel-2"), pytest.raises(lazygrpc.RemoteError) as caught:
        lazygrpc.connect(url)("boom")
    assert [f.service for f in caught.value.chain] == ["hop1", "hop2", "hop3"]

    hops = server_spans(spans)
    assert len({s.context.trace_id for s in hops.values()}) == 1
    for depth, name in enumerate(["hop1", "hop2", "hop3"]):
        span = hops[name]
        attributes = span.attributes or {}
        assert attributes["session.id"] == "sess-otel-2"
        assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNKNOWN.value[0]
        assert span.status.status_code is trace.StatusCode.ERROR
        assert "hop3 failed on 'boom'" in (span.status.description or "")
        frames = [e for e in span.events if e.name == telemetry.FRAME_EVENT]
        # Each hop records the chain it sends up: itself, then everything below it.
        expected = ["hop1", "hop2", "hop3"][depth:]
        assert [(e.attributes or {})["lazygrpc.frame.service"] for e in frames] == expected
        assert [(e.attributes or {})["lazygrpc.frame.index"] for e in frames] == list(
            range(len(expected))
        )
        failure = frames[-1].attributes or {}
        assert failure["exception.type"] == "ValueError"
        assert failure["lazygrpc.frame.method"] == "hop3"
        assert failure["lazygrpc.frame.session_id"] == "sess-otel-2"
        assert failure["lazygrpc.frame.trace_id"] == format(span.context.trace_id, "032x")
        assert any(e.name == "exception" for e in span.events)


def test_not_found_is_not_a_server_error_but_keeps_its_frame(
    servers: Any, spans: InMemorySpanExporter
) -> None:
    url = servers.modules({"shout": shout}, name="solo", telemetry=True)
    with pytest.raises(lazygrpc.RemoteError) as caught:
        lazygrpc.connect(f"{url}/nope")("x")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    span = server_spans(spans)["solo"]
    assert (span.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert "lazygrpc.module" not in (span.attributes or {})
    assert span.status.status_code is trace.StatusCode.UNSET
    [frame] = [e for e in span.events if e.name == telemetry.FRAME_EVENT]
    assert (frame.attributes or {})["exception.type"] == "NotFound"


class WriteStyleModules(module_pb2_grpc.ModuleServiceServicer):
    """A hand-written `ModuleService` whose `Stream` uses `await context.write()` (#3066)."""

    def __init__(self, child_url: str = "") -> None:
        self.child_url = child_url

    async def Stream(self, request: module_pb2.CallRequest, context: Any) -> None:
        text = from_value(request.input)
        for seq, word in enumerate(text.split()):
            await context.write(module_pb2.Event(seq=seq, source="writer", delta=to_value(word)))
        result = await lazygrpc.connect(self.child_url).acall(text) if self.child_url else text
        await context.write(
            module_pb2.Event(seq=len(text.split()), source="writer", result=to_value(result))
        )


def write_style_server(servers: Any, servicer: Any, **options: Any) -> str:
    async def build() -> lazygrpc.Server:
        server = lazygrpc.Server(name="writer", **options)
        server.add_service(
            "lazygrpc.v1.ModuleService",
            module_pb2_grpc.add_ModuleServiceServicer_to_server,
            servicer,
        )
        return server

    server = servers.start(servers.call(build))
    return f"grpc://127.0.0.1:{server.port}/writer"


def test_context_write_handler_is_traced_and_still_streams(
    servers: Any, spans: InMemorySpanExporter
) -> None:
    child = servers.modules({"shout": shout}, name="child", telemetry=True) + "/shout"
    url = write_style_server(servers, WriteStyleModules(child), telemetry=True)
    with lazygrpc.session("sess-otel-3"):
        events = list(lazygrpc.connect(url).stream("a b c"))
    assert [(e.kind, e.value) for e in events] == [
        ("delta", "a"),
        ("delta", "b"),
        ("delta", "c"),
        ("result", "A B C"),
    ]
    hops = server_spans(spans)
    writer, below = hops["writer"], hops["child"]
    assert writer.name == "lazygrpc.v1.ModuleService/Stream"
    assert (writer.attributes or {})["session.id"] == "sess-otel-3"
    # The span was current inside the write-style handler: its child call continued the trace.
    assert below.parent is not None and below.parent.span_id == writer.context.span_id
    assert below.context.trace_id == writer.context.trace_id


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_upstream_aio_interceptor_breaks_context_write_handlers(
    servers: Any, spans: InMemorySpanExporter
) -> None:
    """Why lazygrpc wraps handlers itself (opentelemetry-python-contrib #3066).

    If this starts failing, upstream fixed #3066: see whether `lazygrpc.telemetry` can
    defer to it.
    """
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    async def build() -> grpc.aio.Server:
        server = grpc.aio.server(interceptors=[aio_server_interceptor()])
        module_pb2_grpc.add_ModuleServiceServicer_to_server(WriteStyleModules(), server)
        return server

    async def run() -> tuple[grpc.StatusCode, str]:
        server = await build()
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = module_pb2_grpc.ModuleServiceStub(channel).Stream(
                    module_pb2.CallRequest(input=to_value("a b"))
                )
                try:
                    async for _ in call:
                        pass
                except grpc.RpcError:
                    pass
                return await call.code(), await call.details() or ""
        finally:
            await server.stop(0)

    code, details = servers.call(run)
    gc.collect()  # finalize the never-awaited handler coroutine while the filter is on
    assert code == grpc.StatusCode.UNKNOWN
    assert "async for" in details


def test_sync_server_with_server_interceptors_is_traced(
    servers: Any, spans: InMemorySpanExporter
) -> None:
    class SyncModules(module_pb2_grpc.ModuleServiceServicer):
        def Call(self, request: module_pb2.CallRequest, context: Any) -> Any:
            return module_pb2.CallResponse(output=to_value(shout(from_value(request.input))))

        def Stream(self, request: module_pb2.CallRequest, context: Any) -> Iterator[Any]:
            text = from_value(request.input)
            yield module_pb2.Event(seq=0, source="shout", delta=to_value(text))
            yield module_pb2.Event(seq=1, source="shout", result=to_value(shout(text)))

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=lazygrpc.server_interceptors("syncsrv", aio=False, telemetry=True),
        options=SERVER_OPTIONS,
    )
    module_pb2_grpc.add_ModuleServiceServicer_to_server(SyncModules(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:

        async def entry(x: str) -> Any:
            return await lazygrpc.connect(f"grpc://127.0.0.1:{port}/shout").acall(x)

        url = servers.modules({"entry": entry}, name="entry", telemetry=True) + "/entry"
        with lazygrpc.session("sess-otel-4"):
            assert lazygrpc.connect(url)("q") == "Q"

        hops = server_spans(spans)
        top, sync = hops["entry"], hops["syncsrv"]
        assert sync.parent is not None and sync.parent.span_id == top.context.span_id
        assert (sync.attributes or {})["session.id"] == "sess-otel-4"

        spans.clear()
        events = list(lazygrpc.connect(f"grpc://127.0.0.1:{port}/shout").stream("s"))
        assert [(e.kind, e.value) for e in events] == [("delta", "s"), ("result", "S")]
        streamed = server_spans(spans)["syncsrv"]
        assert streamed.name == "lazygrpc.v1.ModuleService/Stream"
        assert (streamed.attributes or {})["rpc.grpc.status_code"] == 0
    finally:
        server.stop(0).wait()


def test_model_span_names_the_model(servers: Any, spans: InMemorySpanExporter) -> None:
    async def build() -> lazygrpc.Server:
        server = lazygrpc.Server(telemetry=True)
        server.add_model(ModelConfig(make_backend("echo"), name="parrot"))
        return server

    server = servers.start(servers.call(build))
    assert lazygrpc.LLM(f"grpc://127.0.0.1:{server.port}")("hello there") == "hello there"
    span = server_spans(spans)["parrot"]
    assert span.name == "lazygrpc.v1.ModelService/Complete"
    assert (span.attributes or {})["lazygrpc.model"] == "parrot"


def test_health_checks_are_not_traced(servers: Any, spans: InMemorySpanExporter) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    url = servers.modules({"shout": shout}, name="solo", telemetry=True)
    with grpc.insecure_channel(url.removeprefix("grpc://")) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert not spans.get_finished_spans()


def test_frame_event_attributes() -> None:
    frame = chain_pb2.CallFrame(
        service="s", method="m", host="h", pid=7, error_type="E", message="msg", traceback="tb"
    )
    frame.time.FromNanoseconds(123)
    attributes, timestamp = telemetry.frame_event(2, frame)
    assert timestamp == 123
    assert attributes["lazygrpc.frame.index"] == 2
    assert attributes["exception.type"] == "E"
    assert attributes["exception.stacktrace"] == "tb"
    assert telemetry.frame_event(0, chain_pb2.CallFrame())[1] is None


def test_trace_carrier_keeps_only_trace_context() -> None:
    tp = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    md = [("traceparent", tp), ("x", "y"), ("b-bin", b""), ("tracestate", "a=1")]
    assert telemetry.trace_carrier([*md, ("tracestate", "b=2")]) == {
        "traceparent": tp,
        "tracestate": "a=1,b=2",  # several headers are one list
    }
    # A traceparent sent twice names no one trace: W3C restarts it.
    assert telemetry.trace_carrier([*md, ("traceparent", tp)]) == {}


def test_an_otel_client_interceptor_under_ours_continues_the_incoming_trace(
    servers: Any, spans: InMemorySpanExporter
) -> None:
    """A hop without lazygrpc tracing, calling on through OpenTelemetry's client interceptor
    stacked under ours: the downstream call continues the caller's trace, with its
    tracestate, as one consistent pair."""
    from opentelemetry.instrumentation.grpc import client_interceptor
    from opentelemetry.instrumentation.grpc.grpcext import intercept_channel

    from lazygrpc.core.context import current_call

    seen: dict[str, Any] = {}

    def leaf(x: str) -> str:
        scope = current_call()
        assert scope is not None
        seen[x] = dict(scope.trace_headers)
        return x

    leaf_url = servers.modules({"leaf": leaf}, name="leaf")
    raw = grpc.insecure_channel(leaf_url.removeprefix("grpc://"))
    downstream = lazygrpc.intercept_channel(intercept_channel(raw, client_interceptor()))

    def mid(x: str) -> str:
        stub = module_pb2_grpc.ModuleServiceStub(downstream)
        out = stub.Call(module_pb2.CallRequest(module="leaf", input=to_value(x)))
        return str(from_value(out.output))

    mid_url = servers.modules({"mid": mid}, name="mid")
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    md = [("traceparent", f"00-{trace_id}-b7ad6b7169203331-01"), ("tracestate", "congo=t61")]
    try:
        with grpc.insecure_channel(mid_url.removeprefix("grpc://")) as ch:
            stub = module_pb2_grpc.ModuleServiceStub(ch)
            request = module_pb2.CallRequest(module="mid", input=to_value("x"))
            assert from_value(stub.Call(request, metadata=md).output) == "x"
    finally:
        raw.close()
    assert seen["x"]["traceparent"].split("-")[1] == trace_id
    assert seen["x"]["traceparent"] != md[0][1]  # OpenTelemetry's client span is the parent
    assert seen["x"]["tracestate"] == "congo=t61"
    (client,) = [s for s in spans.get_finished_spans() if s.kind is trace.SpanKind.CLIENT]
    assert f"{client.context.trace_id:032x}" == trace_id


def test_missing_otel_extra_is_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "lazygrpc.telemetry")
    hidden = [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]
    for name in hidden:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install 'lazygrpc\[otel\]'"):
        lazygrpc.server_interceptors(telemetry=True)
    with pytest.raises(ImportError, match=r"pip install 'lazygrpc\[otel\]'"):
        importlib.import_module("lazygrpc.telemetry")


def test_upstream_otel_interceptors_work_beside_lazygrpcs(
    servers: Any, spans: InMemorySpanExporter
) -> None:
    """OpenTelemetry's own sync client and aio server interceptors, stacked with ours."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, client_interceptor
    from opentelemetry.instrumentation.grpc.grpcext import intercept_channel

    async def tagged(x: str) -> dict[str, Any]:
        lazygrpc.globals["back"] = x
        return {"sid": lazygrpc.session_id(), "user": lazygrpc.globals.get("user")}

    async def words(x: str) -> Any:
        for w in x.split():
            yield w

    url = servers.modules(
        {"tagged": tagged, "words": words},
        name="beside",
        interceptors=[aio_server_interceptor()],
    )
    target = url.removeprefix("grpc://")
    raw = grpc.insecure_channel(target)
    channel = lazygrpc.intercept_channel(intercept_channel(raw, client_interceptor()))
    try:
        stub = module_pb2_grpc.ModuleServiceStub(channel)
        with lazygrpc.session("beside-1", user="ada") as s:
            out = stub.Call(module_pb2.CallRequest(module="tagged", input=to_value("v")))
            assert from_value(out.output) == {"sid": "beside-1", "user": "ada"}
            assert s.get("back") == "v"
            events = list(
                stub.Stream(module_pb2.CallRequest(module="words", input=to_value("a b")))
            )
            assert events[-1].WhichOneof("body") == "result"
            assert from_value(events[-1].result) == "ab"
    finally:
        raw.close()
    kinds = {span.kind for span in spans.get_finished_spans()}
    assert trace.SpanKind.CLIENT in kinds and trace.SpanKind.SERVER in kinds
