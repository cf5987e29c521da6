"""Replica sets behind one URL: round_robin, client-side health checks, retries (grpc's own)."""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import lazygrpc
from lazygrpc.client import channels
from lazygrpc.client.service_config import ChannelPolicy
from tests.conftest import LoopThread, Servers

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _replicas(
    servers: Servers, n: int, extra: dict[str, Any] | None = None, **options: Any
) -> tuple[list[lazygrpc.Server], str]:
    """`n` servers whose module `who` answers its replica's index (and `extra` modules);
    the `ipv4:` target naming them all. `options[i]` are replica i's `Server` options."""
    started = []
    for i in range(n):

        async def build(i: int = i) -> lazygrpc.Server:
            s = lazygrpc.Server(name=f"replica-{i}", **options.get(str(i), {}))
            s.add_modules({"who": lambda _=None, i=i: i, **(extra or {})})
            await s.start()
            return s

        started.append(servers.lt.run(build()))
        servers.started.append(started[-1])
    target = "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in started)
    return started, target


def _until_all_seen(who: Any, n: int) -> None:
    """Call until every replica has answered once (all subchannels READY and healthy)."""
    seen: set[int] = set()
    t0 = time.monotonic()
    while len(seen) < n:
        assert time.monotonic() - t0 < 20, f"only replicas {seen} answered"
        seen.add(who())


def test_the_policy_gives_round_robin_to_replica_sets_and_retries_only_idempotent_methods() -> None:
    auto = ChannelPolicy()
    assert auto.lb_for("dns:///model:50051") == "round_robin"
    assert auto.lb_for("ipv4:127.0.0.1:1,127.0.0.1:2") == "round_robin"
    assert auto.lb_for("127.0.0.1:1") == "pick_first"
    config = json.loads(auto.service_config("dns:///model:50051"))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": ""}
    (methods,) = config["methodConfig"]
    names = {(m["service"], m["method"]) for m in methods["name"]}
    assert ("lazygrpc.v1.ModuleService", "ListModules") in names
    assert ("lazygrpc.v1.ModelService", "GetModelInfo") in names
    assert ("grpc.health.v1.Health", "Check") in names
    assert not {m for _, m in names} & {"Call", "Stream", "Generate", "Complete", "Publish"}
    assert methods["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    idem = json.loads(ChannelPolicy(idempotent=True).service_config("h:1"))
    assert ("lazygrpc.v1.ModuleService", "Call") in {
        (m["service"], m["method"]) for m in idem["methodConfig"][0]["name"]
    }
    assert "methodConfig" not in json.loads(ChannelPolicy(max_attempts=1).service_config("h:1"))


def test_urls_set_the_policy_and_bad_options_are_named() -> None:
    e = channels.parse_endpoint("dns:///model:50051/who?lb=pick_first&idempotent=1")
    assert (e.target, e.module, e.policy.lb, e.policy.idempotent) == (
        "dns:///model:50051",
        "who",
        "pick_first",
        True,
    )
    e = channels.parse_endpoint("ipv4:10.0.0.1:5,10.0.0.2:5/who")
    assert e.target == "ipv4:10.0.0.1:5,10.0.0.2:5" and e.policy.lb_for(e.target) == "round_robin"
    e = channels.parse_endpoint("grpc://h:1/who?health=0&attempts=1&keepalive=2.5")
    assert (e.policy.health_check, e.policy.max_attempts, e.policy.keepalive) == (False, 1, 2.5)
    assert ("grpc.keepalive_time_ms", 2500) in channels.options_for(e.target, e.policy)
    # Keepalive by default only towards replica sets (other gRPC servers refuse fast pings).
    assert not ChannelPolicy().keepalive_options("h:1")
    assert ("grpc.keepalive_time_ms", 10_000) in ChannelPolicy().keepalive_options("dns:///m:1")
    assert not ChannelPolicy(keepalive=0).keepalive_options("dns:///m:1")
    for bad, what in [
        ("grpc://h:1/who?lb=random", "lb='random'"),
        ("grpc://h:1/who?colour=red", "unknown option colour='red'"),
        ("grpc://h:1/who?idempotent=maybe", "idempotent='maybe'"),
        ("grpc://h:1/who?attempts=9", "max_attempts=9"),
        ("grpc://h:1/who?keepalive=0.1", "keepalive=0.1"),
    ]:
        with pytest.raises(ValueError, match="invalid lazygrpc URL") as info:
            lazygrpc.connect(bad)
        assert what in str(info.value)


def test_calls_spread_over_every_replica(servers: Servers) -> None:
    _, target = _replicas(servers, 3)
    who = lazygrpc.connect(f"{target}/who")
    _until_all_seen(who, 3)
    counts = collections.Counter(who() for _ in range(60))
    assert sorted(counts) == [0, 1, 2]
    assert min(counts.values()) >= 15, counts  # round_robin: an even share each


async def test_asyncio_calls_spread_too(servers: Servers) -> None:
    _, target = _replicas(servers, 2)
    who = lazygrpc.connect(f"{target}/who")
    seen: set[int] = set()
    t0 = time.monotonic()
    while len(seen) < 2:
        assert time.monotonic() - t0 < 20
        seen.add(await who.acall())
    counts = collections.Counter([await who.acall() for _ in range(20)])
    assert counts == {0: 10, 1: 10}


def test_pick_first_from_the_url_keeps_one_replica(servers: Servers) -> None:
    _, target = _replicas(servers, 3)
    who = lazygrpc.connect(f"{target}/who?lb=pick_first")
    assert len({who() for _ in range(30)}) == 1


def test_a_draining_replica_stops_getting_calls_before_it_stops(
    servers: Servers, server_loop: LoopThread
) -> None:
    hold = asyncio.Event()
    entered = threading.Event()

    async def held() -> str:
        entered.set()
        await hold.wait()
        return "finished"

    (replica0, *_), target = _replicas(servers, 3, {"held": held}, **{"0": {"grace": 30}})
    who = lazygrpc.connect(f"{target}/who")
    _until_all_seen(who, 3)
    in_flight: list[Any] = []
    direct = lazygrpc.connect(f"grpc://127.0.0.1:{replica0.port}/held", timeout=30)
    caller = threading.Thread(target=lambda: in_flight.append(direct()))
    caller.start()
    assert entered.wait(10)

    with grpc.insecure_channel(f"127.0.0.1:{replica0.port}") as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=30)
        next(watch)  # SERVING
        stopping = asyncio.run_coroutine_threadsafe(replica0.stop(), server_loop.loop)
        assert next(watch).status == NOT_SERVING
        watch.cancel()
    # Every call succeeds: the health watch takes replica 0 out of the round before its
    # drain notice ends and it refuses calls; once out, it gets none.
    answers = [who() for _ in range(40)]
    assert set(answers[-20:]) == {1, 2}, answers
    assert not stopping.done() and caller.is_alive()  # replica 0 still runs its call
    server_loop.loop.call_soon_threadsafe(hold.set)
    caller.join(10)
    assert in_flight == ["finished"]
    stopping.result(10)


class Refuse(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A replica that answers every lazygrpc method with UNAVAILABLE (health still SERVING),
    counting the attempts it refused by method."""

    def __init__(self) -> None:
        self.refused: collections.Counter[str] = collections.Counter()

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if details.method.startswith("/grpc.") or handler is None:
            return handler
        method = details.method.rsplit("/", 1)[1]

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self.refused[method] += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this replica refuses")

        return grpc.unary_unary_rpc_method_handler(
            refuse,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def test_unavailable_is_retried_on_idempotent_methods_only(servers: Servers) -> None:
    refuse = Refuse()
    _, target = _replicas(servers, 2, **{"0": {"interceptors": [refuse]}})
    plain = lazygrpc.connect(f"{target}/who")
    ok = lazygrpc.connect(f"{target}/who", idempotent=True)
    _until_all_seen(ok, 1)  # the healthy one; both are connected and SERVING

    # ListModules changes nothing: a refused attempt is retried on the other replica.
    for _ in range(10):
        assert [m["name"] for m in plain.list_modules()] == ["who"]
    assert refuse.refused["ListModules"] >= 3

    # Call is not retried unless the module is declared idempotent: the refused calls fail.
    failed, refused_before = 0, refuse.refused["Call"]
    for _ in range(10):
        try:
            assert plain() == 1
        except lazygrpc.RemoteError as exc:
            assert exc.code == grpc.StatusCode.UNAVAILABLE
            failed += 1
    # One attempt per failed call: no retries.
    assert failed == refuse.refused["Call"] - refused_before >= 3

    before = refuse.refused["Call"]
    assert [ok() for _ in range(10)] == [1] * 10
    assert refuse.refused["Call"] - before >= 3  # refused attempts, each retried
