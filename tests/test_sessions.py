"""Session ids and globals across three hops, sync and asyncio, clients and servers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import lazygrpc
from lazygrpc.core.context import current_call
from tests.hops import SERVER_KINDS, Mesh

CLIENT_KINDS = ["sync", "aio"]


@pytest.fixture(params=SERVER_KINDS)
def mesh(request: pytest.FixtureRequest, servers: Any) -> Iterator[Mesh]:
    m = Mesh(servers, request.param)
    yield m
    m.close()


def call(mesh: Mesh, client: str, x: str, **kwargs: Any) -> Any:
    if client == "sync":
        return mesh.run(x, **kwargs)

    async def go() -> Any:
        try:
            return await mesh.run.acall(x, **kwargs)
        finally:
            await lazygrpc.client.channels.aclose_all()

    return asyncio.run(go())


@pytest.mark.parametrize("client", CLIENT_KINDS)
def test_globals_reach_hop3_and_changes_come_back(mesh: Mesh, client: str) -> None:
    with lazygrpc.session("entry-1") as s:
        lazygrpc.globals["user"] = "ada"
        lazygrpc.globals["budget"] = {"tokens": 100, "tags": ["a", "b"]}
        assert call(mesh, client, "x1") == "done:x1"
        seen = mesh.record.seen["x1"]
        assert seen["sid"] == "entry-1"
        assert seen["globals"] == {"user": "ada", "budget": {"tokens": 100, "tags": ["a", "b"]}}
        assert s.values()["from_hop3"] == "hop3 saw x1"
        assert lazygrpc.globals["from_hop3"] == "hop3 saw x1"


@pytest.mark.parametrize("client", CLIENT_KINDS)
def test_fresh_session_id_when_the_entry_sets_none(mesh: Mesh, servers: Any, client: str) -> None:
    # A raw grpcio call with no lazygrpc metadata: the entry server makes a fresh id,
    # and every hop below sees that same id.
    from lazygrpc.core.values import to_value
    from lazygrpc.v1 import module_pb2, module_pb2_grpc

    target = mesh.entry.removeprefix("grpc://")
    with grpc.insecure_channel(target) as ch:
        stub = module_pb2_grpc.ModuleServiceStub(ch)
        for key in ("fresh-a", "fresh-b"):
            stub.Call(module_pb2.CallRequest(module="run", input=to_value(key)), timeout=10)
    a, b = mesh.record.seen["fresh-a"]["sid"], mesh.record.seen["fresh-b"]["sid"]
    assert a and b and a != b


def test_non_ascii_globals_round_trip(mesh: Mesh) -> None:
    with lazygrpc.session() as s:
        lazygrpc.globals["名前"] = "Ада Лавлейс, 😀; a=b, c"
        mesh.run("unicode")
        assert mesh.record.seen["unicode"]["globals"] == {"名前": "Ада Лавлейс, 😀; a=b, c"}
        assert s.values()["from_hop3"] == "hop3 saw unicode"


def test_concurrent_calls_with_one_session_id_do_not_share_globals(servers: Any) -> None:
    n = 20
    arrived: list[int] = []
    seen: list[tuple[int, Any]] = []
    # The module runs on the servers' event loop (`servers` fixture), where every call
    # sets its global, then waits until all n have: they provably overlap. Made here, the
    # event binds to that loop when first awaited there.
    all_set = asyncio.Event()

    async def overlapping(i: int) -> Any:
        lazygrpc.globals["mine"] = i
        arrived.append(i)
        if len(arrived) == n:
            all_set.set()
        try:
            await asyncio.wait_for(all_set.wait(), 10)
        except TimeoutError:
            raise AssertionError(
                f"the calls did not overlap: {len(arrived)} of {n} set their global"
            ) from None
        seen.append((i, lazygrpc.globals["mine"]))
        return lazygrpc.globals["mine"]

    url = servers.modules({"overlapping": overlapping})

    async def go() -> list[Any]:
        m = lazygrpc.connect(f"{url}/overlapping")

        async def one(i: int) -> Any:
            with lazygrpc.session("shared-id"):
                return await m.acall(i)

        try:
            return await asyncio.gather(*(one(i) for i in range(n)))
        finally:
            await lazygrpc.client.channels.aclose_all()

    assert asyncio.run(go()) == list(range(n))
    assert sorted(arrived) == list(range(n))
    assert sorted(seen) == [(i, i) for i in range(n)]


def test_500_concurrent_sessions_through_three_hops_have_no_cross_talk(servers: Any) -> None:
    mesh = Mesh(servers, "aio")

    async def go() -> list[tuple[int, Any, Any, str]]:
        async def one(i: int) -> tuple[int, Any, Any, str]:
            with lazygrpc.session(f"s-{i}") as s:
                lazygrpc.globals["i"] = i
                lazygrpc.globals["tag"] = f"tag-{i}"
                out = await mesh.run.acall(f"k{i}")
                return i, out, s.values().get("from_hop3"), s.id

        try:
            return await asyncio.gather(*(one(i) for i in range(500)))
        finally:
            await lazygrpc.client.channels.aclose_all()

    results = asyncio.run(go())
    assert len(results) == 500
    for i, out, back, sid in results:
        assert out == f"done:k{i}"
        assert back == f"hop3 saw k{i}"
        seen = mesh.record.seen[f"k{i}"]
        assert seen["sid"] == sid == f"s-{i}"
        assert seen["globals"] == {"i": i, "tag": f"tag-{i}"}


def test_parent_deadline_reaches_hop3(mesh: Mesh) -> None:
    m = lazygrpc.connect(mesh.entry + "/run", timeout=0.3)
    # On a saturated machine the 300 ms can run out before the call even reaches hop 3
    # (then hop 3 saw nothing to check): that attempt is repeated, at most three times.
    for attempt in range(3):
        key = f"sleep-deadline-{attempt}"
        t0 = time.monotonic()
        with pytest.raises(lazygrpc.RemoteError) as info:
            m(key)
        assert time.monotonic() - t0 < 3
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        if key in mesh.record.seen:
            break
    deadline = mesh.record.seen[key]["deadline"]
    assert deadline is not None and deadline <= 0.3


@pytest.mark.parametrize("client", CLIENT_KINDS)
def test_cancel_stops_hop3_generator(mesh: Mesh, client: str) -> None:
    x = "slow-cancel"
    if client == "sync":
        stream = mesh.stream.stream(x, n=100000)
        first = next(stream)
        assert first.kind == "delta"
        cancelled_at = time.monotonic()
        stream.close()  # cancels the RPC
    else:

        async def go() -> float:
            try:
                agen = mesh.stream.astream(x, n=100000)
                await agen.__anext__()
                at = time.monotonic()
                await agen.aclose()
                return at
            finally:
                await lazygrpc.client.channels.aclose_all()

        cancelled_at = asyncio.run(go())
    deadline = time.monotonic() + 5
    while x not in mesh.record.finally_at and time.monotonic() < deadline:
        time.sleep(0.005)  # polling for the effect under test, not for readiness
    assert x in mesh.record.finally_at, "hop3's generator never ran its finally"
    lag = mesh.record.finally_at[x] - cancelled_at
    print(f"cancel → hop3 finally: {lag * 1000:.1f} ms")
    assert lag < 1.0  # the 100 ms target is measured in benchmarks; this catches hangs


def test_globals_limits_are_checked_before_sending(mesh: Mesh) -> None:
    with lazygrpc.session():
        with pytest.raises(ValueError, match=r"'big': 9\d{3} bytes encoded, over the limit"):
            lazygrpc.globals["big"] = "x" * 9000
        for key in ("a", "b", "c"):
            lazygrpc.globals[key] = "x" * 3000
        with pytest.raises(
            ValueError, match=r"encoded baggage is \d+ bytes, over the limit of 8192"
        ):
            mesh.run("never-sent")
    with lazygrpc.session():
        for i in range(181):
            lazygrpc.globals[f"k{i}"] = i
        with pytest.raises(ValueError, match=r"181 baggage entries, over the limit of 180"):
            mesh.run("never-sent")
    assert "never-sent" not in mesh.record.seen


def test_non_json_global_is_refused_naming_the_key() -> None:
    with lazygrpc.session(), pytest.raises(TypeError, match="'when'"):
        lazygrpc.globals["when"] = object()


def test_thread_default_session_is_per_thread() -> None:
    import threading

    ids: list[str] = []

    def grab() -> None:
        ids.append(lazygrpc.session_id())
        ids.append(lazygrpc.session_id())

    threads = [threading.Thread(target=grab) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]


def test_session_follows_into_thread_pool_and_tasks() -> None:
    with lazygrpc.session("pool-1"):
        lazygrpc.globals["k"] = "v"
        with lazygrpc.ThreadPoolExecutor(2) as pool:
            got = pool.submit(lambda: (lazygrpc.session_id(), dict(lazygrpc.globals))).result()
        assert got == ("pool-1", {"k": "v"})

        async def in_task() -> str:
            return await asyncio.create_task(asyncio.sleep(0, lazygrpc.session_id()))

        assert asyncio.run(in_task()) == "pool-1"


@pytest.mark.parametrize(
    ("header", "value", "named"),
    [
        ("baggage", "lazy.k=%7Bnot-json", "baggage"),
        ("baggage", "no equals sign", "baggage"),
        ("lazy-session-id", "bad id with spaces", "lazy-session-id"),
        ("lazy-session-id", "x" * 200, "lazy-session-id"),
        ("x-padding", "p" * 9000, "x-padding"),
    ],
)
@pytest.mark.parametrize("kind", ["aio", "sync"])
def test_bad_metadata_gets_invalid_argument_and_the_server_goes_on(
    servers: Any, kind: str, header: str, value: str, named: str
) -> None:
    from lazygrpc.core.values import to_value
    from lazygrpc.v1 import module_pb2, module_pb2_grpc

    mesh = Mesh(servers, kind)
    target = mesh.entry.removeprefix("grpc://")
    request = module_pb2.CallRequest(module="run", input=to_value("ok"))
    with grpc.insecure_channel(target) as ch:
        stub = module_pb2_grpc.ModuleServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Call(request, metadata=[(header, value)], timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(f"{named}:")
        assert stub.Call(request, timeout=10).output.string_value == "done:ok"
    mesh.close()


def _raw_call(mesh: Mesh, x: str, md: list[tuple[str, str]]) -> Any:
    """`run(x)` at the entry through a plain grpcio stub with exactly `md` as metadata."""
    from lazygrpc.core.values import to_value
    from lazygrpc.v1 import module_pb2, module_pb2_grpc

    with grpc.insecure_channel(mesh.entry.removeprefix("grpc://")) as ch:
        stub = module_pb2_grpc.ModuleServiceStub(ch)
        return stub.Call(module_pb2.CallRequest(module="run", input=to_value(x)), metadata=md)


def test_several_baggage_headers_are_one_list_with_one_limit(mesh: Mesh) -> None:
    """W3C baggage may come in several headers: every entry counts, and is checked."""
    md = [("lazy-session-id", "two-headers"), ("baggage", "lazy.a=1"), ("baggage", "lazy.b=2")]
    assert _raw_call(mesh, "two-headers", md).output.string_value == "done:two-headers"
    assert mesh.record.seen["two-headers"]["globals"] == {"a": 1, "b": 2}
    for pair in (["lazy.a=1", ""], ["", "lazy.a=1"], [" ", "lazy.a=1", ""]):  # empty: nothing
        _raw_call(mesh, "empty-too", [("baggage", b) for b in pair])
        assert mesh.record.seen["empty-too"]["globals"] == {"a": 1}

    def entries(prefix: str) -> str:
        return ",".join(f"lazy.{prefix}{i}=1" for i in range(100))

    for first, second, expected in (
        ("lazy.a=1", "lazy.c=%ZZ", "baggage:"),  # malformed, in the second header
        (entries("j"), entries("k"), "baggage: 200 entries, over the limit of 180"),
        ("lazy.pad=" + "2" * 5000, "lazy.big=" + "1" * 5000, "baggage: 10019 bytes, over"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            _raw_call(mesh, "refused", [("baggage", first), ("baggage", second)])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(expected), info.value.details()
    assert "refused" not in mesh.record.seen


def test_a_session_id_sent_twice_is_refused(mesh: Mesh) -> None:
    md = [("lazy-session-id", "first"), ("lazy-session-id", "second")]
    with pytest.raises(grpc.RpcError) as info:
        _raw_call(mesh, "twice", md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("lazy-session-id: sent more than once")
    assert _raw_call(mesh, "once", md[:1]).output.string_value == "done:once"


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_incoming_trace_context_reaches_every_hop(mesh: Mesh) -> None:
    """Without a tracer of its own, each hop forwards the W3C trace context it was called
    with, so hop 3 sees it and every frame of an error chain names the trace."""
    md = [("traceparent", TRACEPARENT), ("tracestate", "congo=t61rcWkgMzE"), ("tracestate", "a=1")]
    assert _raw_call(mesh, "traced", md).output.string_value == "done:traced"
    assert mesh.record.traces["traced"] == (
        ("traceparent", TRACEPARENT),
        ("tracestate", "congo=t61rcWkgMzE,a=1"),
    )
    with pytest.raises(grpc.RpcError) as info:
        _raw_call(mesh, "fail-traced", md[:1])
    err = lazygrpc.remote_error_from_rpc(info.value)
    assert [f.trace_id for f in err.chain] == ["0af7651916cd43dd8448eb211c80319c"] * 3

    # An invalid traceparent is not passed on (W3C: start afresh), and the call still works.
    for bad in ("00-" + "0" * 32 + "-b7ad6b7169203331-01", "ff-x", "not a trace"):
        bad_md = [("traceparent", bad), ("tracestate", "a=1")]
        assert _raw_call(mesh, "untraced", bad_md).output.string_value == "done:untraced"
        assert mesh.record.traces["untraced"] == ()


def test_a_traceparent_sent_twice_starts_the_trace_afresh() -> None:
    """grpc itself keeps one of two `traceparent` headers; should both reach the server
    interceptor, they name no one trace, and W3C says to restart it."""
    from lazygrpc.server.call import incoming_scope

    md = [("traceparent", TRACEPARENT), ("traceparent", TRACEPARENT), ("tracestate", "a=1")]
    scope = incoming_scope("s", "Call", md, None)
    assert (scope.trace_headers, scope.trace_id) == ((), "")
    scope = incoming_scope("s", "Call", md[1:], None)
    assert scope.trace_headers == (("traceparent", TRACEPARENT), ("tracestate", "a=1"))
    assert scope.trace_id == TRACEPARENT[3:35]


@pytest.mark.parametrize(
    ("md", "named"),
    [
        ([("lazy-session-id", "bad id")], "lazy-session-id:"),
        ([("lazy-session-id", "a"), ("lazy-session-id", "b")], "lazy-session-id:"),
        ([("baggage", "lazy.k=%7B")], "baggage:"),
        ([("x-padding", "p" * 9000)], "x-padding:"),
    ],
)
def test_incoming_scope_refuses_a_bad_header_naming_it(
    md: list[tuple[str, str]], named: str
) -> None:
    from lazygrpc.server.call import incoming_scope

    with pytest.raises(lazygrpc.InvalidArgument) as info:
        incoming_scope("s", "Call", md, None)
    assert str(info.value).startswith(named), str(info.value)
    scope = incoming_scope("s", "Call", [("lazy-session-id", "good-1")], 5.0)
    assert (scope.session.id, scope.service, scope.method) == ("good-1", "s", "Call")
    remaining = scope.time_remaining()
    assert remaining is not None and 0 < remaining <= 5.0


def test_bare_grpcio_hop_forwards_session_and_baggage(servers: Any) -> None:
    """A middle hop with no lazygrpc code passes the context on by forwarding two headers."""
    from concurrent import futures

    from lazygrpc.v1 import module_pb2_grpc
    from tests.hops import Record, make_modules

    record = Record()
    hop3 = servers.modules(make_modules("aio", record, None), name="hop3")
    hop3_channel = grpc.insecure_channel(hop3.removeprefix("grpc://"))
    hop3_stub = module_pb2_grpc.ModuleServiceStub(hop3_channel)

    class BareHop(module_pb2_grpc.ModuleServiceServicer):
        def Call(self, request: Any, context: Any) -> Any:
            # The two lines a bare grpcio hop needs (docs/sessions.md):
            keep = ("lazy-session-id", "baggage")
            md = [(k, v) for k, v in context.invocation_metadata() if k in keep]
            return hop3_stub.Call(request, metadata=md)

    bare = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.so_reuseport", 0)])
    module_pb2_grpc.add_ModuleServiceServicer_to_server(BareHop(), bare)
    port = bare.add_insecure_port("127.0.0.1:0")
    bare.start()
    try:
        hop1 = servers.modules(make_modules("aio", record, f"grpc://127.0.0.1:{port}"), name="hop1")
        with lazygrpc.session("through-bare"):
            lazygrpc.globals["user"] = "grace"
            assert lazygrpc.connect(f"{hop1}/run")("bare") == "done:bare"
        assert record.seen["bare"]["sid"] == "through-bare"
        assert record.seen["bare"]["globals"] == {"user": "grace"}
    finally:
        bare.stop(0)
        hop3_channel.close()


@pytest.mark.parametrize("style", ["write", "async-generator"])
def test_aio_streaming_handlers_of_both_styles_see_the_session(servers: Any, style: str) -> None:
    """The session is bound for every step of a hand-written aio stream (grpc #28728)."""
    from lazygrpc.core.values import to_value
    from lazygrpc.server.modules import SERVICE_NAME
    from lazygrpc.v1 import module_pb2, module_pb2_grpc

    def event(i: int) -> Any:
        seen = f"{lazygrpc.session_id()}:{lazygrpc.globals.get('user')}"
        return module_pb2.Event(seq=i, source="h", delta=to_value(seen))

    class WriteStyle(module_pb2_grpc.ModuleServiceServicer):
        async def Stream(self, request: Any, context: Any) -> None:
            for i in range(3):
                await asyncio.sleep(0.001)
                await context.write(event(i))
            lazygrpc.globals["written"] = style

    class GeneratorStyle(module_pb2_grpc.ModuleServiceServicer):
        async def Stream(self, request: Any, context: Any) -> Any:
            for i in range(3):
                await asyncio.sleep(0.001)
                yield event(i)
            lazygrpc.globals["written"] = style

    async def build() -> lazygrpc.Server:
        s = lazygrpc.Server(name="handwritten")
        servicer = WriteStyle() if style == "write" else GeneratorStyle()
        s.add_service(SERVICE_NAME, module_pb2_grpc.add_ModuleServiceServicer_to_server, servicer)
        await s.start()
        return s

    server = servers.lt.run(build())
    servers.started.append(server)
    with lazygrpc.session("hw-1", user="ada") as s:
        values = [e.value for e in lazygrpc.connect(f"grpc://127.0.0.1:{server.port}/x").stream()]
        assert values == ["hw-1:ada"] * 3
        assert s.get("written") == style


def test_cancel_leaves_no_producer_thread_or_task_behind(servers: Any) -> None:

    from lazygrpc import broker
    from lazygrpc.server.modules import active_producers

    mesh = Mesh(servers, "aio-threads")
    before = servers.lt.run(_tasks())
    stream = mesh.stream.stream("slow-leftover", n=100000)
    next(stream)
    stream.close()
    # grpc keeps one task waiting for the next request; anything else is a leftover
    # handler or producer of the cancelled stream. The handlers finish their cleanup a
    # moment after the producer stops, so all of it is polled for (within a hang bound).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
        "slow-leftover" not in mesh.record.finally_at
        or broker.stats().open_topics
        or active_producers()
        or servers.lt.run(_tasks()) - before
    ):
        time.sleep(0.005)  # polling for the effect under test
    assert broker.stats().open_topics == 0
    assert servers.lt.run(_tasks()) - before == set()
    assert active_producers() == 0


async def _tasks() -> set[str]:
    current = asyncio.current_task()
    names = {t: getattr(t.get_coro(), "__qualname__", "?") for t in asyncio.all_tasks()}
    return {
        f"{id(t)}:{name}"
        for t, name in names.items()
        # grpc's own serving loops, a new task per call taken
        if t is not current and not name.endswith(("_request_call", "_request_registered_call"))
    }


@pytest.mark.parametrize("client", [*CLIENT_KINDS, "aio-channel"])
def test_raw_stubs_through_the_client_interceptors(mesh: Mesh, client: str) -> None:
    """Users of plain stubs get sessions, globals back and deadlines from the interceptors
    (or, for asyncio, from a channel `intercept_aio_channel` wraps)."""
    from lazygrpc.core.values import from_value, to_value
    from lazygrpc.v1 import module_pb2, module_pb2_grpc

    target = mesh.entry.removeprefix("grpc://")

    def request(x: str) -> Any:
        return module_pb2.CallRequest(module="run", input=to_value(x))

    with lazygrpc.session("raw-1") as s:
        lazygrpc.globals["user"] = "linus"
        if client == "sync":
            channel = lazygrpc.intercept_channel(grpc.insecure_channel(target))
            stub = module_pb2_grpc.ModuleServiceStub(channel)
            out = from_value(stub.Call(request("raw")).output)
            events = list(module_pb2_grpc.ModuleServiceStub(channel).Stream(request("raw-stream")))
            channel.close()
        else:

            def open_channel() -> grpc.aio.Channel:
                if client == "aio-channel":
                    return lazygrpc.intercept_aio_channel(grpc.aio.insecure_channel(target))
                return grpc.aio.insecure_channel(
                    target, interceptors=lazygrpc.aio_client_interceptors()
                )

            async def go() -> tuple[Any, list[Any]]:
                async with open_channel() as channel:
                    stub = module_pb2_grpc.ModuleServiceStub(channel)
                    response = await stub.Call(request("raw"))
                    return from_value(response.output), [
                        e async for e in stub.Stream(request("raw-stream"))
                    ]

            out, events = asyncio.run(go())
        assert out == "done:raw"
        assert events[-1].WhichOneof("body") == "result"
        assert mesh.record.seen["raw"] == {
            "sid": "raw-1",
            "globals": {"user": "linus"},
            "deadline": None,
        }
        assert mesh.record.seen["raw-stream"]["sid"] == "raw-1"
        assert s.get("from_hop3") == "hop3 saw raw-stream"


def test_an_intercepted_aio_channel_merges_globals_before_the_caller_resumes(
    mesh: Mesh,
) -> None:
    """Every call kind through `intercept_aio_channel`: the trailer's globals are in the
    session when `await` returns or raises and when a response stream ends, and grpc's own
    call objects and errors come back (no RemoteError)."""
    from lazygrpc.core.values import to_value
    from lazygrpc.v1 import module_pb2, module_pb2_grpc

    target = mesh.entry.removeprefix("grpc://")

    def request(module: str, x: str) -> Any:
        return module_pb2.CallRequest(module=module, input=to_value(x))

    async def go() -> list[Any]:
        seen = []
        channel = lazygrpc.intercept_aio_channel(grpc.aio.insecure_channel(target))
        assert isinstance(channel, grpc.aio.Channel)
        await channel.channel_ready()
        stub = module_pb2_grpc.ModuleServiceStub(channel)
        for i in range(20):  # each merge must be there at once, every time
            with lazygrpc.session(f"wrapped-{i}"):
                await stub.Call(request("run", f"ok-{i}"))
                seen.append(lazygrpc.globals.get("from_hop3"))
            with lazygrpc.session(f"wrapped-fail-{i}"):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await stub.Call(request("run", f"fail-{i}"))
                assert failed.value.code() == grpc.StatusCode.UNKNOWN
                seen.append(lazygrpc.globals.get("from_hop3"))
            with lazygrpc.session(f"wrapped-stream-{i}"):
                call = stub.Stream(request("stream", f"s-{i}"))
                while (await call.read()) is not grpc.aio.EOF:
                    pass
                seen.append(lazygrpc.globals.get("from_hop3"))
        await channel.close()
        return seen

    seen = asyncio.run(go())
    expected = []
    for i in range(20):
        expected += [f"hop3 saw ok-{i}", f"hop3 saw fail-{i}", f"hop3 saw s-{i}"]
    assert seen == expected


def test_an_intercepted_aio_channel_in_a_handler_passes_the_deadline_and_the_cancel_down(
    servers: Any,
) -> None:
    """A handler that calls on with a raw stub through `intercept_aio_channel`: the child
    call gets the parent's remaining deadline, and is cancelled when the parent's client
    cancels. Client- and bidi-streaming stubs work through the channel too."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from lazygrpc.core.values import from_value, to_value
    from lazygrpc.v1 import module_pb2, module_pb2_grpc

    seen: dict[str, Any] = {}
    child_started = threading.Event()
    child_cancelled = threading.Event()

    async def leaf(x: str) -> str:
        scope = current_call()
        seen["deadline"] = scope.time_remaining() if scope else None
        seen["sid"] = lazygrpc.session_id()
        if x == "hang":
            child_started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                child_cancelled.set()
                raise
        return f"leaf:{x}"

    leaf_target = servers.modules({"leaf": leaf}).removeprefix("grpc://")
    channels: dict[str, Any] = {}

    async def middle(x: str) -> str:
        if "ch" not in channels:
            channels["ch"] = lazygrpc.intercept_aio_channel(grpc.aio.insecure_channel(leaf_target))
        stub = module_pb2_grpc.ModuleServiceStub(channels["ch"])
        response = await stub.Call(module_pb2.CallRequest(module="leaf", input=to_value(x)))
        return str(from_value(response.output))

    middle_url = servers.modules({"middle": middle})
    with lazygrpc.session("deadline-1"):
        assert lazygrpc.connect(f"{middle_url}/middle", timeout=5)("ok") == "leaf:ok"
    assert seen["sid"] == "deadline-1"
    # grpc rounds a timeout up when it writes grpc-timeout (seen: 5.0095 s for 5 s).
    assert seen["deadline"] is not None and 0 < seen["deadline"] <= 5 * 1.01

    async def cancel_midway() -> None:
        async with grpc.aio.insecure_channel(middle_url.removeprefix("grpc://")) as ch:
            stub = module_pb2_grpc.ModuleServiceStub(ch)
            call = stub.Call(module_pb2.CallRequest(module="middle", input=to_value("hang")))
            assert await asyncio.to_thread(child_started.wait, 5)
            call.cancel()

    asyncio.run(cancel_midway())
    assert child_cancelled.wait(5), "the child call was not cancelled with its parent"

    async def reflect() -> list[str]:
        async with lazygrpc.intercept_aio_channel(grpc.aio.insecure_channel(leaf_target)) as ch:
            info = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            return [s.name async for r in info for s in r.list_services_response.service]

    assert "lazygrpc.v1.ModuleService" in asyncio.run(reflect())


def test_an_intercepted_aio_channel_is_a_whole_grpc_aio_channel(mesh: Mesh) -> None:
    """Every method of `grpc.aio.Channel` works on the wrapped channel and reaches the
    channel inside (state, state changes, readiness, close, `async with`)."""
    import inspect

    abstract = set(grpc.aio.Channel.__abstractmethods__)
    assert abstract
    target = mesh.entry.removeprefix("grpc://")

    async def go() -> None:
        inner = grpc.aio.insecure_channel(target)
        channel = lazygrpc.intercept_aio_channel(inner)
        missing = sorted(name for name in abstract if not callable(getattr(channel, name, None)))
        assert not missing, missing
        assert not inspect.isabstract(type(channel))
        assert not getattr(type(channel), "__abstractmethods__", frozenset())
        assert channel.get_state() == inner.get_state() == grpc.ChannelConnectivity.IDLE
        assert channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.IDLE
        await asyncio.wait_for(channel.wait_for_state_change(grpc.ChannelConnectivity.IDLE), 5)
        await channel.channel_ready()
        assert inner.get_state() == grpc.ChannelConnectivity.READY
        async with channel as same:
            assert same is channel
        assert inner.get_state() == grpc.ChannelConnectivity.SHUTDOWN  # closed with it
        await channel.close()  # closing twice is harmless, as with grpc's own

    asyncio.run(go())


class _NoopInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
):
    """A grpc.aio client interceptor of another library: passes every call on."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(details, request)


class _NoopStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(details, request)


class _NoopStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(details, requests)


class _NoopStreamStream(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(details, requests)


def _kinds_service(seen: dict[str, Any]) -> Any:
    """`t.Kinds` with one method per call kind (bytes in and out): each records the session
    it runs under and sets a global that must come back."""

    def note(kind: str, tag: str) -> None:
        seen[tag] = (lazygrpc.session_id(), lazygrpc.globals.get("in"))
        lazygrpc.globals["back"] = f"{kind}:{tag}"

    async def uu(request: bytes, context: Any) -> bytes:
        note("uu", request.decode())
        return request

    async def us(request: bytes, context: Any) -> Any:
        note("us", request.decode())
        yield request

    async def su(requests: Any, context: Any) -> bytes:
        tags = [r.decode() async for r in requests]
        note("su", tags[-1])
        return tags[-1].encode()

    async def ss(requests: Any, context: Any) -> Any:
        async for r in requests:
            yield r
        note("ss", r.decode())

    def add(servicer: Any, server: Any) -> None:
        handlers = {
            "UU": grpc.unary_unary_rpc_method_handler(uu),
            "US": grpc.unary_stream_rpc_method_handler(us),
            "SU": grpc.stream_unary_rpc_method_handler(su),
            "SS": grpc.stream_stream_rpc_method_handler(ss),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("t.Kinds", handlers),)
        )

    return add


@pytest.mark.parametrize("route", ["interceptors", "channel", "channel-over-interceptors"])
def test_every_call_kind_brings_its_globals_back_by_the_time_it_ends(
    servers: Any, route: str
) -> None:
    """Unary, server-, client- and bidi-streaming calls of a raw grpc.aio channel, through
    lazygrpc's client interceptors or `intercept_aio_channel` (also over a channel that
    has another library's interceptors): the server sees the caller's session and globals,
    and the global it sets is in the caller's session when `await` returns or the stream
    ends, not later. Request streams accept `request_iterator=` and options by position."""
    seen: dict[str, Any] = {}

    async def build() -> lazygrpc.Server:
        server = lazygrpc.Server(name="kinds")
        server.add_service("t.Kinds", _kinds_service(seen), None)
        await server.start()
        return server

    server = servers.lt.run(build())
    servers.started.append(server)
    target = f"127.0.0.1:{server.port}"
    others = [_NoopInterceptor(), _NoopStream(), _NoopStreamUnary(), _NoopStreamStream()]

    def open_channel() -> Any:
        if route == "interceptors":
            return grpc.aio.insecure_channel(
                target, interceptors=lazygrpc.aio_client_interceptors()
            )
        inner = grpc.aio.insecure_channel(
            target, interceptors=others if route == "channel-over-interceptors" else None
        )
        return lazygrpc.intercept_aio_channel(inner)

    async def requests(tag: str) -> Any:
        yield b"first"
        yield tag.encode()

    async def go() -> list[tuple[str, Any]]:
        back = []
        async with open_channel() as channel:
            for i in range(10):
                for kind in ("uu", "us", "su", "ss"):
                    tag = f"{route}-{kind}-{i}"
                    method = f"/t.Kinds/{kind.upper()}"
                    with lazygrpc.session(f"s-{tag}"):
                        lazygrpc.globals["in"] = i
                        if kind == "uu":
                            await channel.unary_unary(method)(tag.encode(), timeout=5)
                        elif kind == "us":
                            _ = [m async for m in channel.unary_stream(method)(tag.encode())]
                        elif kind == "su":
                            call = channel.stream_unary(method)(request_iterator=requests(tag))
                            await call
                        else:
                            call = channel.stream_stream(method)(requests(tag), 5)  # timeout
                            _ = [m async for m in call]
                        back.append((tag, lazygrpc.globals.get("back")))
        return back

    back = asyncio.run(go())
    assert back == [(tag, f"{tag.split('-')[-2]}:{tag}") for tag, _ in back]
    assert len(back) == 40
    for tag, _ in back:
        assert seen[tag] == (f"s-{tag}", int(tag.rsplit("-", 1)[1]))


def test_an_ended_aio_calls_trailers_are_read_without_awaiting(mesh: Mesh) -> None:
    """lazygrpc's clients read a finished call's trailers from its status (no coroutine);
    what they read is what grpc.aio's `trailing_metadata()` returns, and a call that has not
    ended (or is not grpc's own call object) says so with None."""
    from lazygrpc.client.seams import ended_trailers
    from lazygrpc.core.baggage import UPDATE_TRAILER
    from lazygrpc.core.values import to_value
    from lazygrpc.v1 import module_pb2, module_pb2_grpc

    target = mesh.entry.removeprefix("grpc://")
    request = module_pb2.CallRequest(module="run", input=to_value("ended"))

    async def go() -> tuple[Any, Any, Any]:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = module_pb2_grpc.ModuleServiceStub(channel)
            call = stub.Call(request, metadata=(("lazy-session-id", "ended-1"),))
            before = ended_trailers(call)
            await call
            return before, ended_trailers(call), tuple(await call.trailing_metadata())

    before, fast, public = asyncio.run(go())
    assert before is None
    assert fast == public
    assert [k for k, _ in fast] == [UPDATE_TRAILER]
    assert ended_trailers(object()) is None


def test_refused_headers_come_with_status_details(servers: Any) -> None:
    from grpc_status import rpc_status

    from lazygrpc.core.values import to_value
    from lazygrpc.v1 import module_pb2, module_pb2_grpc

    mesh = Mesh(servers, "aio")
    with grpc.insecure_channel(mesh.entry.removeprefix("grpc://")) as ch:
        stub = module_pb2_grpc.ModuleServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Call(
                module_pb2.CallRequest(module="run", input=to_value("x")),
                metadata=[("baggage", "lazy.k=%7B")],
                timeout=10,
            )
    status = rpc_status.from_call(info.value)
    assert status is not None and status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message.startswith("baggage:")
    assert len(status.details) == 2  # ErrorInfo and CallChain


def test_a_server_started_inside_a_session_block_gives_each_call_its_own_session() -> None:
    """A call's session comes from its own headers, even where the server's task inherited
    a session bound around `start()`."""

    async def whose(x: str) -> str:
        assert current_call() is not None
        return f"{lazygrpc.session_id()}:{lazygrpc.globals.get('user')}"

    async def untouched(x: str) -> str:
        return x

    async def main() -> None:
        with lazygrpc.session("outer", user="server-side"):
            server = lazygrpc.Server()
            server.add_modules({"whose": whose, "untouched": untouched})
            await server.start()
        try:
            with lazygrpc.session("inner-1", user="ann"):
                got = await lazygrpc.connect(f"grpc://{server.address}/whose").acall("x")
                assert got == "inner-1:ann"
                assert (
                    await lazygrpc.connect(f"grpc://{server.address}/untouched").acall("y") == "y"
                )
            # No session header: a fresh id, not the one bound around start().
            got = await lazygrpc.connect(f"grpc://{server.address}/whose").acall("x")
            assert not got.startswith("outer") and got.endswith(":None")
        finally:
            await server.stop(0)
            await lazygrpc.client.channels.aclose_all()

    asyncio.run(main())


#: Flat globals as a peer may write them: lazygrpc itself would write `1.5` and `100.0`, so
#: only a hop that forwards the header as it came sends these bytes on.
AS_IT_CAME = "lazy.user=%22ann%22,lazy.price=1.50,lazy.n=1E2,lazy.tags=[%22a%22%2C1]"


def test_a_hop_forwards_the_globals_it_never_reads_byte_for_byte(servers: Any) -> None:
    """docs/sessions.md: a global nobody reads is forwarded byte for byte as it came; while
    no global changes (reading a scalar changes none) that is the whole `baggage` header."""
    from lazygrpc.core.values import to_value
    from lazygrpc.server.modules import SERVICE_NAME
    from lazygrpc.v1 import module_pb2, module_pb2_grpc

    leaf_saw: dict[str, dict[str, Any]] = {}

    class Leaf(module_pb2_grpc.ModuleServiceServicer):
        async def Call(self, request: Any, context: Any) -> Any:
            key = request.input.string_value
            md = list(context.invocation_metadata())
            leaf_saw[key] = {
                "baggage": [v for k, v in md if k == "baggage"],
                "sid": lazygrpc.session_id(),
                "globals": dict(lazygrpc.globals),
            }
            return module_pb2.CallResponse(output=to_value("leaf"))

    async def build_leaf() -> lazygrpc.Server:
        s = lazygrpc.Server(name="leaf")
        s.add_service(SERVICE_NAME, module_pb2_grpc.add_ModuleServiceServicer_to_server, Leaf())
        await s.start()
        return s

    leaf_server = servers.lt.run(build_leaf())
    servers.started.append(leaf_server)
    leaf = lazygrpc.connect(f"grpc://127.0.0.1:{leaf_server.port}/leaf")

    async def untouched(x: str) -> Any:
        return await leaf.acall(x)

    async def reads_a_scalar(x: str) -> Any:
        assert lazygrpc.globals["user"] == "ann"
        return await leaf.acall(x)

    async def reads_a_list(x: str) -> Any:
        assert lazygrpc.globals["tags"] == ["a", 1]  # handed out, not changed
        return await leaf.acall(x)

    middle = servers.modules(
        {"untouched": untouched, "reads_a_scalar": reads_a_scalar, "reads_a_list": reads_a_list}
    ).removeprefix("grpc://")
    md = [("lazy-session-id", "as-it-came"), ("baggage", AS_IT_CAME)]
    with grpc.insecure_channel(middle) as ch:
        stub = module_pb2_grpc.ModuleServiceStub(ch)
        for module in ("untouched", "reads_a_scalar", "reads_a_list"):
            request = module_pb2.CallRequest(module=module, input=to_value(module))
            assert stub.Call(request, metadata=md, timeout=10).output.string_value == "leaf"

    expected = {"user": "ann", "price": 1.5, "n": 100.0, "tags": ["a", 1]}
    for module in ("untouched", "reads_a_scalar", "reads_a_list"):
        assert leaf_saw[module]["sid"] == "as-it-came"
        assert leaf_saw[module]["globals"] == expected
    assert leaf_saw["untouched"]["baggage"] == [AS_IT_CAME]
    assert leaf_saw["reads_a_scalar"]["baggage"] == [AS_IT_CAME]
    # The list was handed out, so it may be encoded afresh; the globals not read still go
    # on as they came.
    (forwarded,) = leaf_saw["reads_a_list"]["baggage"]
    assert {"lazy.user=%22ann%22", "lazy.price=1.50", "lazy.n=1E2"} <= set(forwarded.split(","))
