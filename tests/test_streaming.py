"""Acceptance tests of streaming through the broker, with real servers on loopback.

Relay of intermediate events across three hops, backpressure (direct and through a relay),
memory under 200 stalled streams (a subprocess server), cancellation reaching sync and async
producers, coalescing, errors after queued events, broker stats and `BrokerService`.
Measured figures are printed (`pytest -s` shows them).
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import psutil
import pytest
from conftest import Servers, start_cli

import lazygrpc
from lazygrpc import broker
from lazygrpc.client import channels
from lazygrpc.client.channels import channel_options
from lazygrpc.core.errors import RemoteError, StreamClosed
from lazygrpc.core.values import from_value, to_value
from lazygrpc.server import modules
from lazygrpc.v1 import (
    broker_pb2,
    broker_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    module_pb2,
    module_pb2_grpc,
)

pytestmark = pytest.mark.timeout(30)

KIB = 1 << 10
MIB = 1 << 20
#: Options of the "external" test client: a bounded window, as the issue prescribes.
CLIENT_OPTIONS = [("grpc.http2.bdp_probe", 0)]
#: grpc core's default `grpc.http2.lookahead_bytes` (DESIGN.md: 64 KiB with bdp_probe=0).
DEFAULT_LOOKAHEAD = 64 * KIB
#: With bdp_probe=0 grpc core lets more than `lookahead` of a stream be in flight: the receiver
#: tops the window up before it is used up. Measured here with 1 KiB events: a sync receiver
#: up to ~1.5 x lookahead (64 KiB → 94 events, 256 KiB → 375, 1 MiB → ~1,500), an aio
#: receiver (the relay hop) now and then up to ~1.85 x. One window is taken as 2 x lookahead.
WINDOW_FACTOR = 2.0
#: Events a hop holds outside its topic and the window: the one the handler popped and is
#: writing, one partly sent (a frame may start with any window left), one the producer holds.
HOP_SLACK = 3
WAKE_LIMIT = 0.100  # the bound for StreamClosed reaching a producer


def address(url: str) -> str:
    return url.removeprefix("grpc://")


def window_events(lookahead: int, event_bytes: int) -> int:
    """Events of `event_bytes` on the wire that one stream's HTTP/2 window lets through."""
    return math.ceil(WINDOW_FACTOR * lookahead / (event_bytes + 5))  # + gRPC message prefix


def stream_request(module: str, value: Any = None, **kwargs: Any) -> module_pb2.CallRequest:
    req = module_pb2.CallRequest(module=module)
    if value is not None:
        req.input.CopyFrom(to_value(value))
    for k, v in kwargs.items():
        req.kwargs.fields[k].CopyFrom(to_value(v))
    return req


def body(ev: module_pb2.Event) -> tuple[str, Any]:
    kind = ev.WhichOneof("body")
    assert kind is not None
    return kind, from_value(getattr(ev, kind))


def on_loop(servers: Servers, fn: Callable[[], Any]) -> Any:
    """Run `fn` on the servers' event loop thread and return its result."""

    async def run() -> Any:
        return fn()

    return servers.call(run)


def producer_frames(names: tuple[str, ...]) -> list[str]:
    """Module pool threads still running any of the functions `names` (or a blocked put)."""
    frames = sys._current_frames()
    busy = []
    for t in threading.enumerate():
        if not t.name.startswith("lazygrpc-module") or t.ident not in frames:
            continue
        f: Any = frames[t.ident]
        while f is not None:
            if f.f_code.co_name in (*names, "_drive_sync", "put"):
                busy.append(f"{t.name}: {f.f_code.co_name}")
                break
            f = f.f_back
    return busy


def wait_idle(names: tuple[str, ...], timeout: float = 2.0) -> float:
    """Wait until no pool thread runs a producer; returns how long that took."""
    t0 = time.monotonic()
    while busy := producer_frames(names):
        assert time.monotonic() - t0 < timeout, f"producer threads still busy: {busy}"
        time.sleep(0.002)
    return time.monotonic() - t0


GRPC_ACCEPT_TASKS = ("_request_registered_call", "_request_call")


def wait_tasks_done(servers: Servers, before: set[asyncio.Task[Any]]) -> list[str]:
    """Wait for every task started on the server loop since `before`; returns any left."""

    async def run() -> list[str]:
        me = asyncio.current_task()
        new = [t for t in asyncio.all_tasks() if t not in before and t is not me]
        if new:
            await asyncio.wait(new, timeout=2)
        left = [t for t in new if not t.done()]
        # grpc's own accept loop: one task always waits for the next call.
        return [
            f"{t.get_name()} {t.get_stack()}"
            for t in left
            if not any(f.f_code.co_name in GRPC_ACCEPT_TASKS for f in t.get_stack())
        ]

    return servers.call(run)


def loop_tasks(servers: Servers) -> set[asyncio.Task[Any]]:
    return on_loop(servers, asyncio.all_tasks)  # type: ignore[no-any-return]


def assert_broker_empty(servers: Servers) -> None:
    """Every topic of this process's servers is closed and freed."""
    s = lazygrpc.broker_stats()
    assert (s.open_topics, s.queued_events, s.blocked_producers) == (0, 0, 0), s


# -- relay across three hops ----------------------------------------------------------------


def three_hops(servers: Servers, style: str) -> tuple[str, threading.Event]:
    """entry → top → mid → deep; `deep` emits, then holds its result until the entry saw
    the events (`seen`), so they provably arrive before hop 3's result."""
    seen = threading.Event()
    if style == "sync":

        def deep(x: str) -> str:
            lazygrpc.emit({"step": 1, "at": "deep"})
            lazygrpc.emit("searching", source="retriever")
            assert seen.wait(10), "the entry never got hop 3's events"
            return f"deep({x})"

        url3 = servers.modules({"deep": deep})
        hop3 = lazygrpc.connect(f"{url3}/deep")

        def mid(x: str) -> str:
            return f"mid({hop3(x)})"

        url2 = servers.modules({"mid": mid})
        hop2 = lazygrpc.connect(f"{url2}/mid")

        def top(x: str) -> str:
            return f"top({hop2(x)})"

    else:

        async def deep(x: str) -> str:  # type: ignore[misc]
            await lazygrpc.aemit({"step": 1, "at": "deep"})
            await lazygrpc.aemit("searching", source="retriever")
            assert await asyncio.to_thread(seen.wait, 10), "the entry never got hop 3's events"
            return f"deep({x})"

        url3 = servers.modules({"deep": deep})
        hop3 = lazygrpc.connect(f"{url3}/deep")

        async def mid(x: str) -> str:  # type: ignore[misc]
            return f"mid({await hop3.acall(x)})"

        url2 = servers.modules({"mid": mid})
        hop2 = lazygrpc.connect(f"{url2}/mid")

        async def top(x: str) -> str:  # type: ignore[misc]
            return f"top({await hop2.acall(x)})"

    url1 = servers.modules({"top": top})
    return f"{url1}/top", seen


EXPECTED_RELAYED = [
    ("intermediate", "mid/deep", {"step": 1, "at": "deep"}),
    ("intermediate", "mid/deep/retriever", "searching"),
    ("result", "top", "top(mid(deep(q)))"),
]


@pytest.mark.parametrize("style", ["sync", "async"])
def test_hop3_events_reach_a_sync_entry_client_before_hop3_result(
    servers: Servers, style: str
) -> None:
    url, seen = three_hops(servers, style)
    got = []
    t0 = time.monotonic()
    for ev in lazygrpc.connect(url).stream("q"):
        got.append((ev.kind, ev.source, ev.value))
        if ev.kind == "intermediate" and len(got) == 2:
            print(f"\n[{style} hops, sync client] hop 3 events after {time.monotonic() - t0:.3f}s")
            seen.set()  # only now may hop 3 return its result
    assert got == EXPECTED_RELAYED
    assert_broker_empty(servers)


@pytest.mark.parametrize("style", ["sync", "async"])
async def test_hop3_events_reach_an_asyncio_entry_client_before_hop3_result(
    servers: Servers, style: str
) -> None:
    url, seen = three_hops(servers, style)
    got = []
    try:
        async for ev in lazygrpc.connect(url).astream("q"):
            got.append((ev.kind, ev.source, ev.value))
            if ev.kind == "intermediate" and len(got) == 2:
                seen.set()
    finally:
        await channels.aclose_all()
    assert got == EXPECTED_RELAYED
    assert_broker_empty(servers)


# -- backpressure ---------------------------------------------------------------------------

TOPIC_EVENTS = 32
READ_EVERY = 0.050
READ_FOR = 2.0


class Flood:
    """A module emitting 1 KiB events as fast as it can, counting those that went in."""

    def __init__(self, style: str) -> None:
        self.emitted = 0
        self.closed = threading.Event()
        self.payload = "x" * KIB
        self.fn: Callable[..., Any]
        if style == "sync":

            def flood() -> None:
                try:
                    while True:
                        lazygrpc.emit(self.payload)
                        self.emitted += 1
                except StreamClosed:
                    self.closed.set()
                    raise

            self.fn = flood
        else:

            async def aflood() -> None:
                try:
                    while True:
                        await lazygrpc.aemit(self.payload)
                        self.emitted += 1
                except StreamClosed:
                    self.closed.set()
                    raise

            self.fn = aflood


def read_slowly(url: str, module: str) -> tuple[grpc.Future, int, int]:
    """A bdp_probe=0 client reading one event every 50 ms for 2 s; (call, events, size)."""
    channel = grpc.insecure_channel(address(url), CLIENT_OPTIONS)
    call = module_pb2_grpc.ModuleServiceStub(channel).Stream(stream_request(module), timeout=20)
    got = size = 0
    t0 = time.monotonic()
    for ev in call:
        got += 1
        size = ev.ByteSize()
        if time.monotonic() - t0 >= READ_FOR:
            break
        time.sleep(READ_EVERY)  # the slow reader
    call._lazy_channel = channel  # type: ignore[attr-defined]  # closed by finish()
    return call, got, size


def finish(call: Any, flood: Flood) -> None:
    call.cancel()
    assert flood.closed.wait(5), "the producer did not see StreamClosed"
    call._lazy_channel.close()


@pytest.mark.parametrize("style", ["sync", "async"])
def test_backpressure_blocks_a_producer_ahead_by_at_most_topic_plus_window(
    servers: Servers, style: str
) -> None:
    flood = Flood(style)
    url = servers.modules({"flood": flood.fn}, topic_events=TOPIC_EVENTS)
    call, got, size = read_slowly(url, "flood")
    try:
        stats = lazygrpc.broker_stats()
        ahead = flood.emitted - got
        bound = TOPIC_EVENTS + window_events(DEFAULT_LOOKAHEAD, size) + HOP_SLACK
        print(
            f"\n[{style}] read {got} events of {size} B in {READ_FOR:g}s; producer emitted "
            f"{flood.emitted}, ahead by {ahead} (bound {bound} = topic {TOPIC_EVENTS} + window "
            f"{window_events(DEFAULT_LOOKAHEAD, size)} + {HOP_SLACK}); {stats}"
        )
        assert stats.blocked_producers == 1 and stats.open_topics == 1
        assert stats.queued_events == TOPIC_EVENTS
        assert TOPIC_EVENTS < ahead <= bound
    finally:
        finish(call, flood)
    assert_broker_empty(servers)


@pytest.mark.parametrize("style", ["sync", "async"])
def test_backpressure_through_a_relay_blocks_the_hop2_producer(
    servers: Servers, style: str
) -> None:
    flood = Flood(style)
    url2 = servers.modules({"flood": flood.fn}, topic_events=TOPIC_EVENTS)
    hop2 = lazygrpc.connect(f"{url2}/flood")
    if style == "sync":

        def relay() -> Any:
            return hop2()
    else:

        async def relay() -> Any:  # type: ignore[misc]
            return await hop2.acall()

    url1 = servers.modules({"relay": relay}, topic_events=TOPIC_EVENTS)
    call, got, size = read_slowly(url1, "relay")
    try:
        stats = lazygrpc.broker_stats()
        ahead = flood.emitted - got
        entry_window = window_events(DEFAULT_LOOKAHEAD, size)
        # The relay channel is lazygrpc's own (channel_options(): bdp off, 256 KiB).
        relay_lookahead = dict(channel_options())["grpc.http2.lookahead_bytes"]
        relay_window = window_events(relay_lookahead, size + len("flood/") - len("flood"))
        bound = 2 * (TOPIC_EVENTS + HOP_SLACK) + entry_window + relay_window
        print(
            f"\n[{style} relay] read {got} events in {READ_FOR:g}s; hop-2 producer emitted "
            f"{flood.emitted}, ahead by {ahead} (bound {bound} = 2 topics of {TOPIC_EVENTS} + "
            f"entry window {entry_window} + relay window {relay_window} + 2x{HOP_SLACK}); "
            f"{stats}"
        )
        # Both the hop-2 producer and the relay at hop 1 wait on full topics.
        assert stats.open_topics == 2 and stats.blocked_producers == 2
        assert stats.queued_events == 2 * TOPIC_EVENTS
        assert ahead <= bound
    finally:
        finish(call, flood)
    assert_broker_empty(servers)


# -- memory: 200 stalled streams on a subprocess server -------------------------------------

FLOOD_FILE = "tests/fixtures/stream_flood.py"


def run_memory(
    streams: int, seconds: float, topic_events: int, topic_bytes: int, cycles: int = 1
) -> None:
    """`streams` streams whose clients stop reading after the first event; producers try to
    emit 1 KiB events for `seconds`. Server RSS must grow by less than the topics' bounds plus
    50 MiB; then every stream is cancelled and the broker returns to zero topics. `cycles`
    repeats that on the same server, against the first baseline (a leak adds up)."""
    proc, addr = start_cli(
        "serve",
        f"{FLOOD_FILE}:flood_sync",
        f"{FLOOD_FILE}:flood_async",
        "--topic-events",
        str(topic_events),
        "--topic-bytes",
        str(topic_bytes),
    )
    try:
        server = psutil.Process(proc.pid)

        async def run() -> None:
            async with grpc.aio.insecure_channel(addr, options=CLIENT_OPTIONS) as ch:
                stub = module_pb2_grpc.ModuleServiceStub(ch)
                bstub = broker_pb2_grpc.BrokerServiceStub(ch)
                # Warm up (imports, first thread) so the baseline is the idle server.
                warm = stub.Stream(stream_request("flood_sync", seconds=0.0))
                assert [body(ev)[0] async for ev in warm] == ["result"]
                base = server.memory_info().rss
                for cycle in range(cycles):
                    t0 = time.monotonic()
                    calls = [
                        stub.Stream(
                            stream_request(
                                "flood_sync" if i % 2 else "flood_async", seconds=seconds
                            )
                        )
                        for i in range(streams)
                    ]
                    firsts = await asyncio.gather(*(c.read() for c in calls))  # then stop reading
                    assert all(body(ev)[0] == "intermediate" for ev in firsts)
                    peak = base
                    while (left := seconds - (time.monotonic() - t0)) > 0:
                        peak = max(peak, server.memory_info().rss)
                        await asyncio.sleep(min(0.2, left))  # sampling RSS while producers push
                    peak = max(peak, server.memory_info().rss)
                    stats = await bstub.GetBrokerStats(broker_pb2.GetBrokerStatsRequest())
                    growth = peak - base
                    limit = streams * topic_bytes + 50 * MIB
                    print(
                        f"\n[cycle {cycle}] {streams} stalled streams for {seconds:g}s: "
                        f"server RSS {base / MIB:.1f} → peak {peak / MIB:.1f} MiB "
                        f"(+{growth / MIB:.1f} MiB, limit "
                        f"{limit / MIB:.1f} MiB); open={stats.open_topics} "
                        f"queued={stats.queued_events} ({stats.queued_bytes / MIB:.1f} MiB) "
                        f"blocked={stats.blocked_producers} published={stats.published_events}"
                    )
                    assert stats.open_topics == streams
                    assert stats.blocked_producers == streams  # every producer is held back
                    assert stats.queued_bytes <= streams * topic_bytes
                    assert growth < limit
                    t1 = time.monotonic()
                    for c in calls:
                        c.cancel()
                    while (
                        stats := await bstub.GetBrokerStats(broker_pb2.GetBrokerStatsRequest())
                    ).open_topics:
                        assert time.monotonic() - t1 < 5, f"topics left after cancel: {stats}"
                        await asyncio.sleep(0.01)
                    print(
                        f"all {streams} cancelled, zero topics after {time.monotonic() - t1:.3f}s"
                    )
                    assert (stats.queued_events, stats.blocked_producers) == (0, 0)

        asyncio.run(run())
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


@pytest.mark.timeout(30)
def test_memory_of_200_stalled_streams_is_bounded() -> None:
    run_memory(streams=200, seconds=5.0, topic_events=64, topic_bytes=64 * KIB)


# -- cancel ---------------------------------------------------------------------------------


class Watched:
    """Producers that record what stopped them, when, and that their cleanup ran."""

    NAMES = ("gen_sync", "emit_sync")

    def __init__(self) -> None:
        self.stopped_by: dict[str, str] = {}
        self.stopped_at: dict[str, float] = {}
        self.done = {n: threading.Event() for n in ("gen_sync", "emit_sync", "gen_async")}
        self.done["emit_async"] = threading.Event()

    def _stop(self, name: str, exc: BaseException) -> None:
        self.stopped_at[name] = time.monotonic()
        self.stopped_by[name] = type(exc).__name__

    def modules(self) -> dict[str, Callable[..., Any]]:
        def gen_sync() -> Iterator[str]:
            try:
                while True:
                    yield "tok "
            except BaseException as exc:
                self._stop("gen_sync", exc)
                raise
            finally:
                self.done["gen_sync"].set()

        def emit_sync() -> None:
            try:
                while True:
                    lazygrpc.emit("step")
            except BaseException as exc:
                self._stop("emit_sync", exc)
                raise
            finally:
                self.done["emit_sync"].set()

        async def gen_async() -> AsyncIterator[str]:
            try:
                while True:
                    yield "tok "
            except BaseException as exc:
                self._stop("gen_async", exc)
                raise
            finally:
                self.done["gen_async"].set()

        async def emit_async() -> None:
            try:
                while True:
                    await lazygrpc.aemit("step")
            except BaseException as exc:
                self._stop("emit_async", exc)
                raise
            finally:
                self.done["emit_async"].set()

        return {
            "gen_sync": gen_sync,
            "emit_sync": emit_sync,
            "gen_async": gen_async,
            "emit_async": emit_async,
        }


@pytest.mark.parametrize("module", ["gen_sync", "emit_sync", "gen_async", "emit_async"])
def test_cancel_raises_stream_closed_in_the_producer_and_leaves_nothing(
    servers: Servers, module: str
) -> None:
    w = Watched()
    url = servers.modules(w.modules(), topic_events=16)
    before = loop_tasks(servers)
    channel = grpc.insecure_channel(address(url), CLIENT_OPTIONS)
    try:
        call = module_pb2_grpc.ModuleServiceStub(channel).Stream(stream_request(module))
        for i, _ in enumerate(call):
            if i == 20:
                break
        t0 = time.monotonic()
        call.cancel()
        assert w.done[module].wait(5), "the producer never stopped"
        took = w.stopped_at[module] - t0
        left_tasks = wait_tasks_done(servers, before)
        idle = wait_idle((module, "_drive_sync"))
        assert modules.active_producers() == 0
        print(
            f"\n[{module}] {w.stopped_by[module]} {took * 1000:.1f} ms after cancel; "
            f"pool threads idle after {idle * 1000:.1f} ms; tasks left {left_tasks}"
        )
        assert w.stopped_by[module] == "StreamClosed"
        assert took < WAKE_LIMIT
        assert left_tasks == []
        assert_broker_empty(servers)
    finally:
        channel.close()


async def test_cancel_from_an_asyncio_client(servers: Servers) -> None:
    w = Watched()
    url = servers.modules(w.modules(), topic_events=16)
    async with grpc.aio.insecure_channel(address(url), options=CLIENT_OPTIONS) as ch:
        call = module_pb2_grpc.ModuleServiceStub(ch).Stream(stream_request("emit_async"))
        for _ in range(20):
            await call.read()
        t0 = time.monotonic()
        call.cancel()
        assert await asyncio.to_thread(w.done["emit_async"].wait, 5)
    took = w.stopped_at["emit_async"] - t0
    print(f"\n[aio client] StreamClosed {took * 1000:.1f} ms after cancel")
    assert w.stopped_by["emit_async"] == "StreamClosed" and took < WAKE_LIMIT


# -- coalescing -----------------------------------------------------------------------------

DELTAS = 5000


def deltas_module(done: threading.Event, lockstep: threading.Semaphore | None = None) -> Any:
    def words(n: int) -> Iterator[str]:
        for i in range(n):
            if lockstep is not None:
                assert lockstep.acquire(timeout=10)  # the reader took the previous one
            yield f"w{i} "
        done.set()

    return words


def test_slow_reader_gets_coalesced_text(servers: Servers) -> None:
    done = threading.Event()
    url = servers.modules({"words": deltas_module(done)})
    with grpc.insecure_channel(address(url), CLIENT_OPTIONS) as ch:
        call = module_pb2_grpc.ModuleServiceStub(ch).Stream(
            stream_request("words", DELTAS), timeout=20
        )
        events = []
        for ev in call:
            events.append(body(ev))
            if len(events) == 1:
                # A slow reader: nothing more until the producer is done.
                assert done.wait(10)
    deltas = [v for k, v in events if k == "delta"]
    text = "".join(f"w{i} " for i in range(DELTAS))
    print(f"\nslow reader: {DELTAS} deltas arrived as {len(deltas)} messages")
    assert "".join(deltas) == text
    assert events[-1] == ("result", text)
    assert len(deltas) <= DELTAS / 10


def test_fast_reader_gets_each_delta_alone(servers: Servers) -> None:
    done = threading.Event()
    lockstep = threading.Semaphore(1)
    url = servers.modules({"words": deltas_module(done, lockstep)})
    n = 200
    deltas = []
    with grpc.insecure_channel(address(url), CLIENT_OPTIONS) as ch:
        for ev in module_pb2_grpc.ModuleServiceStub(ch).Stream(
            stream_request("words", n), timeout=20
        ):
            kind, value = body(ev)
            if kind == "delta":
                deltas.append(value)
                lockstep.release()
    assert deltas == [f"w{i} " for i in range(n)]


def test_slow_reader_of_a_model_gets_coalesced_identical_text(servers: Servers) -> None:
    from lazygrpc.backends.base import SamplingParams

    words = " ".join(f"w{i}" for i in range(DELTAS))
    url = servers.model("echo", presets=SamplingParams(max_tokens=DELTAS))
    with grpc.insecure_channel(address(url), CLIENT_OPTIONS) as ch:
        call = model_pb2_grpc.ModelServiceStub(ch).Generate(
            model_pb2.GenerateRequest(input=words), timeout=20
        )
        chunks = []
        for chunk in call:
            chunks.append(chunk)
            if len(chunks) == 1:
                time.sleep(0.5)  # the slow reader
    texts = [c.text for c in chunks if c.text]
    print(f"\nmodel slow reader: {DELTAS} tokens arrived as {len(texts)} chunks")
    assert "".join(texts) == words
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[-1].usage.completion_tokens == DELTAS
    assert len(texts) <= DELTAS / 10


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["sync", "async"])
def test_a_failing_producer_ends_the_stream_after_its_queued_events(
    servers: Servers, style: str
) -> None:
    if style == "sync":

        def fails() -> Iterator[str]:
            lazygrpc.emit({"progress": 1})
            yield "partial "
            yield "answer"
            raise ValueError("model fell over")
    else:

        async def fails() -> AsyncIterator[str]:  # type: ignore[misc]
            await lazygrpc.aemit({"progress": 1})
            yield "partial "
            yield "answer"
            raise ValueError("model fell over")

    url = servers.modules({"fails": fails})
    got = []
    with pytest.raises(RemoteError) as info:
        for ev in lazygrpc.connect(f"{url}/fails").stream():
            got.append((ev.kind, ev.value))
    assert got[0] == ("intermediate", {"progress": 1})
    assert "".join(v for k, v in got if k == "delta") == "partial answer"
    err = info.value
    assert err.remote_type == "ValueError" and "model fell over" in err.message
    assert [f.method for f in err.chain] == ["fails"]
    assert_broker_empty(servers)


def test_a_failure_two_hops_down_keeps_its_chain_after_relayed_events(servers: Servers) -> None:
    def deep() -> str:
        lazygrpc.emit("working")
        raise KeyError("missing")

    url2 = servers.modules({"deep": deep})
    hop2 = lazygrpc.connect(f"{url2}/deep")

    def top() -> Any:
        return hop2()

    url1 = servers.modules({"top": top})
    got = []
    with pytest.raises(RemoteError) as info:
        for ev in lazygrpc.connect(f"{url1}/top").stream():
            got.append((ev.kind, ev.source, ev.value))
    assert got == [("intermediate", "deep", "working")]
    assert [f.method for f in info.value.chain] == ["top", "deep"]
    assert info.value.chain[-1].error_type == "KeyError"


# -- emit outside a stream, stats -----------------------------------------------------------


def test_emit_outside_a_streaming_call_returns_false(servers: Servers) -> None:
    def unary(x: int) -> bool:
        return lazygrpc.emit("ignored")

    async def aunary(x: int) -> bool:
        return await lazygrpc.aemit("ignored")

    url = servers.modules({"unary": unary, "aunary": aunary})
    assert lazygrpc.emit("x") is False
    assert lazygrpc.connect(f"{url}/unary")(1) is False
    assert lazygrpc.connect(f"{url}/aunary")(1) is False
    assert_broker_empty(servers)


def test_broker_stats_from_python_and_grpc(servers: Servers) -> None:
    flood = Flood("sync")
    url = servers.modules({"flood": flood.fn}, topic_events=8)
    before = lazygrpc.broker_stats()
    with grpc.insecure_channel(address(url), CLIENT_OPTIONS) as ch:
        bstub = broker_pb2_grpc.BrokerServiceStub(ch)
        call = module_pb2_grpc.ModuleServiceStub(ch).Stream(stream_request("flood"))
        next(call)  # then stop reading: the producer fills the window, then the topic
        deadline = time.monotonic() + 5
        while True:
            py = lazygrpc.broker_stats()
            rpc = bstub.GetBrokerStats(broker_pb2.GetBrokerStatsRequest())
            if (py.queued_events, py.blocked_producers, rpc.queued_events) == (8, 1, 8):
                break  # the window is full: nothing moves any more
            assert time.monotonic() < deadline, (py, rpc)
        print(f"\nPython: {py}\ngRPC: {rpc}".rstrip())
        assert (py.open_topics, py.queued_events, py.blocked_producers) == (1, 8, 1)
        assert (rpc.open_topics, rpc.queued_events, rpc.blocked_producers) == (1, 8, 1)
        assert rpc.queued_bytes == py.queued_bytes > 8 * KIB
        assert rpc.published_events >= py.published_events > before.published_events
        call.cancel()
        assert flood.closed.wait(5)
        after = bstub.GetBrokerStats(broker_pb2.GetBrokerStatsRequest())
        assert (after.open_topics, after.queued_events, after.blocked_producers) == (0, 0, 0)
        assert after.published_events >= rpc.published_events


# -- BrokerService Publish / Subscribe ------------------------------------------------------


def test_publish_into_a_subscribed_topic(servers: Servers) -> None:
    url = servers.modules({"noop": lambda: None})
    with (
        grpc.insecure_channel(address(url), CLIENT_OPTIONS) as sub_ch,
        grpc.insecure_channel(address(url), CLIENT_OPTIONS) as pub_ch,
    ):
        sub = broker_pb2_grpc.BrokerServiceStub(sub_ch).Subscribe(
            broker_pb2.SubscribeRequest(topic="jobs/42"), timeout=20
        )
        # Sent once the topic is open: Publish (with the topic's token) is accepted from now.
        token = dict(sub.initial_metadata())["lazy-topic-token"]
        values = [{"step": 1}, "two", 3.5]
        resp = broker_pb2_grpc.BrokerServiceStub(pub_ch).Publish(
            iter(
                broker_pb2.PublishRequest(topic="jobs/42", source="worker", value=to_value(v))
                for v in values
            ),
            timeout=10,
            metadata=(("lazy-topic-token", token),),
        )
        assert resp.accepted == 3
        got = [(ev.source, *body(ev)) for _, ev in zip(values, sub, strict=False)]
        assert got == [("worker", "intermediate", v) for v in values]
        assert lazygrpc.broker_stats().open_topics == 1
        sub.cancel()
    # Once the subscriber is gone the name is free again and publishing to it is refused.
    deadline = time.monotonic() + 5
    while lazygrpc.broker_stats().open_topics:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    assert broker.BROKER.named("jobs/42") is None


def test_publish_to_an_unknown_topic_is_not_found(servers: Servers) -> None:
    url = servers.modules({"noop": lambda: None})
    with grpc.insecure_channel(address(url)) as ch:
        with pytest.raises(grpc.RpcError) as info:
            broker_pb2_grpc.BrokerServiceStub(ch).Publish(
                iter([broker_pb2.PublishRequest(topic="nobody", value=to_value(1))]), timeout=10
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "nobody" in info.value.details()


async def test_subscribe_twice_to_one_name_is_refused(servers: Servers) -> None:
    url = servers.modules({"noop": lambda: None})
    async with grpc.aio.insecure_channel(address(url)) as ch:
        stub = broker_pb2_grpc.BrokerServiceStub(ch)
        first = stub.Subscribe(broker_pb2.SubscribeRequest(topic="dup"))
        await first.initial_metadata()
        second = stub.Subscribe(broker_pb2.SubscribeRequest(topic="dup"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await second.read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        first.cancel()
