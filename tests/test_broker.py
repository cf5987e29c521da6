"""Unit tests of the broker's `Topic` (no server): bounds, coalescing, finish, cancel, stats."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazygrpc
from lazygrpc import broker
from lazygrpc.broker import DELTA, INTERMEDIATE, Broker, Item, Topic
from lazygrpc.broker.topic import LOOP_OVERFILL
from lazygrpc.core.context import CallScope, bind_call, unbind_call
from lazygrpc.core.errors import ResourceExhausted, StreamClosed
from lazygrpc.core.session import Session
from lazygrpc.core.values import from_value, to_value

pytestmark = pytest.mark.timeout(20)

#: How long a woken producer may take to see `StreamClosed` (the issue's figure).
WAKE_LIMIT = 0.100


def delta(text: str, source: str = "m") -> Item:
    return Item.of(DELTA, source, text)


def inter(value: Any, source: str = "m") -> Item:
    return Item.of(INTERMEDIATE, source, value)


def plain(item: Item) -> tuple[int, str, Any]:
    """An item without its size, payload as a Python value."""
    kind, source, payload, _ = item
    return kind, source, payload if type(payload) is str else from_value(payload)


async def drain(topic: Topic) -> list[Item]:
    out = []
    while (item := await topic.get()) is not None:
        out.append(item)
    return out


class Producer(threading.Thread):
    """A sync producer on its own thread: puts `items`, records how it ended and when."""

    def __init__(self, topic: Topic, items: list[Item]) -> None:
        super().__init__(name="test-producer", daemon=True)
        self.topic = topic
        self.items = items
        self.put = 0
        self.error: BaseException | None = None
        self.ended_at = 0.0

    def run(self) -> None:
        try:
            for item in self.items:
                self.topic.put(item)
                self.put += 1
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()


async def until(predicate: Any, timeout: float = 5.0) -> None:
    """Wait (on the loop) for a condition another thread makes true; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


# -- items ----------------------------------------------------------------------------------


def test_item_of_keeps_text_deltas_as_str_and_encodes_the_rest() -> None:
    assert delta("abc") == (DELTA, "m", "abc", 11)
    kind, _, payload, nbytes = inter("abc")
    assert kind == INTERMEDIATE and type(payload) is not str
    assert nbytes == payload.ByteSize() + 8
    assert plain(Item.of(DELTA, "m", {"a": [1, 2]})) == (DELTA, "m", {"a": [1, 2]})
    with pytest.raises(TypeError):
        Item.of(INTERMEDIATE, "m", object())


def test_item_encoded_takes_a_value_as_it_is() -> None:
    value = to_value({"a": 1})
    assert Item.encoded(INTERMEDIATE, "relay", value) == (
        INTERMEDIATE,
        "relay",
        value,
        value.ByteSize() + 8,
    )
    # A relayed text delta stays a Value: it is not one that coalesces.
    assert type(Item.encoded(DELTA, "relay", to_value("t")).payload) is not str


# -- bounds ---------------------------------------------------------------------------------


async def test_sync_producer_blocks_at_the_event_bound_and_resumes_on_get() -> None:
    b = Broker()
    topic = b.open(max_events=4, max_bytes=1 << 20, coalesce_bytes=0)
    p = Producer(topic, [inter(i) for i in range(10)])
    p.start()
    await until(lambda: topic.blocked == 1)
    assert p.put == 4 and topic.queued()[0] == 4
    assert b.stats().blocked_producers == 1
    got = [plain(await topic.get())[2] for _ in range(10)]
    assert got == list(range(10))
    await asyncio.to_thread(p.join, 5)
    assert p.error is None and topic.blocked == 0
    b.close(topic)


async def test_sync_producer_blocks_at_the_byte_bound() -> None:
    b = Broker()
    topic = b.open(max_events=1000, max_bytes=1000, coalesce_bytes=0)
    items = [inter("x" * 300) for _ in range(5)]
    size = items[0][3]
    p = Producer(topic, items)
    p.start()
    await until(lambda: topic.blocked == 1)
    assert p.put == 1000 // size
    assert topic.queued() == (p.put, p.put * size)
    assert len(await drain_n(topic, 5)) == 5
    await asyncio.to_thread(p.join, 5)
    assert p.error is None
    b.close(topic)


async def drain_n(topic: Topic, n: int) -> list[Item]:
    return [item for _ in range(n) if (item := await topic.get()) is not None]


async def test_an_item_bigger_than_the_topic_goes_through_an_empty_topic() -> None:
    b = Broker()
    topic = b.open(max_events=4, max_bytes=100)
    await topic.aput(inter("y" * 500))
    assert topic.queued()[0] == 1
    assert plain(await topic.get())[2] == "y" * 500
    b.close(topic)


async def test_async_producer_awaits_while_full() -> None:
    b = Broker()
    topic = b.open(max_events=3)
    done: list[int] = []

    async def produce() -> None:
        for i in range(6):
            await topic.aput(inter(i))
            done.append(i)

    task = asyncio.create_task(produce())
    await until(lambda: topic.blocked == 1)
    assert done == [0, 1, 2]
    assert [plain(await topic.get())[2] for _ in range(6)] == list(range(6))
    await asyncio.wait_for(task, 5)
    b.close(topic)


async def test_sync_put_on_the_loop_thread_overfills_then_refuses() -> None:
    # Blocking the loop thread would stall the consumer of this very topic.
    b = Broker()
    topic = b.open(max_events=2)
    for i in range(LOOP_OVERFILL * 2):
        topic.put(inter(i))
    with pytest.raises(ResourceExhausted, match="aemit"):
        topic.put(inter("one too many"))
    b.close(topic)


# -- coalescing -----------------------------------------------------------------------------


async def test_text_deltas_of_one_source_coalesce_under_backlog() -> None:
    b = Broker()
    topic = b.open(coalesce_bytes=1 << 20)
    for t in ["Hel", "lo", ", ", "world"]:
        await topic.aput(delta(t))
    topic.finish()
    out = await drain(topic)
    assert [plain(i) for i in out] == [(DELTA, "m", "Hello, world")]
    assert out[0][3] == sum(len(t) + 8 for t in ["Hel", "lo", ", ", "world"])
    assert topic.coalesced == 3 and topic.queued() == (0, 0)
    b.close(topic)


async def test_coalescing_never_crosses_sources_kinds_or_non_text() -> None:
    b = Broker()
    topic = b.open(coalesce_bytes=1 << 20)
    items = [
        delta("a", "x"),
        delta("b", "x"),
        delta("c", "y"),  # other source
        delta("d", "x"),
        inter("e", "x"),  # intermediate text: never merged
        inter("f", "x"),
        delta("g", "x"),
        Item.of(DELTA, "x", 7),  # non-text delta
        Item.of(DELTA, "x", 8),
        delta("h", "x"),
        delta("i", "x"),
    ]
    for it in items:
        await topic.aput(it)
    topic.finish()
    assert [plain(i) for i in await drain(topic)] == [
        (DELTA, "x", "ab"),
        (DELTA, "y", "c"),
        (DELTA, "x", "d"),
        (INTERMEDIATE, "x", "e"),
        (INTERMEDIATE, "x", "f"),
        (DELTA, "x", "g"),
        (DELTA, "x", 7),
        (DELTA, "x", 8),
        (DELTA, "x", "hi"),
    ]
    b.close(topic)


async def test_coalescing_stops_at_coalesce_bytes() -> None:
    b = Broker()
    topic = b.open(coalesce_bytes=40)
    for _ in range(6):
        await topic.aput(delta("0123456789"))  # 18 bytes each
    topic.finish()
    out = await drain(topic)
    assert [plain(i)[2] for i in out] == ["0123456789" * 2] * 3
    assert all(i[3] <= 40 for i in out)
    b.close(topic)


async def test_an_idle_topic_hands_each_delta_over_alone() -> None:
    b = Broker()
    topic = b.open()
    for t in ["a", "b", "c"]:
        getter = asyncio.create_task(topic.get())
        await until(lambda: topic.waiting)  # the consumer waits: idle
        await topic.aput(delta(t))
        assert plain(await getter) == (DELTA, "m", t)
    assert topic.coalesced == 0
    b.close(topic)


_sources = st.sampled_from(["a", "b"])
_items = st.one_of(
    st.builds(lambda t, s: delta(t, s), st.text(min_size=1, max_size=6), _sources),
    st.builds(lambda t, s: inter(t, s), st.text(min_size=1, max_size=6), _sources),
    st.builds(lambda n, s: Item.of(DELTA, s, n), st.integers(-5, 5), _sources),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_items, max_size=40), st.integers(min_value=0, max_value=80))
def test_coalescing_preserves_order_and_content(items: list[Item], cap: int) -> None:
    async def run() -> list[Item]:
        b = Broker()
        topic = b.open(max_events=1000, coalesce_bytes=cap)
        for it in items:
            await topic.aput(it)
        topic.finish()
        out = await drain(topic)
        b.close(topic)
        return out

    out = asyncio.run(run())
    i = 0
    for o in out:
        kind, source, payload, nbytes = o
        if kind != DELTA or type(payload) is not str:
            assert o == items[i]  # passed through untouched
            i += 1
            continue
        # A text delta out is a run of consecutive text deltas in, all of this source.
        text, size, first = "", 0, i
        while len(text) < len(payload):
            k2, s2, p2, n2 = items[i]
            assert (k2, s2, type(p2)) == (DELTA, source, str)
            text += p2
            size += n2
            i += 1
        assert text == payload and size == nbytes
        assert i - first == 1 or nbytes <= max(cap, items[first][3])
    assert i == len(items)
    # With no cap in the way, nothing that could have been merged was left apart.
    if cap >= sum(it[3] for it in items):
        for prev, nxt in itertools.pairwise(out):
            mergeable = (prev[0], type(prev[2])) == (nxt[0], type(nxt[2])) == (DELTA, str)
            assert not (mergeable and prev[1] == nxt[1])


# -- finish ---------------------------------------------------------------------------------


async def test_finish_with_error_raises_after_the_queued_events() -> None:
    b = Broker()
    topic = b.open()
    await topic.aput(inter(1))
    await topic.aput(delta("a"))
    await topic.aput(delta("b"))
    boom = ValueError("boom")
    topic.finish(boom)
    assert plain(await topic.get()) == (INTERMEDIATE, "m", 1)
    assert plain(await topic.get()) == (DELTA, "m", "ab")
    with pytest.raises(ValueError, match="boom") as info:
        await topic.get()
    assert info.value is boom
    b.close(topic)


async def test_the_first_finish_decides_the_outcome() -> None:
    b = Broker()
    topic = b.open()
    assert not topic.finished
    await topic.aput(inter(1))
    boom = ValueError("boom")
    topic.finish(boom)
    topic.finish()  # the producer winding down after its error does not undo it
    assert topic.finished
    assert plain(await topic.get()) == (INTERMEDIATE, "m", 1)
    with pytest.raises(ValueError, match="boom") as info:
        await topic.get()
    assert info.value is boom
    clean = b.open()
    clean.finish()
    clean.finish(ValueError("late"))  # nor does a late error undo a clean end
    assert await clean.get() is None
    b.close(topic)
    b.close(clean)


async def test_finish_wakes_a_waiting_consumer_from_another_thread() -> None:
    b = Broker()
    topic = b.open()
    getter = asyncio.create_task(topic.get())
    await until(lambda: topic.waiting)
    await asyncio.to_thread(topic.finish)
    assert await asyncio.wait_for(getter, 5) is None
    b.close(topic)


# -- prime ----------------------------------------------------------------------------------


async def test_prime_returns_the_first_item_when_nothing_is_queued_before_it() -> None:
    b = Broker()
    topic = b.open()

    async def gen() -> Any:
        yield "a"
        yield "b"

    agen = gen()
    first = await topic.prime(agen, delta)
    assert first is not None and plain(first) == (DELTA, "m", "a")
    assert topic.queued() == (0, 0)  # handed over, not queued
    assert b.stats().published_events == 1
    assert [v async for v in agen] == ["b"]  # the rest is left to the producer
    b.close(topic)


async def test_prime_queues_the_first_item_behind_what_its_step_emitted() -> None:
    b = Broker()
    topic = b.open()

    async def gen() -> Any:
        await topic.aput(inter("tool"))
        yield None  # `make` sends nothing for it
        yield "a"

    first = await topic.prime(gen(), lambda v: None if v is None else delta(v))
    assert first is None
    topic.finish()
    assert [plain(i) for i in await drain(topic)] == [
        (INTERMEDIATE, "m", "tool"),
        (DELTA, "m", "a"),
    ]
    b.close(topic)


async def test_prime_of_an_empty_generator_sends_nothing() -> None:
    b = Broker()
    topic = b.open()

    async def gen() -> Any:
        return
        yield

    assert await topic.prime(gen(), delta) is None
    assert topic.queued() == (0, 0) and not topic.finished
    b.close(topic)


async def test_an_error_in_the_first_step_ends_the_topic_after_what_it_emitted() -> None:
    b = Broker()
    topic = b.open()
    boom = ValueError("first step")

    async def gen() -> Any:
        await topic.aput(inter(1))
        raise boom
        yield

    assert await topic.prime(gen(), delta) is None
    assert topic.finished
    assert plain(await topic.get()) == (INTERMEDIATE, "m", 1)
    with pytest.raises(ValueError) as info:
        await topic.get()
    assert info.value is boom
    b.close(topic)


async def test_the_first_step_overfills_a_full_topic_instead_of_deadlocking() -> None:
    # The consumer runs the first step itself: waiting for room would wait for itself.
    b = Broker()
    topic = b.open(max_events=2, coalesce_bytes=0)

    async def gen() -> Any:
        for i in range(3):
            await topic.aput(inter(i))
        yield "a"

    assert await asyncio.wait_for(topic.prime(gen(), delta), 5) is None
    assert topic.queued()[0] == 4
    # Only the first step overfills: a producer afterwards waits for room as usual.
    task = asyncio.create_task(topic.aput(inter("later")))
    await until(lambda: topic.blocked == 1)
    got = [plain(await topic.get())[2] for _ in range(5)]
    assert got == [0, 1, 2, "a", "later"]
    await asyncio.wait_for(task, 5)
    b.close(topic)


async def test_the_first_step_overfills_only_up_to_the_loop_cap() -> None:
    b = Broker()
    topic = b.open(max_events=2)
    cap = LOOP_OVERFILL * 2

    async def gen() -> Any:
        for i in range(cap + 1):
            await topic.aput(inter(i))
        yield "never"

    assert await topic.prime(gen(), delta) is None
    assert topic.finished
    assert [plain(await topic.get())[2] for _ in range(cap)] == list(range(cap))
    with pytest.raises(ResourceExhausted, match="first item"):
        await topic.get()
    b.close(topic)


# -- cancel ---------------------------------------------------------------------------------


async def test_cancel_raises_stream_closed_in_a_blocked_sync_producer() -> None:
    b = Broker()
    topic = b.open(max_events=2)
    p = Producer(topic, [inter(i) for i in range(5)])
    p.start()
    await until(lambda: topic.blocked == 1)
    t0 = time.monotonic()
    b.close(topic)
    await asyncio.to_thread(p.join, 5)
    took = p.ended_at - t0
    print(f"\nsync producer saw StreamClosed {took * 1000:.2f} ms after cancel")
    assert isinstance(p.error, StreamClosed)
    assert took < WAKE_LIMIT
    assert topic.blocked == 0 and topic.queued() == (0, 0)


async def test_cancel_raises_stream_closed_in_a_blocked_async_producer() -> None:
    b = Broker()
    topic = b.open(max_events=2)
    ended: list[float] = []

    async def produce() -> None:
        try:
            for i in range(5):
                await topic.aput(inter(i))
        finally:
            ended.append(time.monotonic())

    task = asyncio.create_task(produce())
    await until(lambda: topic.blocked == 1)
    t0 = time.monotonic()
    # Cancel from another thread, as grpc's done-callbacks may.
    await asyncio.to_thread(topic.cancel)
    with pytest.raises(StreamClosed):
        await asyncio.wait_for(task, 5)
    took = ended[0] - t0
    print(f"\nasync producer saw StreamClosed {took * 1000:.2f} ms after cancel")
    assert took < WAKE_LIMIT
    assert topic.blocked == 0


async def test_after_cancel_puts_raise_and_get_ends() -> None:
    b = Broker()
    topic = b.open()
    await topic.aput(inter(1))
    getter_topic = b.open()
    getter = asyncio.create_task(getter_topic.get())
    await until(lambda: getter_topic.waiting)
    b.close(getter_topic)
    assert await asyncio.wait_for(getter, 5) is None  # a waiting consumer is released
    b.close(topic)
    b.close(topic)  # idempotent
    with pytest.raises(StreamClosed):
        topic.put(inter(2))
    with pytest.raises(StreamClosed):
        await topic.aput(inter(2))
    assert await topic.get() is None  # queued events were dropped with the client


# -- stats ----------------------------------------------------------------------------------


async def test_stats_count_topics_queue_blocked_and_totals() -> None:
    b = Broker()
    assert b.stats() == broker.BrokerStats(0, 0, 0, 0, 0, 0)
    t1 = b.open(max_events=2)
    t2 = b.open()
    p = Producer(t1, [inter(i) for i in range(3)])
    p.start()
    await until(lambda: t1.blocked == 1)
    for t in "abc":
        await t2.aput(delta(t))
    s = b.stats()
    assert (s.open_topics, s.queued_events, s.blocked_producers) == (2, 5, 1)
    assert s.queued_bytes == sum(t.queued()[1] for t in (t1, t2)) > 0
    assert s.published_events == 5 and s.coalesced_events == 0
    assert plain(await t2.get())[2] == "abc"
    assert b.stats().coalesced_events == 2
    b.close(t1)
    b.close(t2)
    await asyncio.to_thread(p.join, 5)
    s = b.stats()
    # Topics are gone; what they did stays in the totals.
    assert (s.open_topics, s.queued_events, s.queued_bytes, s.blocked_producers) == (0, 0, 0, 0)
    assert (s.published_events, s.coalesced_events) == (5, 2)


async def test_named_topics_are_unique_and_freed_on_close() -> None:
    b = Broker()
    t = b.open_named("jobs")
    assert b.named("jobs") is t
    with pytest.raises(ValueError, match="already subscribed"):
        b.open_named("jobs")
    assert b.stats().open_topics == 1
    b.close(t)
    assert b.named("jobs") is None and b.stats().open_topics == 0


def test_module_level_stats_are_the_process_broker() -> None:
    assert lazygrpc.broker_stats() == broker.BROKER.stats()


# -- emit -----------------------------------------------------------------------------------


async def test_emit_outside_a_streaming_call_is_a_no_op() -> None:
    assert lazygrpc.emit("x") is False
    assert await lazygrpc.aemit("x") is False
    # Under a call without a topic (a unary call) too.
    token = bind_call(CallScope(Session(None, {}, []), "svc", "unary", None))
    try:
        assert lazygrpc.emit("x") is False
        assert await lazygrpc.aemit("x") is False
    finally:
        unbind_call(token)


async def test_emit_puts_intermediate_events_into_the_calls_topic() -> None:
    b = Broker()
    topic = b.open()
    scope = CallScope(Session(None, {}, []), "svc", "search", None)
    scope.topic = topic
    token = bind_call(scope)
    try:
        assert await lazygrpc.aemit({"step": 1}) is True
        assert await asyncio.to_thread(lazygrpc.emit, "from a thread", "tool") is True
        assert lazygrpc.emit(3) is True  # sync on the loop thread: below the bound, no wait
    finally:
        unbind_call(token)
    topic.finish()
    assert [plain(i) for i in await drain(topic)] == [
        (INTERMEDIATE, "search", {"step": 1}),
        (INTERMEDIATE, "tool", "from a thread"),
        (INTERMEDIATE, "search", 3),
    ]
    b.close(topic)


async def test_emit_into_a_topic_that_takes_no_intermediates_is_a_no_op() -> None:
    b = Broker()
    topic = b.open(accepts_intermediate=False)  # a ModelService Generate stream
    scope = CallScope(Session(None, {}, []), "svc", "Generate", None)
    scope.topic = topic
    token = bind_call(scope)
    try:
        assert lazygrpc.emit("x") is False
    finally:
        unbind_call(token)
    assert topic.queued() == (0, 0)
    b.close(topic)
