"""The Redis Streams broker backend, against a real redis-server (tests/redisd.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from lazygrpc.broker.redis_streams import NoSubscriber, RedisTopics
from lazygrpc.core.values import from_value, to_value
from lazygrpc.v1 import broker_pb2, broker_pb2_grpc
from tests.conftest import ROOT, Servers, start_cli
from tests.redisd import redis_cli, redis_server


@pytest.fixture
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def _publish(
    address: str, topic: str, values: list[Any], source: str = "pub", token: str = ""
) -> int:
    """Publish `values`, with the topic's `lazy-topic-token` when given."""
    metadata = (("lazy-topic-token", token),) if token else ()
    with grpc.insecure_channel(address) as ch:
        requests = (
            broker_pb2.PublishRequest(topic=topic, source=source, value=to_value(v)) for v in values
        )
        stub = broker_pb2_grpc.BrokerServiceStub(ch)
        return int(stub.Publish(requests, timeout=20, metadata=metadata).accepted)


def _token(sub: Any) -> str:
    """The token a Subscribe hands out (its headers come once the topic is claimed)."""
    return str(dict(sub.initial_metadata())["lazy-topic-token"])


def _server(servers: Servers, redis_url: str, **options: Any) -> str:
    url = servers.modules({"noop": lambda: None}, broker_url=redis_url, **options)
    return url.removeprefix("grpc://")


def test_a_subscriber_on_one_server_gets_what_another_server_publishes(
    redis_url: str, servers: Servers
) -> None:
    sub_at, pub_at = _server(servers, redis_url), _server(servers, redis_url)
    with grpc.insecure_channel(sub_at) as ch:
        sub = broker_pb2_grpc.BrokerServiceStub(ch).Subscribe(
            broker_pb2.SubscribeRequest(topic="jobs/7"), timeout=20
        )
        token = _token(sub)  # claimed: publishing with the token is accepted from now
        values = [{"step": i} for i in range(300)] + ["done"]
        assert _publish(pub_at, "jobs/7", values, source="worker", token=token) == len(values)
        got = [(ev.source, from_value(ev.intermediate)) for _, ev in zip(values, sub, strict=False)]
        assert got == [("worker", v) for v in values]
        sub.cancel()
    # The topic expires with its call: its keys are gone and publishing is refused again.
    with pytest.raises(grpc.RpcError) as info:
        while True:  # until the cancelled call's cleanup has run on the server
            _publish(pub_at, "jobs/7", [1], token=token)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'jobs/7' has no subscriber" in info.value.details()
    assert redis_cli(redis_url, "KEYS", "lazygrpc:*") == ""


def test_one_subscriber_per_name_across_servers(redis_url: str, servers: Servers) -> None:
    a, b = _server(servers, redis_url), _server(servers, redis_url)
    with grpc.insecure_channel(a) as cha, grpc.insecure_channel(b) as chb:
        first = broker_pb2_grpc.BrokerServiceStub(cha).Subscribe(
            broker_pb2.SubscribeRequest(topic="dup"), timeout=20
        )
        first.initial_metadata()
        second = broker_pb2_grpc.BrokerServiceStub(chb).Subscribe(
            broker_pb2.SubscribeRequest(topic="dup"), timeout=20
        )
        with pytest.raises(grpc.RpcError) as info:
            next(second)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "already subscribed" in info.value.details()
        first.cancel()


def test_cross_process_publish_through_a_cli_server(redis_url: str, servers: Servers) -> None:
    proc, sub_at = start_cli("serve", "tests/fixtures/cli_modules.py:whoami", "--broker", redis_url)
    try:
        with grpc.insecure_channel(sub_at) as ch:
            sub = broker_pb2_grpc.BrokerServiceStub(ch).Subscribe(
                broker_pb2.SubscribeRequest(topic="x"), timeout=20
            )
            token = _token(sub)
            assert _publish(_server(servers, redis_url), "x", [1, 2, 3], token=token) == 3
            assert [from_value(next(sub).intermediate) for _ in range(3)] == [1, 2, 3]
            sub.cancel()
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


def test_an_unreachable_broker_is_one_line_naming_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lazygrpc", "serve", "tests/fixtures/cli_modules.py:whoami",
         "--broker", "redis://127.0.0.1:1/0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "cannot reach the Redis broker at redis://127.0.0.1:1/0" in result.stderr


async def _next(events: Any) -> tuple[str, Any]:
    source, value = await asyncio.wait_for(events.__anext__(), 10)
    return source, from_value(value)


async def test_a_full_stream_slows_the_publisher_until_the_subscriber_reads(
    redis_url: str,
) -> None:
    topics = RedisTopics(redis_url, max_events=8, max_bytes=1 << 20)
    sub = await topics.subscribe("bp")
    events = sub.events()
    publisher = asyncio.create_task(topics.publish("bp", [("p", to_value(i)) for i in range(50)]))
    try:
        while redis_cli(redis_url, "XLEN", "lazygrpc:topic:{bp}:stream") != "8":
            assert not publisher.done()
            await asyncio.sleep(0)  # let the publisher run; the bound is under test
        await asyncio.wait({publisher}, timeout=0.3)
        assert not publisher.done()  # full: it waits for the subscriber
        assert redis_cli(redis_url, "XLEN", "lazygrpc:topic:{bp}:stream") == "8"
        got = [await _next(events) for _ in range(50)]
        assert got == [("p", i) for i in range(50)]
        await asyncio.wait_for(publisher, 10)
        assert int(redis_cli(redis_url, "XLEN", "lazygrpc:topic:{bp}:stream")) <= 8
    finally:
        await events.aclose()
        await sub.close()
        await topics.aclose()
    assert redis_cli(redis_url, "KEYS", "lazygrpc:*") == ""


async def test_the_byte_bound_counts_like_the_in_process_topic(redis_url: str) -> None:
    topics = RedisTopics(redis_url, max_events=1000, max_bytes=3000)
    sub = await topics.subscribe("bytes")
    events = sub.events()
    big = "x" * 1000  # ~1 KiB each: the third no longer fits
    publisher = asyncio.create_task(topics.publish("bytes", [("p", to_value(big))] * 6))
    try:
        while redis_cli(redis_url, "XLEN", "lazygrpc:topic:{bytes}:stream") != "2":
            await asyncio.sleep(0)
        await asyncio.wait({publisher}, timeout=0.3)
        assert not publisher.done()
        assert [await _next(events) for _ in range(6)] == [("p", big)] * 6
        await asyncio.wait_for(publisher, 10)
    finally:
        await events.aclose()
        await sub.close()
        await topics.aclose()


def _kill_subscriber_connection(redis_url: str) -> None:
    """CLIENT KILL the subscriber's own connection, once it has one again."""
    while True:
        ids = [
            line.split()[0].removeprefix("id=")
            for line in redis_cli(redis_url, "CLIENT", "LIST").splitlines()
            if "name=lazygrpc-sub-" in line
        ]
        if ids:
            assert redis_cli(redis_url, "CLIENT", "KILL", "ID", ids[0]) == "1"
            return


async def test_a_subscriber_that_loses_its_connection_resumes_after_its_last_id(
    redis_url: str,
) -> None:
    topics = RedisTopics(redis_url)
    sub = await topics.subscribe("resume")
    events = sub.events()

    async def publish(values: range) -> None:
        await topics.publish("resume", [("p", to_value(i)) for i in values])

    try:
        await publish(range(5))
        got = [await _next(events) for _ in range(3)]
        _kill_subscriber_connection(redis_url)  # mid-batch: 2 read but not handed out yet
        got += [await _next(events) for _ in range(2)]
        await publish(range(5, 8))
        got += [await _next(events) for _ in range(3)]
        reading = asyncio.ensure_future(_next(events))  # blocked in XREAD BLOCK
        await asyncio.to_thread(_kill_subscriber_connection, redis_url)
        await publish(range(8, 10))
        got += [await reading, await _next(events)]
        assert got == [("p", i) for i in range(10)]  # nothing lost, nothing twice
        assert int(redis_cli(redis_url, "PTTL", "lazygrpc:topic:{resume}:sub")) > 0
    finally:
        await events.aclose()
        await sub.close()
    with pytest.raises(NoSubscriber, match="'resume' has no subscriber"):
        await topics.publish("resume", [("p", to_value(1))])
    await topics.aclose()


def test_a_bad_publish_is_invalid_argument_and_the_server_keeps_serving(
    redis_url: str, servers: Servers
) -> None:
    at = _server(servers, redis_url)
    with grpc.insecure_channel(at) as ch:
        sub = broker_pb2_grpc.BrokerServiceStub(ch).Subscribe(
            broker_pb2.SubscribeRequest(topic="bad"), timeout=20
        )
        token = _token(sub)
        with pytest.raises(grpc.RpcError) as info:
            broker_pb2_grpc.BrokerServiceStub(ch).Publish(
                iter([broker_pb2.PublishRequest(topic="bad", value=to_value(1)),
                      broker_pb2.PublishRequest(topic="bad")]),
                timeout=10, metadata=(("lazy-topic-token", token),),
            )  # fmt: skip
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "value: missing"
        assert from_value(next(sub).intermediate) == 1  # what came before it went through
        assert _publish(at, "bad", [2], token=token) == 1
        assert from_value(next(sub).intermediate) == 2
        sub.cancel()


def test_a_redis_topic_takes_publishes_from_its_owner_only(
    redis_url: str, servers: Servers
) -> None:
    """The in-process topic's rule, across servers: the subscriber's session or the token
    its Subscribe gave; anyone else gets PERMISSION_DENIED naming the header."""
    sub_at, pub_at = _server(servers, redis_url), _server(servers, redis_url)
    with grpc.insecure_channel(sub_at) as ch, grpc.insecure_channel(pub_at) as pub:
        sub = broker_pb2_grpc.BrokerServiceStub(ch).Subscribe(
            broker_pb2.SubscribeRequest(topic="owned"),
            timeout=20,
            metadata=(("lazy-session-id", "owner-session"),),
        )
        token = _token(sub)
        stub = broker_pb2_grpc.BrokerServiceStub(pub)

        def publish(value: int, *metadata: tuple[str, str]) -> int:
            request = broker_pb2.PublishRequest(topic="owned", source="w", value=to_value(value))
            return int(stub.Publish(iter([request]), timeout=10, metadata=metadata).accepted)

        for refused in ((), (("lazy-session-id", "someone-else"),),
                        (("lazy-topic-token", "guess"),)):  # fmt: skip
            with pytest.raises(grpc.RpcError) as info:
                publish(0, *refused)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "lazy-topic-token its Subscribe returned" in info.value.details()
        assert publish(1, ("lazy-session-id", "owner-session")) == 1
        assert publish(2, ("lazy-topic-token", token)) == 1
        assert [from_value(next(sub).intermediate) for _ in range(2)] == [1, 2]
        # The token is never stored in Redis, only its digest.
        claim = redis_cli(redis_url, "GET", "lazygrpc:topic:{owned}:sub")
        assert "owner-session" in claim and token not in claim
        sub.cancel()


async def test_a_publish_checked_against_one_subscriber_never_lands_in_the_next(
    redis_url: str,
) -> None:
    topics = RedisTopics(redis_url)
    first = await topics.subscribe("turn", owner="a")
    holder = await topics.holder("turn")
    assert holder is not None and holder.owner == "a"
    await first.close()
    second = await topics.subscribe("turn", owner="b")
    with pytest.raises(NoSubscriber):
        await topics.publish("turn", [("p", to_value(1))], holder)
    await topics.publish("turn", [("p", to_value(2))], await topics.holder("turn"))
    assert await _next(second.events()) == ("p", 2)
    await second.close()
    await topics.aclose()
