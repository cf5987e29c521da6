"""Ray Serve side of benchmarks/bench_load.py: run in benchmarks/ray/.venv (its setup.sh).

Two deployments on a local Ray (`ray.init(num_cpus=2, include_dashboard=False)`, on
127.0.0.1, Serve's HTTP proxy off): `Leaf`, an async generator of paced tokens
(`benchmarks/_pace.py`, the same producer the gRPC leaves run), and `Gateway`, which relays
Leaf's stream through a `DeploymentHandle` with `stream=True`. This process is the client:
it drives `Gateway` through its handle (`handle.options(stream=True).remote(n, pace)`, the
Serve-native client; no HTTP), records when each token arrives and reads the replicas'
CPU seconds (psutil) before and after each round.

Protocol: prints `{"ready": ...}` once serving; then reads one JSON line per round from
stdin, `{"streams": N, "tokens": T, "pace": S}`, and answers one JSON line with the
streams' records and the CPU seconds. EOF shuts Ray down.

    PYTHONPATH=. benchmarks/ray/.venv/bin/python benchmarks/ray/load.py
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import psutil
import ray
from ray import serve

from benchmarks._pace import StreamRecord, paced, peak_rss_mib, record

#: Serve's default (5 ongoing requests a replica) would queue streams at N = 32; a gateway
#: tuned for many slow streams raises it, as Serve's docs advise.
MAX_ONGOING = 1024


@serve.deployment(max_ongoing_requests=MAX_ONGOING)
class Leaf:
    async def __call__(self, n: int, pace: float) -> AsyncIterator[str]:
        async for token in paced(n, pace):
            yield token

    def pid(self) -> int:
        return os.getpid()


@serve.deployment(max_ongoing_requests=MAX_ONGOING)
class Gateway:
    def __init__(self, leaf: Any) -> None:
        self.leaf = leaf
        self.stream = leaf.options(stream=True)

    async def __call__(self, n: int, pace: float) -> AsyncIterator[str]:
        async for token in self.stream.remote(n, pace):
            yield token

    async def pid(self) -> int:
        return os.getpid()

    async def leaf_pid(self) -> int:
        pid: int = await self.leaf.pid.remote()
        return pid


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def _tree_cpu() -> float:
    """CPU seconds of every Ray process under this one (GCS, raylet, controller, workers)."""
    total = 0.0
    for p in psutil.Process().children(recursive=True):
        try:
            total += _cpu(p)
        except psutil.Error:
            pass
    return total


async def one(handle: Any, n: int, pace: float) -> StreamRecord:
    arrivals: list[tuple[float, str]] = []
    sent = time.time()
    error = ""
    try:
        async for token in handle.remote(n, pace):
            arrivals.append((time.time(), token))
    except Exception as e:
        error = f"{type(e).__name__}: {e}"[:300]
    return record(sent, arrivals, time.time(), n, pace, error)


async def main() -> None:
    ray.init(
        num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
        log_to_driver=False, configure_logging=False,
    )  # fmt: skip
    serve.start(proxy_location="Disabled")
    app = serve.run(Gateway.bind(Leaf.bind()), name="load", route_prefix=None)
    gateway = psutil.Process(await app.pid.remote())
    leaf = psutil.Process(await app.leaf_pid.remote())
    handle = app.options(stream=True)
    await one(handle, 5, 0.0)  # warm: the first stream sets up the replicas' paths
    print(json.dumps({"ready": True, "ray": ray.__version__}), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        cmd = json.loads(line)
        n, tokens, pace = int(cmd["streams"]), int(cmd["tokens"]), float(cmd["pace"])
        before = (_cpu(gateway), _cpu(leaf), _tree_cpu())
        recs = await asyncio.gather(*(one(handle, tokens, pace) for _ in range(n)))
        after = (_cpu(gateway), _cpu(leaf), _tree_cpu())
        out = {
            "streams": [r.to_json() for r in recs],
            "cpu": {
                k: b - a for k, a, b in zip(("gateway", "leaf", "all"), before, after, strict=True)
            },
            "gateway_rss_mib": peak_rss_mib(gateway.pid),
        }
        print(json.dumps(out), flush=True)
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
