"""Mixed load against real server processes for `LAZYGRPC_SOAK_SECONDS` (default 600).

A leaf and a gateway (`tests/fixtures/soak_modules.py`) run as `lazygrpc serve` processes
with `--metrics-port`. Workers cycle through 500 sessions making unary calls, failing
calls, full streams, slow reads, random cancels, missed deadlines, relayed streams and
calls with bad headers (refused). Each server's RSS and fds (psutil), its threads (apart
from grpc core's own pool, which grpc resizes by itself) and its open topics, tasks and
producers (`/metrics`) are sampled.

The run has a warm-up (a burst of held streams, then a fifth of the load), then the
servers are let go quiet and measured, then the main load, then quiet again: the leaks are
what the second quiet point holds beyond the first (0 topics, producers, tasks, fds,
threads), and RSS over the main load must be flat (a least-squares slope under
`LAZYGRPC_SOAK_RSS_SLOPE` MiB/min, default 4). A summary is
printed (`make soak` runs pytest with `-s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

import lazygrpc
from lazygrpc.v1 import module_pb2, module_pb2_grpc

pytestmark = pytest.mark.soak

ROOT = Path(__file__).resolve().parents[2]
SECONDS = float(os.environ.get("LAZYGRPC_SOAK_SECONDS", "600"))
RSS_SLOPE = float(os.environ.get("LAZYGRPC_SOAK_RSS_SLOPE", "4"))  # MiB per minute
WORKERS = 32
SESSIONS = 500
MODULES = "tests/fixtures/soak_modules.py"
GAUGES = ("lazygrpc_broker_open_topics", "lazygrpc_server_tasks", "lazygrpc_server_producers")


@dataclass
class Served:
    """A `lazygrpc serve` process with its gRPC and metrics ports."""

    proc: subprocess.Popen[str]
    url: str
    metrics: str
    samples: list[dict[str, float]] = field(default_factory=list)

    def scrape(self) -> dict[str, float]:
        with urllib.request.urlopen(self.metrics, timeout=10) as resp:
            text = resp.read().decode()
        out: Counter[str] = Counter()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[s.name] += s.value  # summed over labels
                if s.name == "lazygrpc_server_refused_total":
                    out[f"refused {s.labels['grpc_code']}"] += s.value
        return dict(out)

    def sample(self) -> dict[str, float]:
        p = psutil.Process(self.proc.pid)
        scraped = self.scrape()
        row = {
            "t": time.monotonic(),
            "rss": p.memory_info().rss / 2**20,
            "fds": p.num_fds(),
            "threads": threads_of(self.proc.pid),
            "in_flight": scraped.get("lazygrpc_server_in_flight", 0.0),
            **{g: scraped.get(g, 0.0) for g in GAUGES},
        }
        self.samples.append(row)
        return row


#: Threads of grpc core's own EventEngine pool, which its lifeguard grows under load and
#: shrinks when idle: their number at a quiet point says nothing about a leak.
GRPC_POOL_THREADS = {"event_engine", "lifeguard"}


def threads_of(pid: int) -> int:
    """The process's threads apart from grpc core's own pool (Linux: by each thread's name)."""
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            count += (task / "comm").read_text().strip() not in GRPC_POOL_THREADS
    return count


def serve(name: str, env: dict[str, str], log: Any) -> Served:
    targets = [f"{MODULES}:{m}" for m in ("echo", "fails", "tokens", "atokens", "slow", "relay")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lazygrpc", "serve", *targets, "--name", name, "--metrics-port",
         "0", "--topic-events", "16", "--topic-bytes", "16384"],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, env={**os.environ, **env},
    )  # fmt: skip
    assert proc.stdout is not None
    listening, metrics = proc.stdout.readline(), proc.stdout.readline()
    assert listening.startswith("listening on "), listening
    assert metrics.startswith("metrics on "), metrics
    return Served(proc, f"grpc://{listening.split()[-1]}", metrics.split()[-1])


class Load:
    """The workers' mix of calls; `tally` counts what each kind did."""

    def __init__(self, leaf: str, gateway: str) -> None:
        self.leaf, self.gateway = leaf, gateway
        self.tally: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.next_session = 0

    async def open(self) -> None:
        """The raw channel of `bad_header`, on the running loop."""
        self.channel = grpc.aio.insecure_channel(self.leaf.removeprefix("grpc://"))
        self.stub = module_pb2_grpc.ModuleServiceStub(self.channel)

    async def run(self, seed: int, until: float) -> None:
        rng = random.Random(seed)
        kinds = [self.unary, self.error, self.stream, self.slow_reader, self.cancel,
                 self.deadline, self.relay, self.bad_header]  # fmt: skip
        weights = [30, 10, 15, 10, 10, 5, 15, 5]
        while time.monotonic() < until:
            kind = rng.choices(kinds, weights)[0]
            self.next_session += 1
            with lazygrpc.session(f"soak-{self.next_session % SESSIONS}"):
                try:
                    await kind(rng)
                    self.tally[kind.__name__] += 1
                except Exception as exc:  # a call that failed in a way its kind does not
                    self.unexpected.append(f"{kind.__name__}: {type(exc).__name__}: {exc}"[:300])

    async def burst(self) -> None:
        """Four times the workers' streams held at once, each with a producer thread blocked
        on a full topic: module threads are made as needed and kept (a thread pool makes one
        whenever no thread is idle at that instant), so the pool grows past what the mix can
        use here, in the warm-up, not during the measured load."""
        streams = [lazygrpc.connect(f"{self.leaf}/tokens").astream(100_000)
                   for _ in range(4 * WORKERS)]  # fmt: skip
        for events in streams:
            await anext(events)
        for events in streams:
            await events.aclose()

    async def unary(self, rng: random.Random) -> None:
        assert await lazygrpc.connect(f"{self.leaf}/echo").acall(rng.random()) is not None

    async def error(self, rng: random.Random) -> None:
        with pytest.raises(lazygrpc.RemoteError) as failed:
            await lazygrpc.connect(f"{self.leaf}/fails").acall(1)
        assert failed.value.remote_type == "ValueError"

    async def stream(self, rng: random.Random) -> None:
        module = rng.choice(["tokens", "atokens"])
        n = rng.randrange(1, 40)
        deltas = [
            ev async for ev in lazygrpc.connect(f"{self.leaf}/{module}").astream(n)
            if ev.kind == "delta"
        ]  # fmt: skip
        assert "".join(ev.value for ev in deltas).count(" ") == n

    async def slow_reader(self, rng: random.Random) -> None:
        """Reads a long stream slowly, then leaves early: the producer waits on a full topic."""
        events = lazygrpc.connect(f"{self.leaf}/{rng.choice(['tokens', 'atokens'])}").astream(
            100_000
        )
        async with contextlib.aclosing(events):
            for _ in range(rng.randrange(5, 40)):
                await anext(events)
                await asyncio.sleep(0.005)

    async def cancel(self, rng: random.Random) -> None:
        """A call or stream cancelled at a random point."""
        if rng.random() < 0.5:
            task = asyncio.ensure_future(lazygrpc.connect(f"{self.leaf}/slow").acall(1.0))
        else:
            task = asyncio.ensure_future(self.stream(rng))
        await asyncio.sleep(rng.random() * 0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def deadline(self, rng: random.Random) -> None:
        with pytest.raises(lazygrpc.RemoteError) as late:
            await lazygrpc.connect(f"{self.leaf}/slow", timeout=0.02).acall(1.0)
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

    async def relay(self, rng: random.Random) -> None:
        n = rng.randrange(1, 30)
        text = "".join(
            [ev.value async for ev in lazygrpc.connect(f"{self.gateway}/relay").astream(n)
             if ev.kind == "delta"]
        )  # fmt: skip
        assert text.count(" ") == n

    async def bad_header(self, rng: random.Random) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await self.stub.Call(
                module_pb2.CallRequest(module="echo"),
                metadata=(("lazy-session-id", "not a session id"),),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def load_for(load: Load, seconds: float, servers: list[Served]) -> None:
    until = time.monotonic() + seconds
    workers = [asyncio.create_task(load.run(i, until)) for i in range(WORKERS)]
    every = max(1.0, seconds / 60)
    while not all(w.done() for w in workers):
        for s in servers:
            await asyncio.to_thread(s.sample)
        await asyncio.wait(workers, timeout=every)
    await asyncio.gather(*workers)


def quiet(server: Served, timeout: float = 60.0) -> dict[str, float]:
    """Wait until the server holds no call, topic or producer; then its sample."""
    deadline = time.monotonic() + timeout
    while True:
        row = server.sample()
        held = ("in_flight", "lazygrpc_broker_open_topics", "lazygrpc_server_producers")
        idle = all(row[key] == 0 for key in held)
        if idle or time.monotonic() > deadline:
            return row
        time.sleep(0.1)


def slope(rows: list[dict[str, float]], key: str) -> float:
    """Least-squares slope of `key` per minute."""
    xs = [r["t"] for r in rows]
    ys = [r[key] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs) or 1.0
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


@pytest.mark.timeout(int(SECONDS * 2 + 300))
def test_mixed_load_leaves_no_leaks_and_flat_memory() -> None:
    with tempfile.TemporaryFile("w+") as log:
        leaf = serve("leaf", {}, log)
        gateway = serve("gateway", {"LAZYGRPC_SOAK_LEAF": leaf.url}, log)
        servers = [leaf, gateway]
        try:
            load = Load(leaf.url, gateway.url)

            async def go() -> tuple[list[dict[str, float]], list[dict[str, float]]]:
                await load.open()
                await load.burst()
                await load_for(load, max(5.0, SECONDS / 5), servers)
                before = [await asyncio.to_thread(quiet, s) for s in servers]
                for s in servers:
                    s.samples.clear()
                await load_for(load, SECONDS, servers)
                after = [await asyncio.to_thread(quiet, s) for s in servers]
                await load.channel.close()
                return before, after

            before, after = asyncio.run(go())
            report(load, servers, before, after)
        finally:
            for s in servers:
                s.proc.terminate()
            for s in servers:
                s.proc.communicate(timeout=30)
        assert load.unexpected == []
        for s, b, a in zip(servers, before, after, strict=True):
            assert a["lazygrpc_broker_open_topics"] == 0
            assert a["lazygrpc_server_producers"] == 0
            assert a["in_flight"] == 0
            assert a["lazygrpc_server_tasks"] <= b["lazygrpc_server_tasks"]
            assert a["fds"] <= b["fds"]
            assert a["threads"] <= b["threads"]
            assert slope(s.samples, "rss") < RSS_SLOPE, s.url


def report(
    load: Load, servers: list[Served], before: list[dict[str, float]], after: list[dict[str, float]]
) -> None:
    print(f"\nmixed soak, {SECONDS:.0f} s of main load after a warm-up, {WORKERS} workers, "
          f"{SESSIONS} sessions")  # fmt: skip
    print("  calls by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(load.tally.items())))
    print(f"  unexpected failures: {len(load.unexpected)} {load.unexpected[:3]}")
    for name, s, b, a in zip(("leaf", "gateway"), servers, before, after, strict=True):
        scraped = s.scrape()
        refused = {k.split()[1]: int(v) for k, v in scraped.items() if k.startswith("refused ")}
        rss = [r["rss"] for r in s.samples]
        quarters = " ".join(f"{rss[min(len(rss) - 1, i * len(rss) // 4)]:.1f}" for i in range(5))
        print(
            f"  {name}: calls served {int(scraped.get('lazygrpc_server_handled_total', 0))}, "
            f"refused {refused}; RSS by quarter {quarters} MiB, slope "
            f"{slope(s.samples, 'rss'):+.2f} MiB/min (bound {RSS_SLOPE}); leaked: topics "
            f"{int(a['lazygrpc_broker_open_topics'])}, producers "
            f"{int(a['lazygrpc_server_producers'])}, tasks "
            f"{int(a['lazygrpc_server_tasks'] - b['lazygrpc_server_tasks'])}, fds "
            f"{int(a['fds'] - b['fds'])}, threads {int(a['threads'] - b['threads'])}"
        )
