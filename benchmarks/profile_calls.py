"""CPU cost per call and a py-spy profile of a server under load (for diagnosing misses).

    python -m benchmarks.profile_calls unary|ttft|relay-ttft [--seconds 6] [--spy]

Runs the lazygrpc server and the bare grpcio server of the scenario in their own processes,
drives each for the same time from this process, and prints CPU microseconds per call in
the client (this process) and in each server process. With --spy, `py-spy record` samples
the lazygrpc server(s) and prints the hottest functions (own and cumulative time).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks import _clients as c
from benchmarks._common import Servers, log
from benchmarks._servers import token_prompt


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _spy(
    pids: list[int], seconds: float, out_dir: Path, native: bool = False
) -> list[subprocess.Popen[bytes]]:
    exe = shutil.which("py-spy") or str(Path(os.sys.executable).parent / "py-spy")
    procs = []
    for pid in pids:
        procs.append(
            subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                 "--rate", "500", "--format", "raw", "--nonblocking",
                 "--output", str(out_dir / f"{pid}.txt"), *(["--native"] if native else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
    return procs


def summarize(path: Path, top: int = 25) -> str:
    own: collections.Counter[str] = collections.Counter()
    cum: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n_s = line.rpartition(" ")
        n = int(n_s)
        total += n
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] += n
        for f in set(frames):
            cum[f] += n
    out = [f"{total} samples"]
    out.append("  own%   cum%  function")
    for f, n in own.most_common(top):
        out.append(f"{100 * n / total:5.1f}  {100 * cum[f] / total:5.1f}  {f}")
    out.append("  -- cumulative, lazygrpc frames --")
    lz = [(f, n) for f, n in cum.most_common() if "lazygrpc/" in f]
    for f, n in lz[:top]:
        out.append(f"{100 * own[f] / total:5.1f}  {100 * n / total:5.1f}  {f}")
    return "\n".join(out)


async def drive(fn: Any, seconds: float, mode: str) -> int:
    n = 0
    stop = time.perf_counter() + seconds
    if mode == "unary":

        async def caller() -> None:
            nonlocal n
            while time.perf_counter() < stop:
                await fn()
                n += 1

        await asyncio.gather(*(caller() for _ in range(8)))
    else:
        while time.perf_counter() < stop:
            await c.stream_once(fn)
            n += 1
    return n


async def main_async(a: argparse.Namespace) -> None:
    with Servers() as servers:
        if a.scenario == "unary":
            lz = servers.start("lazy-modules")
            bz = servers.start("bare-modules")
            ch = c.bare_channel(bz.address)
            fns = {"lazy": c.lazy_unary(lz.url, module=a.module), "bare": c.bare_unary(ch)}
            pids = {"lazy": [lz.pid], "bare": [bz.pid]}
        elif a.scenario == "ttft":
            lm = servers.start("lazy-model")
            bm = servers.start("bare-model")
            ch = c.bare_channel(bm.address)
            fns = {
                "lazy": c.lazy_generate(lm.url, token_prompt(a.tokens)),
                "bare": c.bare_generate(ch, token_prompt(a.tokens)),
            }
            pids = {"lazy": [lm.pid], "bare": [bm.pid]}
        else:
            lm = servers.start("lazy-model")
            lg = servers.start("lazy-modules", "--model", lm.url)
            bm = servers.start("bare-model")
            bg = servers.start("bare-modules", "--model", bm.address)
            ch = c.bare_channel(bg.address)
            fns = {
                "lazy": c.lazy_module_stream(lg.url, "relay", token_prompt(a.tokens)),
                "bare": c.bare_module_stream(ch, "relay", token_prompt(a.tokens)),
            }
            pids = {"lazy": [lg.pid, lm.pid], "bare": [bg.pid, bm.pid]}
        mode = "unary" if a.scenario == "unary" else "stream"
        for side in fns:
            await drive(fns[side], 1.0, mode)
        me = os.getpid()
        for side in ("lazy", "bare"):
            spies: list[Any] = []
            tmp = Path(tempfile.mkdtemp(prefix="lazygrpc-spy-"))
            if a.spy and side == "lazy":
                spies = _spy(pids[side], a.seconds, tmp, a.native)
                await asyncio.sleep(0.5)
            before = [_cpu(p) for p in pids[side]] + [_cpu(me)]
            t0 = time.perf_counter()
            n = await drive(fns[side], a.seconds, mode)
            wall = time.perf_counter() - t0
            after = [_cpu(p) for p in pids[side]] + [_cpu(me)]
            per = [(y - x) / n * 1e6 for x, y in zip(before, after, strict=True)]
            names = [f"server{i + 1}" for i in range(len(pids[side]))] + ["client"]
            costs = ", ".join(f"{k} {v:.0f} µs" for k, v in zip(names, per, strict=True))
            print(f"{side}: {n / wall:.0f} calls/s; CPU per call: {costs}", flush=True)
            for sp in spies:
                sp.wait()
            for p in pids[side] if spies else []:
                f = tmp / f"{p}.txt"
                if f.exists():
                    print(f"--- py-spy of server pid {p} ({side}) ---")
                    print(summarize(f))
        await ch.close()
    log("done")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenario", choices=["unary", "ttft", "relay-ttft"])
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--spy", action="store_true")
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument("--module", default="echo", help="unary: echo (sync def) or aecho (async)")
    p.add_argument("--quick", action="store_true", help="2-second runs")
    p.add_argument("--tokens", type=int, default=8, help="tokens per stream (ttft, relay-ttft)")
    a = p.parse_args()
    if a.quick:
        a.seconds = 2.0
    asyncio.run(main_async(a))


if __name__ == "__main__":
    main()
