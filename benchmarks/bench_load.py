"""Issue 19: many streams at a model's pace through a two-hop relay, against bare grpcio and
Ray Serve.

N concurrent streams (N = 1, 32, 256, 1024) of T tokens (100) at a fixed pace (20 ms a
token): client → gateway module → leaf module, and client → leaf directly. Every leaf is
the same paced producer (`_pace.paced`: token k is due at start + k * pace and carries that
due time, so the client knows each token's schedule); each hop is its own server process
(`_load_servers.py`), so each process's own CPU time gives CPU seconds per 1k tokens.

Sides, interleaved in every round (the orders of a Williams design, `_common.block_order`):
  lazy         lazygrpc gateway `async for ev in connect(leaf).astream(...): yield ev`
               → lazygrpc leaf (`Server().add_modules({"tokens": paced})`)
  bare         hand-written grpc.aio servicers of the same ModuleService proto; the gateway
               reads the leaf's `Stream` and yields a new `Event` per message
  lazy-direct, bare-direct   the client straight to each leaf
  lazy-llm     a lazygrpc gateway relaying a lazygrpc model server (`LLM(url).astream(p)`),
               at N <= 32 only
  ray          Ray Serve (benchmarks/ray/: a deployment relaying a generator deployment
               through a handle with `stream=True`), at N = 1 and 32 only
The same raw grpc.aio client (this process, `_load_client.py`) drives every gRPC side.

Fairness: while 200 streams run steadily through the relay, a new stream opens every
250 ms; its time to first token, lazygrpc against bare.

    python -m benchmarks.bench_load [--quick] [--skip-ray] [--levels 1,32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._common import Row, Servers, block_order, log, md_table, pct, print_rows
from benchmarks._load_client import GrpcSide, RaySide, RoundResult
from benchmarks._load_servers import raise_nofile

SERVERS = "benchmarks._load_servers"
RAY_LEVELS = (1, 32)
#: The model relay runs at these levels only (the whole run stays within ~6 minutes).
LLM_LEVELS = (1, 8, 32)
BARE = "bare grpcio: hand-written grpc.aio gateway, a new Event per message"
BARE_DIRECT = "bare grpcio leaf, one Event per token"

TITLE = "Issue 19: many streams at a model's pace"
SECTION = (
    "`python -m benchmarks.bench_load`: N streams of T tokens at a fixed pace (token k due "
    "at start + k × pace, its due time in its text), client → gateway → leaf (each its "
    "own process) and client → leaf; the same raw grpc.aio client (one process, 4 "
    "channels) drives every gRPC side. lazygrpc: a gateway module `async for ev in "
    "connect(leaf).astream(...): yield ev` in front of a leaf module (an async generator "
    "sleeping to its schedule); bare grpcio: hand-written servicers of the same proto, the "
    "gateway yielding a new `Event` per message. Added inter-token delay: arrival minus "
    "the token's due time, over every token. CPU: each server process's own CPU seconds "
    "over a round ÷ tokens delivered. Each cell: median over rounds; p50/p99 within a round "
    "over its streams (or tokens); 2 rounds at 1024 streams. CPU at 1 stream is at the "
    "clock tick's resolution (10 ms in 100 tokens). Ray Serve (its own virtualenv, "
    "`ray.init(num_cpus=2, include_dashboard=False)` on 127.0.0.1, HTTP proxy off, "
    "`max_ongoing_requests` raised to 1024) at 1 and 32 streams, its client the driver's "
    "`DeploymentHandle` (`stream=True`), not HTTP."
)


@dataclass
class Config:
    levels: tuple[int, ...] = (1, 32, 256, 1024)
    rounds: int = 3
    tokens: int = 100
    pace: float = 0.02
    fair_streams: int = 200
    fair_probes: int = 8
    fair_rounds: int = 3
    ray: bool = True

    def rounds_at(self, n: int) -> int:
        """Rounds at `n` streams: one fewer past 256 (a 1024-stream round takes ~15 s here)."""
        return self.rounds if n <= 256 else max(2, self.rounds - 1)

    @classmethod
    def quick(cls) -> Config:
        return cls(levels=(1, 8, 32), rounds=2, tokens=20, fair_streams=32, fair_probes=4,
                   fair_rounds=1)  # fmt: skip


@dataclass
class LoadReport:
    rows: list[Row]
    notes: list[str] = field(default_factory=list)


# -- what a round shows -----------------------------------------------------------------------


def _ok(r: RoundResult) -> list[float]:
    return [x.ttft for x in r.records if not x.error and x.messages]


def _delays(r: RoundResult) -> list[float]:
    return [d for x in r.records for d in x.delays]


def _per_1k(cpu: float, r: RoundResult) -> float:
    return cpu / r.tokens * 1000 if r.tokens else float("nan")


Metric = tuple[str, str, str, Callable[[RoundResult], float]]
METRICS: list[Metric] = [
    ("ttft50", "time to first token p50", "ms", lambda r: pct(_ok(r), 50) * 1000),
    ("ttft99", "time to first token p99", "ms", lambda r: pct(_ok(r), 99) * 1000),
    ("delay50", "added inter-token delay p50", "ms", lambda r: pct(_delays(r), 50) * 1000),
    ("delay99", "added inter-token delay p99", "ms", lambda r: pct(_delays(r), 99) * 1000),
    ("done", "completion overhead p50 (last token → stream end)", "ms",
     lambda r: pct([x.completion for x in r.records if x.messages], 50) * 1000),
    ("gw_cpu", "gateway CPU per 1k tokens", "CPU s", lambda r: _per_1k(r.gateway_cpu, r)),
    ("leaf_cpu", "leaf CPU per 1k tokens", "CPU s", lambda r: _per_1k(r.leaf_cpu, r)),
    ("client_cpu", "client CPU per 1k tokens", "CPU s", lambda r: _per_1k(r.client_cpu, r)),
    ("rss", "gateway peak RSS so far", "MiB", lambda r: r.gateway_rss),
    ("msgs", "messages per stream at the client", "msgs",
     lambda r: statistics.mean(x.messages for x in r.records)),
    ("errors", "streams failed", "streams", lambda r: sum(bool(x.error) for x in r.records)),
    ("broken", "streams not intact (tokens lost, reordered)", "streams",
     lambda r: sum(not x.intact and not x.error for x in r.records)),
]  # fmt: skip
ZERO = {"errors": ("0", "lazy<=0"), "broken": ("0", "lazy<=0")}


def relay_targets(n: int) -> dict[str, tuple[str, str]]:
    """The issue's targets for lazygrpc's relay against bare grpcio's at `n` streams."""
    out = {**ZERO, "delay99": ("≤ 1.0×", "ratio<=1.0")}
    if n in (32, 256):
        out["gw_cpu"] = ("≤ 0.8×", "ratio<=0.8")
    if n == 32:
        out["ttft99"] = ("≤ 1.2×", "ratio<=1.2")
    elif n in (256, 1024):
        out["ttft99"] = ("≤ 1.0×", "ratio<=1.0")
    return out


def ray_targets(n: int) -> dict[str, tuple[str, str]]:
    if n != 32:
        return {}
    return {"ttft99": ("≥ 5× lower", "base/lazy>=5"), "gw_cpu": ("≥ 3× lower", "base/lazy>=3")}


def pair_rows(
    scen: str, n: int, lazy: list[RoundResult], base: list[RoundResult], baseline: str,
    targets: dict[str, tuple[str, str]], skip: tuple[str, ...] = (),
) -> list[Row]:  # fmt: skip
    rows = []
    for key, label, unit, fn in METRICS:
        if key in skip:
            continue
        target, check = targets.get(key, ("—", ""))
        rows.append(Row(scen, f"{n} streams: {label}", unit, [fn(r) for r in lazy],
                        [fn(r) for r in base], target, check, baseline))  # fmt: skip
    return rows


def level_rows(n: int, res: dict[str, list[RoundResult]], ray_version: str) -> list[Row]:
    rows = pair_rows("relay (client → gateway → leaf)", n, res["lazy"], res["bare"], BARE,
                     relay_targets(n))  # fmt: skip
    rows += pair_rows("direct (client → leaf)", n, res["lazy-direct"], res["bare-direct"],
                      BARE_DIRECT, ZERO, skip=("gw_cpu", "rss"))  # fmt: skip
    if res["lazy-llm"]:
        rows += pair_rows("model relay (gateway `LLM(url).astream` → model server)", n,
                          res["lazy-llm"], res["bare"], BARE + " (module leaf)", ZERO)  # fmt: skip
    if res.get("ray"):
        scen = "relay vs Ray Serve"
        base = (
            f"Ray Serve {ray_version}: a deployment relaying a generator deployment "
            "through a handle (stream=True), driven by the driver's DeploymentHandle"
        )
        rows += pair_rows(scen, n, res["lazy"], res["ray"], base, {**ZERO, **ray_targets(n)},
                          skip=("client_cpu",))  # fmt: skip
        both = [(r.gateway_cpu + r.leaf_cpu) / r.tokens * 1000 for r in res["lazy"]]
        every = [r.extra["all"] / r.tokens * 1000 for r in res["ray"]]
        rows.append(Row(scen, f"{n} streams: CPU per 1k tokens, every server process", "CPU s",
                        both, every, "—", "", base,
                        note="lazygrpc: gateway + leaf; Ray: every process under its driver "
                             "(GCS, raylet, Serve controller, replicas)"))  # fmt: skip
    return rows


# -- fairness ---------------------------------------------------------------------------------


async def fairness(side: GrpcSide, cfg: Config) -> tuple[list[float], int]:
    """New streams' time to first token (s) while `cfg.fair_streams` streams run steadily
    through `side`, and how many of those failed before they were stopped."""
    every = 0.25
    long_req = side.request(round((cfg.fair_probes * every + 10) / cfg.pace), cfg.pace)
    probe_req = side.request(3, cfg.pace)
    running = asyncio.Event()
    started = 0

    def first() -> None:
        nonlocal started
        started += 1
        if started == cfg.fair_streams:
            running.set()

    tasks = [asyncio.ensure_future(side.stream(i, long_req, first))
             for i in range(cfg.fair_streams)]  # fmt: skip
    ttfts = []
    try:
        async with asyncio.timeout(60):
            await running.wait()
        for i in range(cfg.fair_probes):
            t0 = time.monotonic()
            sent, arrivals, _, error = await side.stream(i, probe_req)
            if arrivals and not error:
                ttfts.append(arrivals[0][0] - sent)
            await asyncio.sleep(max(0.0, every - (time.monotonic() - t0)))
    finally:
        failed = sum(1 for t in tasks if t.done() and (t.exception() or t.result()[3]))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return ttfts, failed


def fairness_rows(res: dict[str, list[tuple[list[float], int]]], cfg: Config) -> list[Row]:
    scen = f"fairness: a new stream while {cfg.fair_streams} run (relay)"
    rows = [
        Row(scen, f"new stream's time to first token {name}", "ms",
            [pct(t, p) * 1000 for t, _ in res["lazy"]], [pct(t, p) * 1000 for t, _ in res["bare"]],
            "—", "", BARE, note=f"{cfg.fair_probes} new streams a round, one every 250 ms"
            if p == 50 else "")
        for name, p in (("p50", 50), ("p99", 99))
    ]  # fmt: skip
    rows.append(Row(scen, "running streams failed", "streams", [f for _, f in res["lazy"]],
                    [f for _, f in res["bare"]], "0", "lazy<=0", BARE))  # fmt: skip
    return rows


# -- the run ----------------------------------------------------------------------------------


async def run(quick: bool = False, cfg: Config | None = None) -> LoadReport:
    cfg = cfg or (Config.quick() if quick else Config())
    raise_nofile()
    ray = RaySide()
    report = LoadReport([])
    ray_start = (asyncio.ensure_future(ray.start())
                 if cfg.ray and any(n in RAY_LEVELS for n in cfg.levels) else None)  # fmt: skip
    with Servers() as servers:
        start = servers.start
        lleaf, lmodel, bleaf = (start(k, module=SERVERS) for k in
                                ("lazy-leaf", "lazy-model", "bare-leaf"))  # fmt: skip
        lgw = start("lazy-gateway", "--leaf", lleaf.url, "--model", lmodel.url, module=SERVERS)
        bgw = start("bare-gateway", "--leaf", bleaf.address, module=SERVERS)
        sides = {
            "lazy": GrpcSide("lazy", lgw.address, "relay", lleaf, lgw),
            "bare": GrpcSide("bare", bgw.address, "relay", bleaf, bgw),
            "lazy-direct": GrpcSide("lazy-direct", lleaf.address, "tokens", lleaf),
            "bare-direct": GrpcSide("bare-direct", bleaf.address, "tokens", bleaf),
            "lazy-llm": GrpcSide("lazy-llm", lgw.address, "llm", lmodel, lgw),
        }
        try:
            if ray_start is not None:
                await ray_start
            for side in sides.values():  # channels connected, first-call paths warm
                await side.round(8, 5, cfg.pace)
            results: dict[int, dict[str, list[RoundResult]]] = {}
            t0 = time.monotonic()
            for n in cfg.levels:
                res = results[n] = {name: [] for name in (*sides, "ray")}
                names = [name for name in sides if name != "lazy-llm" or n in LLM_LEVELS]
                names += ["ray"] if n in RAY_LEVELS and ray.proc else []
                rounds = cfg.rounds_at(n)
                for r in range(rounds):
                    for name in block_order(names, r):
                        side: GrpcSide | RaySide = sides.get(name, ray)
                        got = await side.round(n, cfg.tokens, cfg.pace)
                        if got is not None:
                            res[name].append(got)
                    log(f"load: {n} streams, round {r + 1}/{rounds} "
                        f"({time.monotonic() - t0:.0f} s)")  # fmt: skip
                if n >= max(RAY_LEVELS):
                    await ray.close()  # Ray's processes stay out of the larger rounds
                report.rows += level_rows(n, res, ray.version)
            fair: dict[str, list[tuple[list[float], int]]] = {"lazy": [], "bare": []}
            for r in range(cfg.fair_rounds):
                for name in block_order(["lazy", "bare"], r):
                    fair[name].append(await fairness(sides[name], cfg))
            log(f"load: fairness done ({time.monotonic() - t0:.0f} s)")
            report.rows += fairness_rows(fair, cfg)
        finally:
            await ray.close()
            for side in sides.values():
                await side.close()
    order = {s: i for i, s in enumerate(dict.fromkeys(row.scenario for row in report.rows))}
    report.rows.sort(key=lambda row: order[row.scenario])  # one table per scenario
    if not cfg.ray:
        report.notes.append("Ray Serve not run (--skip-ray).")
    elif ray.unavailable:
        report.notes.append(f"Ray Serve side missing: {ray.unavailable}.")
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N = 1, 8, 32; 20 tokens; 2 rounds")
    p.add_argument("--skip-ray", action="store_true", help="no Ray Serve side")
    p.add_argument("--levels", help="stream counts, comma-separated (e.g. 1,32)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--tokens", type=int)
    p.add_argument("--pace", type=float, help="seconds a token")
    p.add_argument(
        "--results", help="also put this run's section into that RESULTS.md (run_all's format)"
    )
    a = p.parse_args()
    cfg = Config.quick() if a.quick else Config()
    cfg.ray = not a.skip_ray
    if a.levels:
        cfg.levels = tuple(int(x) for x in a.levels.split(","))
    for name in ("rounds", "tokens", "pace"):
        if getattr(a, name) is not None:
            setattr(cfg, name, getattr(a, name))
    report = asyncio.run(run(cfg=cfg))
    print_rows(report.rows, "lazygrpc under load (issue 19)")
    for note in report.notes:
        print(note)
    if a.results:
        command = "python -m benchmarks.bench_load" + " ".join(["", *sys.argv[1:]])
        text = " ".join([f"From `{command}` ({time.strftime('%Y-%m-%d %H:%M %Z')}).",
                         SECTION, *report.notes])  # fmt: skip
        replace_section(Path(a.results), TITLE, f"{text}\n\n{md_table(report.rows)}")


def replace_section(path: Path, title: str, body: str) -> None:
    """Put `## title` and `body` into a RESULTS.md in place of its section of that title
    (else before its raw harness output, else at its end)."""
    lines = path.read_text().splitlines()
    head = f"## {title}"
    new = [head, "", body, ""]
    if head in lines:
        start = lines.index(head)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))  # fmt: skip
    else:
        start = end = next((i for i, line in enumerate(lines) if "harness output" in line),
                           len(lines))  # fmt: skip
    path.write_text("\n".join([*lines[:start], *new, *lines[end:]]) + "\n")


if __name__ == "__main__":
    main()
