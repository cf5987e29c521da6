"""Issue 18: past one process. `--workers 2` against 1 on this 2-core machine, and the Redis
broker's events/s across processes against the in-process broker.

(a) calls/s of a CPU-bound module (`spin`, ~10 ms of Python a call) from 8 connections
    with 2 calls in flight each, `--workers 2` vs `--workers 1`. Target >= 1.7x.
(b) events/s of streams (`ticks`, small events) from the same 8 connections, 2 vs 1.
(c) events/s published through one server's `BrokerService.Publish` into a topic
    subscribed on another server process, both `--broker redis://…` (a real redis-server),
    against publisher and subscriber on one server's in-process broker. Target >= 20k/s.

    python -m benchmarks.bench_scale [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import grpc.aio

from benchmarks._common import ROOT, Row, log, print_rows

SCEN = "past one process (issue 18)"
MODULES = "benchmarks/_scale_modules.py"
CONNECTIONS = 8
IN_FLIGHT = 2


@contextlib.contextmanager
def _serve(*args: str) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lazygrpc", "serve", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"lazygrpc serve {args} did not start: {line!r}")
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


async def _load(address: str, seconds: float, stream: bool) -> float:
    """Calls/s (or events/s for streams) over `CONNECTIONS` separate connections."""
    from lazygrpc.core.values import to_value
    from lazygrpc.v1 import module_pb2, module_pb2_grpc

    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CONNECTIONS)
    ]
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(ch: grpc.aio.Channel) -> None:
        nonlocal done
        stub = module_pb2_grpc.ModuleServiceStub(ch)
        while time.perf_counter() < stop:
            if stream:
                request = module_pb2.CallRequest(module="ticks", input=to_value(2000))
                async for _ in stub.Stream(request):
                    done += 1
            else:
                await stub.Call(module_pb2.CallRequest(module="spin", input=to_value(300_000)))
                done += 1

    try:
        for ch in channels:  # connected (and spread over the workers) before the clock
            await ch.channel_ready()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(ch) for ch in channels for _ in range(IN_FLIGHT)))
        return done / (time.perf_counter() - t0)
    finally:
        for ch in channels:
            await ch.close()


def workers_rows(quick: bool) -> list[Row]:
    rounds, seconds = (2, 2.0) if quick else (4, 3.0)
    res: dict[tuple[int, bool], list[float]] = {}
    for r in range(rounds):
        for workers in (1, 2) if r % 2 == 0 else (2, 1):
            with _serve(f"{MODULES}:spin", f"{MODULES}:ticks", "--workers", str(workers)) as at:
                for stream in (False, True):
                    rate = asyncio.run(_load(at, seconds, stream))
                    res.setdefault((workers, stream), []).append(rate)
                    log(f"workers={workers} stream={stream}: {rate:,.0f}/s")
    base = "--workers 1"
    return [
        Row(SCEN, "CPU-bound calls/s, --workers 2 vs 1", "calls/s", res[2, False],
            res[1, False], "≥ 1.7×", "ratio>=1.7", base),
        Row(SCEN, "stream events/s, --workers 2 vs 1", "events/s", res[2, True],
            res[1, True], "—", "", base),
    ]  # fmt: skip


async def _pubsub(sub_at: str, pub_at: str, n: int) -> float:
    topic = f"bench-{time.monotonic_ns()}"  # a new name: the last round's may still be held
    from lazygrpc.core.values import to_value
    from lazygrpc.v1 import broker_pb2, broker_pb2_grpc

    async with grpc.aio.insecure_channel(sub_at) as sch, grpc.aio.insecure_channel(pub_at) as pch:
        sub = broker_pb2_grpc.BrokerServiceStub(sch).Subscribe(
            broker_pb2.SubscribeRequest(topic=topic)
        )
        # Publishing into a topic takes its owner's session or the token its Subscribe gave.
        token = dict(await sub.initial_metadata()).get("lazy-topic-token", "")
        value = to_value({"i": 1, "text": "token"})
        requests = (broker_pb2.PublishRequest(topic=topic, source="b", value=value)
                    for _ in range(n))  # fmt: skip
        t0 = time.perf_counter()
        publish = asyncio.ensure_future(
            broker_pb2_grpc.BrokerServiceStub(pch).Publish(
                requests, metadata=(("lazy-topic-token", token),)
            )
        )
        got = 0
        async for _ in sub:
            got += 1
            if got == n:
                break
        rate = n / (time.perf_counter() - t0)
        await publish
        sub.cancel()
        return rate


_PUBLISHER = """
import asyncio, sys
from lazygrpc.broker.redis_streams import RedisTopics
from lazygrpc.core.values import to_value

async def main(url, n):
    topics = RedisTopics(url)
    value = to_value({"i": 1, "text": "token"})
    for start in range(0, n, 1024):
        await topics.publish("direct", [("b", value)] * min(1024, n - start))
    await topics.aclose()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def _direct(url: str, n: int) -> float:
    """Events/s from a publisher process through Redis into a subscriber here (the broker
    alone: no gRPC message per event), from the first event to the last."""
    from lazygrpc.broker.redis_streams import RedisTopics

    topics = RedisTopics(url)
    sub = await topics.subscribe("direct")
    events = sub.events()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _PUBLISHER, url, str(n))
    try:
        await events.__anext__()
        t0 = time.perf_counter()
        for _ in range(n - 1):
            await events.__anext__()
        return (n - 1) / (time.perf_counter() - t0)
    finally:
        await proc.wait()
        await events.aclose()
        await sub.close()
        await topics.aclose()


def broker_rows(quick: bool) -> list[Row]:
    from tests.redisd import redis_server

    n, rounds = (20_000, 2) if quick else (50_000, 4)
    redis, local, direct = [], [], []
    with redis_server() as url:
        for _ in range(rounds):
            direct.append(asyncio.run(_direct(url, n)))
            log(f"broker redis direct: {direct[-1]:,.0f}/s")
        with (
            _serve(f"{MODULES}:spin", "--broker", url) as a,
            _serve(f"{MODULES}:spin", "--broker", url) as b,
            _serve(f"{MODULES}:spin") as solo,
        ):
            for r in range(rounds):
                for side in ("redis", "local") if r % 2 == 0 else ("local", "redis"):
                    if side == "redis":
                        redis.append(asyncio.run(_pubsub(a, b, n)))
                    else:
                        local.append(asyncio.run(_pubsub(solo, solo, n)))
                    log(f"broker {side}: {(redis if side == 'redis' else local)[-1]:,.0f}/s")
    return [
        Row(SCEN, "Redis broker events/s, publisher process → subscriber process", "events/s",
            direct, [], "≥ 20,000/s", "lazy>=20000", "—"),
        Row(SCEN, "BrokerService events/s, Redis across servers", "events/s", redis, local,
            "— (one gRPC message per event)", "", "in-process broker"),
    ]  # fmt: skip


def run(quick: bool) -> list[Row]:
    return [*workers_rows(quick), *broker_rows(quick)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    print_rows(run(a.quick), SCEN)


if __name__ == "__main__":
    main()
