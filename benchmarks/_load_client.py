"""The load benchmark's client side: raw grpc.aio streams, server CPU, the Ray harness.

One process drives every gRPC side through the same code (a plain `ModuleServiceStub` over
a few channels, no lazygrpc on the client path); it records when each message arrives and
reads the text afterwards (`_pace.record`), so that parsing stays out of the round.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio
import psutil
from google.protobuf import struct_pb2

from benchmarks._common import ROOT, ServerProc, log
from benchmarks._pace import StreamRecord, peak_rss_mib, record
from lazygrpc.v1 import module_pb2, module_pb2_grpc

#: Channels (connections) the client spreads its streams over.
CHANNELS = 4
RAY_PY = ROOT / "benchmarks" / "ray" / ".venv" / "bin" / "python"
RAY_SCRIPT = ROOT / "benchmarks" / "ray" / "load.py"


@dataclass
class RoundResult:
    """One side's round: every stream's record and what the server processes spent."""

    records: list[StreamRecord]
    gateway_cpu: float = float("nan")  # CPU seconds over the round
    leaf_cpu: float = float("nan")
    client_cpu: float = float("nan")
    gateway_rss: float = float("nan")  # MiB
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return sum(len(r.delays) for r in self.records)


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


class GrpcSide:
    """A side the raw client drives: `module` on the server at `address` (the gateway, or
    the leaf itself for a direct side)."""

    def __init__(
        self, name: str, address: str, module: str, leaf: ServerProc,
        gateway: ServerProc | None = None,
    ) -> None:  # fmt: skip
        self.name, self.module, self.leaf, self.gateway = name, module, leaf, gateway
        opts = [("grpc.use_local_subchannel_pool", 1)]  # CHANNELS separate connections
        self.channels = [grpc.aio.insecure_channel(address, options=opts) for _ in range(CHANNELS)]
        self.stubs = [module_pb2_grpc.ModuleServiceStub(ch) for ch in self.channels]

    def request(self, n: int, pace: float) -> module_pb2.CallRequest:
        kwargs = struct_pb2.Struct()
        kwargs.update({"n": n, "pace": pace})
        return module_pb2.CallRequest(module=self.module, kwargs=kwargs)

    async def stream(
        self, i: int, request: module_pb2.CallRequest, first: Callable[[], None] | None = None
    ) -> tuple[float, list[tuple[float, str]], float, str]:
        """(sent, [(arrival, text) per message with tokens], ended, error) of one stream;
        `first()` is called when its first token arrives."""
        arrivals: list[tuple[float, str]] = []
        sent = time.time()
        error = ""
        try:
            async for ev in self.stubs[i % CHANNELS].Stream(request):
                if ev.HasField("delta"):
                    arrivals.append((time.time(), ev.delta.string_value))
                    if first is not None and len(arrivals) == 1:
                        first()
        except grpc.aio.AioRpcError as e:
            error = f"{e.code().name}: {e.details()}"[:300]
        return sent, arrivals, time.time(), error

    async def round(self, streams: int, tokens: int, pace: float) -> RoundResult:
        request = self.request(tokens, pace)
        procs = [psutil.Process(p.pid) for p in (self.gateway, self.leaf) if p is not None]
        procs.append(psutil.Process(os.getpid()))
        before = [cpu_seconds(p) for p in procs]
        raw = await asyncio.gather(*(self.stream(i, request) for i in range(streams)))
        spent = [cpu_seconds(p) - b for p, b in zip(procs, before, strict=True)]
        records = [record(s, a, e, tokens, pace, err) for s, a, e, err in raw]
        if self.gateway is None:
            spent.insert(0, float("nan"))
        rss = peak_rss_mib(self.gateway.pid) if self.gateway else float("nan")
        return RoundResult(records, spent[0], spent[1], spent[2], rss)

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


class RaySide:
    """Ray Serve through `benchmarks/ray/load.py` in Ray's virtualenv; `unavailable` says
    why there is none (not installed, did not start, too slow)."""

    name = "ray"

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.unavailable = ""
        self.version = ""

    async def start(self, timeout: float = 180.0) -> None:
        if not RAY_PY.exists():
            self.unavailable = (
                "Ray Serve is not installed (benchmarks/ray/setup.sh, which `make bench` runs, "
                "did not set up benchmarks/ray/.venv)"
            )
            return
        log("starting Ray Serve (its own virtualenv)")
        self.proc = await asyncio.create_subprocess_exec(
            str(RAY_PY), str(RAY_SCRIPT), cwd=ROOT, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, limit=1 << 26,
            env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"},
        )  # fmt: skip
        ready = await self._answer(timeout, "start")
        if ready is not None:
            self.version = str(ready.get("ray", ""))

    async def _answer(self, timeout: float, what: str) -> dict[str, object] | None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while line := await self.proc.stdout.readline():
                    if line.startswith(b"{"):
                        answer: dict[str, object] = json.loads(line)
                        return answer
            self.unavailable = f"the Ray Serve harness exited during {what}"
        except TimeoutError:
            self.unavailable = f"Ray Serve did not {what} within {timeout:.0f} s"
        except (OSError, ValueError) as e:  # a broken pipe, an answer that is not JSON
            self.unavailable = f"the Ray Serve harness failed during {what}: {e!r}"
        await self.close()
        return None

    async def round(self, streams: int, tokens: int, pace: float) -> RoundResult | None:
        if self.proc is None or self.unavailable:
            return None
        assert self.proc.stdin is not None
        cmd = {"streams": streams, "tokens": tokens, "pace": pace}
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        out = await self._answer(60.0 + streams * tokens * pace, f"finish {streams} streams")
        if out is None:
            return None
        recs = [StreamRecord(**r) for r in out["streams"]]  # type: ignore[attr-defined]
        cpu: dict[str, float] = out["cpu"]  # type: ignore[assignment]
        rss = float(out["gateway_rss_mib"])  # type: ignore[arg-type]
        return RoundResult(recs, cpu["gateway"], cpu["leaf"], gateway_rss=rss,
                           extra={"all": cpu["all"]})  # fmt: skip

    async def close(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
