"""Fairness under load: a new stream's first token does not queue behind busy streams.

A producer that never waits for anything else (tokens made as fast as they can be) fills
its topic in one step of the event loop; with 200 of them running, a new call's every step
would wait behind all of that (0.3-2 s measured). The producers of a process share one
run-ahead budget (`lazygrpc.broker.budget.OpenTopics`), so a loop's turn holds a bounded
amount of work and a new stream's first token comes within a bound.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator

from conftest import Servers

import lazygrpc

BUSY = 200
#: The target for a new stream's first token under this load is 100 ms; the bound only
#: catches starvation (10x).
BOUND = 1.0


async def busy(n: int) -> AsyncIterator[str]:
    """Tokens as fast as they can be made: the producer never waits but for its topic."""
    for _ in range(n):
        yield "x" * 64


async def quick() -> AsyncIterator[str]:
    yield "first"


#: 200 streams of `busy`, read as fast as they come, from a process of their own (so that
#: the test's own event loop only runs the new call); "ready" once every one has a token.
READERS = """
import asyncio, sys
import grpc
from google.protobuf import struct_pb2
from lazygrpc.v1 import module_pb2, module_pb2_grpc

async def main(target, n):
    channel = grpc.aio.insecure_channel(target)
    stub = module_pb2_grpc.ModuleServiceStub(channel)
    calls = [stub.Stream(module_pb2.CallRequest(module="busy", input=struct_pb2.Value(
        number_value=10**9))) for _ in range(n)]
    for call in calls:
        await call.read()
    print("ready", flush=True)

    async def drain(call):
        while True:
            await call.read()

    await asyncio.gather(*(drain(c) for c in calls))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_a_new_streams_first_token_comes_while_200_busy_streams_run(
    servers: Servers,
) -> None:
    url = servers.modules({"busy": busy, "quick": quick})
    target = url.removeprefix("grpc://").split("/")[0]
    readers = subprocess.Popen(
        [sys.executable, "-c", READERS, target, str(BUSY)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert readers.stdout is not None
        assert readers.stdout.readline().strip() == "ready"
        quick_module = lazygrpc.connect(f"grpc://{target}/quick")
        waits = []
        for _ in range(5):
            t0 = time.monotonic()
            async for ev in quick_module.astream():
                assert ev.value == "first"
                waits.append(time.monotonic() - t0)
                break
        print(f"first token while {BUSY} busy streams run: {[round(w * 1000) for w in waits]} ms")
        assert max(waits) < BOUND
    finally:
        readers.kill()
        readers.communicate()
