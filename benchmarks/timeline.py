"""Where a relay's time to first token goes: a cross-process timeline, lazygrpc vs bare.

    python -m benchmarks.timeline [--trials 400] [--tokens 8]

Runs the relay of `bench_broker` (client -> gateway -> model) twice, lazygrpc and bare
grpcio, each server in its own process with a small hook that records monotonic
timestamps (and thread CPU time) at fixed points: the handler starts, the downstream call
is created, a message arrives, the first item is yielded. The client alternates the two
sides per trial; events are matched to trials by time (calls are sequential). Prints the
median of each segment for both sides, and lazygrpc's finer segments with thread CPU time
next to wall time (equal means the thread ran all along: the cost is CPU, not waiting).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import bisect
import collections
import importlib
import inspect
import itertools
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

Event = tuple[int, str, int]  # (monotonic ns, name, thread CPU ns)
_events: list[Event] = []
_tag = {"side": "", "role": ""}


def _mark(name: str) -> None:
    _events.append((time.monotonic_ns(), name, time.thread_time_ns()))


def _hook_grpc_calls(role: str) -> None:
    """Mark `<role>.call` when a server-streaming call is created, `<role>.recv` per message."""
    import grpc.aio._call as calls

    init = calls.UnaryStreamCall.__init__
    read = calls._StreamResponseMixin._read

    def traced_init(self: Any, *args: Any, **kwargs: Any) -> None:
        _mark(f"{role}.call")
        init(self, *args, **kwargs)

    async def traced_read(self: Any) -> Any:
        message = await read(self)
        _mark(f"{role}.recv")
        return message

    calls.UnaryStreamCall.__init__ = traced_init  # type: ignore[method-assign]
    calls._StreamResponseMixin._read = traced_read  # type: ignore[method-assign]


def _outer(role: str, fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def handler(*args: Any) -> AsyncIterator[Any]:
        _mark(f"{role}.start")
        first = True
        async for item in fn(*args):
            if first:
                _mark(f"{role}.yield")
                first = False
            yield item

    return handler


def serve(out: str, role: str, argv: list[str]) -> None:
    """A `benchmarks._servers` server with the timeline hooks; events go to `out` at exit."""
    import benchmarks._servers as servers

    def dump() -> None:
        Path(out).write_text("".join(f"{t} {n} {c}\n" for t, n, c in _events))

    def stop(*_: Any) -> None:
        dump()
        os._exit(0)

    atexit.register(dump)  # lazygrpc.Server replaces the handler below and exits normally
    signal.signal(signal.SIGTERM, stop)
    _hook_grpc_calls(role)
    if argv[0].startswith("bare"):
        servers.BareModules.Stream = _outer(role, servers.BareModules.Stream)  # type: ignore[method-assign]
        servers.BareModel.Generate = _outer(role, servers.BareModel.Generate)  # type: ignore[method-assign]
    else:
        dispatch = importlib.import_module("lazygrpc.server.dispatch")
        lifecycle = importlib.import_module("lazygrpc.server.call")
        modules = importlib.import_module("lazygrpc.server.modules")
        model = importlib.import_module("lazygrpc.server.model")
        client_call = importlib.import_module("lazygrpc.client.call")
        aio_behavior = dispatch.aio_behavior
        start = lifecycle.MethodCalls.start
        arguments = modules.ModuleServicer._arguments
        outgoing = client_call.outgoing_metadata
        run = model.ModelServicer._run

        def traced_behavior(behavior: Any, hooks: Any) -> Any:
            wrapped = aio_behavior(behavior, hooks)
            return _outer(role, wrapped) if inspect.isasyncgenfunction(wrapped) else wrapped

        def traced_start(self: Any, context: Any) -> Any:
            scope = start(self, context)
            _mark(f"{role}.admitted")
            return scope

        def traced_arguments(self: Any, request: Any) -> Any:
            _mark(f"{role}.module_stream")
            args = arguments(self, request)
            _mark(f"{role}.decoded")
            return args

        def traced_outgoing(*args: Any) -> Any:
            _mark(f"{role}.prepare")
            out = outgoing(*args)
            _mark(f"{role}.prepared")
            return out

        def traced_run(self: Any, request: Any) -> Any:
            _mark(f"{role}.generate")
            started = run(self, request)
            _mark(f"{role}.validated")
            return started

        # The builder imported `aio_behavior` by name: patch it where it is looked up too.
        dispatch.aio_behavior = traced_behavior
        importlib.import_module("lazygrpc.server.builder").aio_behavior = traced_behavior
        lifecycle.MethodCalls.start = traced_start
        modules.ModuleServicer._arguments = traced_arguments
        client_call.outgoing_metadata = traced_outgoing
        model.ModelServicer._run = traced_run
    sys.argv = [sys.argv[0], *argv]
    servers.main()


ORDER = [
    "client.start", "client.call", "gw.start", "gw.call", "model.start", "model.yield",
    "gw.recv", "gw.yield", "client.recv", "client.first",
]  # fmt: skip


def _load(path: Path) -> list[Event]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        t, name, cpu = line.split()
        out.append((int(t), name, int(cpu)))
    return out


def report(events: dict[str, list[Event]], trials: list[tuple[str, int, int]]) -> str:
    coarse: dict[str, dict[str, list[float]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    fine: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for side, a, b in trials:
        evs = events[side]
        i = bisect.bisect_left(evs, (a, "", 0))
        first: dict[str, Event] = {"client.start": (a, "client.start", 0)}
        seq: list[Event] = []
        while i < len(evs) and evs[i][0] <= b:
            if evs[i][1] not in first:
                first[evs[i][1]] = evs[i]
                seq.append(evs[i])
            i += 1
        first["client.first"] = (b, "client.first", 0)
        if all(name in first for name in ORDER):
            for x, y in itertools.pairwise(ORDER):
                coarse[side][f"{x} → {y}"].append((first[y][0] - first[x][0]) / 1000)
            coarse[side]["TOTAL"].append((b - a) / 1000)
        if side == "lazy":
            for (t1, n1, c1), (t2, n2, c2) in itertools.pairwise(seq):
                same = n1.split(".")[0] == n2.split(".")[0]
                fine[f"{n1} → {n2}"].append(((t2 - t1) / 1000, (c2 - c1) / 1000 if same else -1))
    lines = ["segment (median µs)                 bare    lazygrpc   difference"]
    for seg, bare in coarse["bare"].items():
        lz = statistics.median(coarse["lazy"][seg]) if coarse["lazy"][seg] else float("nan")
        bm = statistics.median(bare)
        lines.append(f"{seg:32s} {bm:8.1f} {lz:10.1f} {lz - bm:+10.1f}")
    lines.append("")
    lines.append("lazygrpc, finer (median µs)                   wall  thread CPU")
    for seg, values in sorted(fine.items(), key=lambda kv: -len(kv[1])):
        if len(values) < len(trials) // 4:
            continue
        wall = statistics.median(v for v, _ in values)
        cpus = [c for _, c in values if c >= 0]
        cpu = f"{statistics.median(cpus):10.1f}" if cpus else "    (hops)"
        lines.append(f"{seg:42s} {wall:8.1f} {cpu}")
    return "\n".join(lines)


async def drive(trials: int, tokens: int, out_dir: Path) -> str:
    from benchmarks import _clients as c
    from benchmarks._common import PYTHON, ServerProc
    from benchmarks._servers import token_prompt

    _hook_grpc_calls("client")
    procs: list[ServerProc] = []

    def start(side: str, role: str, *argv: str) -> ServerProc:
        out = str(out_dir / f"{side}.{role}")
        cmd = [PYTHON, "-m", "benchmarks.timeline", "--serve", out, role, *argv]
        p = ServerProc(cmd)
        procs.append(p)
        return p

    try:
        bm = start("bare", "model", "bare-model")
        bg = start("bare", "gw", "bare-modules", "--model", bm.address)
        lm = start("lazy", "model", "lazy-model")
        lg = start("lazy", "gw", "lazy-modules", "--model", lm.url)
        prompt = token_prompt(tokens)
        fns = {
            "bare": c.bare_module_stream(c.bare_channel(bg.address), "relay", prompt),
            "lazy": c.lazy_module_stream(lg.url, "relay", prompt),
        }
        for fn in fns.values():
            for _ in range(30):
                await c.stream_once(fn)
        client_events: dict[str, list[Event]] = {"bare": [], "lazy": []}
        done: list[tuple[str, int, int]] = []
        for r in range(trials):
            for side in ("bare", "lazy") if r % 2 == 0 else ("lazy", "bare"):
                mark = len(_events)
                t0 = time.monotonic_ns()
                ttft, _, _ = await c.stream_once(fns[side])
                done.append((side, t0, t0 + int(ttft * 1e9)))
                client_events[side] += _events[mark:]
    finally:
        for p in procs:
            p.stop()
    events = {
        side: sorted(
            client_events[side] + _load(out_dir / f"{side}.gw") + _load(out_dir / f"{side}.model")
        )
        for side in ("bare", "lazy")
    }
    return report(events, done)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3], sys.argv[4:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=400)
    p.add_argument("--tokens", type=int, default=8)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="lazygrpc-timeline-") as d:
        print(asyncio.run(drive(a.trials, a.tokens, Path(d))))


if __name__ == "__main__":
    main()
