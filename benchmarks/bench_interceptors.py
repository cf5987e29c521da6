"""Issue 3: what lazygrpc's interceptors cost, against the same servicer without them.

One hand-written grpcio `ModuleService` servicer (`benchmarks/_servers.py`, `bare-modules`)
runs in five server processes: on `lazygrpc.Server` (lazygrpc's layer wraps the handlers
once, at registration; the client goes through `lazygrpc.client.call`, as `connect()` does), on a
plain `grpc.aio.server` with `server_interceptors(aio=True)` (raw stubs: the client channel
wrapped by `intercept_aio_channel()`, and, for context, a channel with grpc's client
interceptors, `aio_client_interceptors()`), bare, and, for context, with grpc.aio
interceptors that do nothing and bare again in a second process (an A/A pair: how far two
identical servers differ in the same run). Unary QPS and stream throughput are each measured in many short
blocks, the sides alternating (order flipped each time), so that drift on a shared machine
stays out of the ratios; the blocks run the sides in the orders of a Williams design
(`_common.block_order`: every side in every place, after every other side, equally often).

lazygrpc's calls carry a session id and no globals: the run makes a fresh session, so that
it never inherits globals that an earlier benchmark in the same process left on the thread
(`make bench` runs them all in one process, and the relays there bring a `usage` global back).

Targets: interceptors cost <= 10 % of unary QPS and <= 5 % of streaming throughput.

Throughput ratios carry the machine's noise (the A/A rows show how much); the CPU rows do
not: they add up the CPU time the server process and this client process spent per call or
message over all blocks of each side (waiting costs no CPU), which is the layer's cost itself.

    python -m benchmarks.bench_interceptors [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os

import psutil

from benchmarks import _clients as c
from benchmarks._common import Row, Servers, block_order, log, print_rows


async def run(quick: bool = False) -> list[Row]:
    from lazygrpc import session

    with session():  # a session id, no globals; the calls' tasks inherit it
        return await _run(quick)


async def _run(quick: bool) -> list[Row]:
    from lazygrpc import aio_client_interceptors, intercept_aio_channel

    # Throughput drifts by ±10 % over seconds on a shared VM: short blocks, alternated many
    # times, keep that drift out of the ratios (block orders from a Williams design).
    blocks = 24 if quick else 48
    block_s = 0.2 if quick else 0.3
    rounds = 16 if quick else 40
    n_stream = 2_000 if quick else 3_000
    with Servers() as servers:
        on = servers.start("bare-modules", "--interceptors")
        wrapped = servers.start("bare-modules", "--wrapped")
        off = servers.start("bare-modules")
        noop = servers.start("bare-modules", "--noop-interceptors")
        twin = servers.start("bare-modules")  # A/A: what two identical processes differ by
        ch_on = c.bare_channel(on.address, interceptors=aio_client_interceptors())
        ch_raw = intercept_aio_channel(c.bare_channel(on.address))
        ch_noop = c.bare_channel(noop.address, interceptors=c.noop_interceptors())
        ch_layer = c.bare_channel(wrapped.address)
        ch_off = c.bare_channel(off.address)
        ch_twin = c.bare_channel(twin.address)
        sides = ("twin", "layer", "raw", "on", "noop", "off")
        pids = {"twin": twin.pid, "layer": wrapped.pid, "raw": on.pid, "on": on.pid,
                "noop": noop.pid, "off": off.pid}  # fmt: skip
        # CPU seconds of (server, client) and calls or messages per side, over all blocks.
        cpu: dict[str, dict[str, list[float]]] = {
            k: {side: [0.0, 0.0, 0.0] for side in sides} for k in ("q32", "stream")
        }
        try:
            unary = {
                "layer": c.layered_unary(ch_layer),
                "raw": c.bare_unary(ch_raw),
                "on": c.bare_unary(ch_on),
                "noop": c.bare_unary(ch_noop),
                "off": c.bare_unary(ch_off),
                "twin": c.bare_unary(ch_twin),
            }
            stream = {
                "layer": c.layered_module_stream(ch_layer, "tokens", n_stream),
                "raw": c.bare_module_stream(ch_raw, "tokens", n_stream),
                "on": c.bare_module_stream(ch_on, "tokens", n_stream),
                "noop": c.bare_module_stream(ch_noop, "tokens", n_stream),
                "off": c.bare_module_stream(ch_off, "tokens", n_stream),
                "twin": c.bare_module_stream(ch_twin, "tokens", n_stream),
            }
            await c.warm(*unary.values(), times=200)
            for fn in stream.values():
                await c.stream_once(fn)
            res: dict[str, dict[str, list[float]]] = {
                k: {side: [] for side in sides} for k in ("q1", "q32", "stream")
            }
            for key, callers in (("q1", 1), ("q32", 32)):
                for b in range(blocks):
                    for side in block_order(sides, b):
                        with _CpuMeter(pids[side], cpu.get(key, {}).get(side)) as meter:
                            made: list[int] = []
                            rate = await c.qps(unary[side], callers, block_s, made)
                            meter.count = made[0]
                        res[key][side].append(rate)
                log(f"interceptors: unary, {callers} caller(s), {blocks} blocks done")
            for r in range(rounds):
                for side in block_order(sides, r):
                    with _CpuMeter(pids[side], cpu["stream"][side]) as meter:
                        _, total, _ = await c.stream_once(stream[side], n_stream)
                        meter.count = n_stream
                    res["stream"][side].append(n_stream / total)
                log(f"interceptors: stream round {r + 1}/{rounds} done")
        finally:
            for ch in (ch_on, ch_raw, ch_layer, ch_noop, ch_off, ch_twin):
                await ch.close()
    base = "the same grpcio servicer and channel without lazygrpc"
    layer = "interceptors (issue 3), as lazygrpc.Server and connect() apply them"
    raw = (
        "interceptors (issue 3) for raw stubs: server_interceptors() on a plain grpc.aio "
        "server, the channel wrapped by intercept_aio_channel()"
    )
    rows = []
    for scen, side in ((layer, "layer"), (raw, "raw")):
        rows += [
            Row(scen, "unary QPS, 1 caller", "calls/s", res["q1"][side], res["q1"]["off"],
                "≥ 0.90×", "ratio>=0.9", base),
            Row(scen, "unary QPS, 32 callers", "calls/s", res["q32"][side], res["q32"]["off"],
                "≥ 0.90×", "ratio>=0.9", base),
            Row(scen, f"stream throughput, {n_stream:,} msgs", "msgs/s", res["stream"][side],
                res["stream"]["off"], "≥ 0.95×", "ratio>=0.95", base),
        ]  # fmt: skip
        for key, what in (("q32", "call, unary 32 callers"), ("stream", "message, stream")):
            for i, proc in ((0, "server"), (1, "client")):
                rows.append(
                    Row(scen, f"{proc} CPU per {what}", "µs", [_per(cpu[key][side], i)],
                        [_per(cpu[key]["off"], i)], baseline=base)
                )  # fmt: skip
    # Context: raw stubs through grpc's own client interceptor path; that path alone (no
    # lazygrpc code); the same bare server in a second process (this run's noise alone).
    on = (
        "raw stubs as above, but the channel with grpc client interceptors "
        "(aio_client_interceptors(): grpc's interceptor path adds a task per call)"
    )
    noop = "grpc.aio interceptors that do nothing (what any interceptor costs), no lazygrpc"
    twin = "the bare servicer again, in a second process (A/A: the run's noise floor)"
    for scen, side in ((on, "on"), (noop, "noop"), (twin, "twin")):
        rows += [
            Row(scen, "unary QPS, 1 caller", "calls/s", res["q1"][side], res["q1"]["off"],
                baseline=base),
            Row(scen, "unary QPS, 32 callers", "calls/s", res["q32"][side], res["q32"]["off"],
                baseline=base),
            Row(scen, f"stream throughput, {n_stream:,} msgs", "msgs/s", res["stream"][side],
                res["stream"]["off"], baseline=base),
        ]  # fmt: skip
    return rows


class _CpuMeter:
    """Adds the CPU seconds a server process and this process spend in a block, and the
    block's `count` of calls, to `acc` ([server s, client s, count]; None: not measured)."""

    def __init__(self, pid: int, acc: list[float] | None) -> None:
        self.acc = acc
        self.count = 0.0
        self._server = psutil.Process(pid)
        self._client = psutil.Process(os.getpid())
        self._start = (0.0, 0.0)

    def __enter__(self) -> _CpuMeter:
        if self.acc is not None:
            self._start = (_cpu(self._server), _cpu(self._client))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.acc is not None and exc[0] is None:
            self.acc[0] += _cpu(self._server) - self._start[0]
            self.acc[1] += _cpu(self._client) - self._start[1]
            self.acc[2] += self.count


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def _per(acc: list[float], i: int) -> float:
    """Microseconds of CPU per call or message (i=0 server, 1 client)."""
    return acc[i] / acc[2] * 1e6 if acc[2] else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short run")
    a = p.parse_args()
    rows = asyncio.run(run(a.quick))
    print_rows(rows, "lazygrpc interceptors vs none (same servicer, same run, interleaved)")


if __name__ == "__main__":
    main()
