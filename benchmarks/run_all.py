"""Issue 6 (`make bench`): every scenario, lazygrpc against bare grpcio and LazyLLM 1.4.

Writes benchmarks/RESULTS.md (a table per scenario, each figure against its target) and
benchmarks/scaling.png. Servers run in their own processes (`benchmarks/_servers.py`); this
process is the load client. lazygrpc and its baseline alternate A/B, B/A, ... in one run.
Bounded well under 10 minutes.

    python -m benchmarks.run_all [--quick] [--skip-lazyllm]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import _clients as c
from benchmarks import (
    bench_broker,
    bench_edge,
    bench_instructions,
    bench_interceptors,
    bench_load,
    bench_scale,
)
from benchmarks._common import (
    ROOT,
    Row,
    Servers,
    block_order,
    log,
    machine,
    md_table,
    pct,
    print_rows,
)
from benchmarks._servers import prompt_chars, token_prompt

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
LAZYLLM_PY = HERE / "lazyllm" / ".venv" / "bin" / "python"
LAZYLLM_SCRIPT = HERE / "lazyllm" / "pipeline.py"


def _alt(r: int) -> tuple[str, str]:
    return ("lazy", "bare") if r % 2 == 0 else ("bare", "lazy")


# -- unary -----------------------------------------------------------------------------------


async def unary(quick: bool) -> list[Row]:
    rounds = 4 if quick else 6
    calls = 300 if quick else 600
    seconds = 1.0 if quick else 2.0
    sides = ("lazy", "bare", "alazy")
    res: dict[str, dict[str, list[float]]] = {
        k: {side: [] for side in sides} for k in ("p50", "p99", "q1", "q32")
    }
    with Servers() as servers:
        lz = servers.start("lazy-modules")
        bz = servers.start("bare-modules")
        ch = c.bare_channel(bz.address)
        try:
            fn = {
                "lazy": c.lazy_unary(lz.url),
                "bare": c.bare_unary(ch),
                "alazy": c.lazy_unary(lz.url, module="aecho"),
            }
            await c.warm(*fn.values(), times=200)
            for r in range(rounds):
                order = block_order(sides, r)
                for side in order:
                    lat = await c.latencies(fn[side], calls)
                    res["p50"][side].append(pct(lat, 50) * 1000)
                    res["p99"][side].append(pct(lat, 99) * 1000)
                for side in order:
                    res["q1"][side].append(await c.qps(fn[side], 1, seconds))
                for side in order:
                    res["q32"][side].append(await c.qps(fn[side], 32, seconds))
                log(f"unary round {r + 1}/{rounds} done")
        finally:
            await ch.close()
    scen = "unary"
    base = "bare grpcio: hand-written aio ModuleService `Call`, plain stub"
    asy = "async def module"
    extra = [
        Row(scen, f"latency p50, 1 caller ({asy})", "ms", res["p50"]["alazy"],
            res["p50"]["bare"], "≤ 1.10×", "ratio<=1.1", base),
        Row(scen, f"QPS, 1 caller ({asy})", "calls/s", res["q1"]["alazy"], res["q1"]["bare"],
            "≥ 0.90×", "ratio>=0.9", base),
        Row(scen, f"QPS, 32 callers ({asy})", "calls/s", res["q32"]["alazy"],
            res["q32"]["bare"], "≥ 0.90×", "ratio>=0.9", base),
    ]  # fmt: skip
    return [
        Row(scen, "latency p50, 1 caller (def module)", "ms", res["p50"]["lazy"],
            res["p50"]["bare"],
            "≤ 1.10×", "ratio<=1.1", base),
        Row(scen, "latency p99, 1 caller (def module)", "ms", res["p99"]["lazy"],
            res["p99"]["bare"],
            "—", "", base),
        Row(scen, "QPS, 1 caller (def module)", "calls/s", res["q1"]["lazy"], res["q1"]["bare"],
            "≥ 0.90×", "ratio>=0.9", base),
        Row(scen, "QPS, 32 callers (def module)", "calls/s", res["q32"]["lazy"], res["q32"]["bare"],
            "≥ 0.90×", "ratio>=0.9", base),
        *extra,
    ]  # fmt: skip


# -- streaming, direct and through a two-hop relay -------------------------------------------


async def streaming(quick: bool) -> list[Row]:
    n = 10_000
    rounds = 3 if quick else 5
    ttft_trials = 60 if quick else 200
    short_n = 8
    with Servers() as servers:
        lm = servers.start("lazy-model")
        lg = servers.start("lazy-modules", "--model", lm.url)
        bm = servers.start("bare-model")
        bg = servers.start("bare-modules", "--model", bm.address)
        ch_m = c.bare_channel(bm.address)
        ch_g = c.bare_channel(bg.address)
        try:
            paths = {
                "direct": {
                    "lazy": (c.lazy_generate(lm.url, token_prompt(n)),
                             c.lazy_generate(lm.url, token_prompt(short_n))),
                    "bare": (c.bare_generate(ch_m, token_prompt(n)),
                             c.bare_generate(ch_m, token_prompt(short_n))),
                },
                "relay": {
                    "lazy": (c.lazy_module_stream(lg.url, "relay", token_prompt(n)),
                             c.lazy_module_stream(lg.url, "relay", token_prompt(short_n))),
                    "bare": (c.bare_module_stream(ch_g, "relay", token_prompt(n)),
                             c.bare_module_stream(ch_g, "relay", token_prompt(short_n))),
                },
            }  # fmt: skip
            rows = []
            for path, fns in paths.items():
                for side in ("lazy", "bare"):
                    for _ in range(20):
                        await c.stream_once(fns[side][1])
                ttft: dict[str, list[float]] = {"lazy": [], "bare": []}
                tps: dict[str, list[float]] = {"lazy": [], "bare": []}
                for r in range(ttft_trials):
                    for side in _alt(r):
                        t, _, _ = await c.stream_once(fns[side][1], prompt_chars(short_n))
                        ttft[side].append(t * 1000)
                for r in range(rounds):
                    for side in _alt(r):
                        _, total, _ = await c.stream_once(fns[side][0], prompt_chars(n))
                        tps[side].append(n / total)
                log(f"streaming {path} done")
                what = (
                    "client → model server"
                    if path == "direct"
                    else ("client → gateway module → model server")
                )
                base = f"bare grpcio, one message per token ({what})"
                rows += [
                    Row(f"streaming, {path}", f"{path}: time to first token ({short_n} tokens)",
                        "ms", ttft["lazy"], ttft["bare"], "≤ 1.15×", "ratio<=1.15", base),
                    Row(f"streaming, {path}", f"{path}: tokens/s, {n:,}-token stream", "tokens/s",
                        tps["lazy"], tps["bare"], "—", "", base),
                ]  # fmt: skip
        finally:
            await ch_m.close()
            await ch_g.close()
    return rows


# -- the three-hop pipeline, lazygrpc and LazyLLM --------------------------------------------


def _expected(n: int) -> str:
    return "".join(f"t{i} " for i in range(n))


async def lazy_pipeline(quick: bool, stream_tokens: int) -> dict[str, Any]:
    from lazygrpc import connect

    out: dict[str, Any] = {}
    with Servers() as servers:
        h3 = servers.start("lazy-hop3")
        h2 = servers.start("lazy-hop", "--prefix", "h2|", "--downstream", f"{h3.url}/tokens")
        h1 = servers.start("lazy-hop", "--prefix", "h1|", "--downstream", f"{h2.url}/hop")
        hop1 = connect(f"{h1.url}/hop")
        assert await hop1.acall("10|-") == _expected(10)
        rt = []
        for _ in range(30 if quick else 60):
            t0 = time.perf_counter()
            assert await hop1.acall("10|-") == _expected(10)
            rt.append((time.perf_counter() - t0) * 1000)
        out["pipeline_roundtrip_ms"] = rt

        async def stream_text(arg: str) -> tuple[float, float, str]:
            t0 = time.perf_counter()
            ttft = None
            parts = []
            async for ev in hop1.astream(arg):
                if ev.kind == "delta":
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    parts.append(ev.value)
            return (ttft or 0.0) * 1000, time.perf_counter() - t0, "".join(parts)

        ttfts = []
        for _ in range(20 if quick else 40):
            t, _, text = await stream_text("10|-")
            assert text == _expected(10)
            ttfts.append(t)
        out["ttft_ms"] = ttfts
        tps = []
        for _ in range(3):
            _, total, text = await stream_text(f"{stream_tokens}|-")
            assert text == _expected(stream_tokens), "stream lost or reordered tokens"
            tps.append(stream_tokens / total)
        out["tokens_per_s"] = tps

        cancels = []
        with tempfile.TemporaryDirectory(prefix="lazygrpc-cancel-") as tmp:
            for i in range(3 if quick else 5):
                stopfile = Path(tmp) / f"stop{i}"
                agen = hop1.astream(f"{10**8}|{stopfile}")
                got = 0
                async for ev in agen:
                    if ev.kind == "delta":
                        got += 1
                        if got >= 5:
                            break
                t_cancel = time.time()
                await agen.aclose()  # cancels the RPC
                bound = time.monotonic() + 10
                while not stopfile.exists() and time.monotonic() < bound:
                    await asyncio.sleep(0.001)
                if stopfile.exists():
                    await asyncio.sleep(0.01)
                    rec = json.loads(stopfile.read_text())
                    cancels.append((rec["t"] - t_cancel) * 1000)
                    out.setdefault("cancel_reasons", []).append(rec["reason"])
                else:
                    cancels.append(float("nan"))
        out["cancel_to_stop_ms"] = cancels
    log("lazygrpc three-hop pipeline done")
    return out


def run_lazyllm(quick: bool) -> dict[str, Any] | None:
    if not LAZYLLM_PY.exists():
        setup = subprocess.run(["bash", str(HERE / "lazyllm" / "setup.sh")], cwd=ROOT)
        if setup.returncode != 0:
            log("LazyLLM venv could not be set up; skipping the LazyLLM comparison")
            return None
    env = {**os.environ}
    if quick:
        env.setdefault("BENCH_UNARY_CALLS", "100")
        env.setdefault("BENCH_ROUNDTRIP_CALLS", "15")
        env.setdefault("BENCH_STREAM_RUNS", "2")
    log("running the LazyLLM 1.4 harness (subprocess, ~40 s)")
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [str(LAZYLLM_PY), str(LAZYLLM_SCRIPT)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    except subprocess.TimeoutExpired:
        log("LazyLLM harness timed out after 240 s")
        return None
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
    if proc.returncode != 0 or not lines:
        log(f"LazyLLM harness failed (rc={proc.returncode}): {proc.stderr[-2000:]}")
        return None
    result: dict[str, Any] = json.loads(lines[-1])
    result["_wall_s"] = round(time.monotonic() - t0, 1)
    log(f"LazyLLM harness done in {result['_wall_s']} s")
    return result


def pipeline_rows(
    lazy: dict[str, Any], ll: dict[str, Any] | None, unary_p50: list[float]
) -> list[Row]:
    scen = "vs LazyLLM 1.4 (three hops)"
    base = "LazyLLM 1.4.0 harness (benchmarks/lazyllm/pipeline.py), one run"

    def b(key: str) -> list[float]:
        v = (ll or {}).get(key)
        return [float(v)] if isinstance(v, int | float) else []

    cancel = [x for x in lazy["cancel_to_stop_ms"] if x == x]
    ll_cancel = (ll or {}).get("cancel_to_stop_ms")
    return [
        Row(scen, "unary round trip p50 (echo)", "ms", unary_p50, b("unary_p50_ms"),
            "≥ 3× lower", "base/lazy>=3", base,
            note="lazygrpc: `connect(url/echo).acall(x)` p50 per round of the unary scenario"),
        Row(scen, "pipeline round trip (3 hops, 10 tokens)", "ms",
            lazy["pipeline_roundtrip_ms"], b("pipeline_roundtrip_ms"), "≥ 3× lower",
            "base/lazy>=3", base,
            note="lazygrpc: `await connect(hop1).acall('10|-')`, whole text back"),
        Row(scen, "time to first token (3 hops)", "ms", lazy["ttft_ms"], b("ttft_ms"),
            "≥ 20× lower", "base/lazy>=20", base),
        Row(scen, f"tokens/s (3 hops, {lazy['stream_tokens']:,} tokens)", "tokens/s",
            lazy["tokens_per_s"], b("tokens_per_s"), "—", "", base),
        Row(scen, "cancel-to-stop (client cancel → hop-3 `finally`)", "ms",
            cancel or [float("nan")], b("cancel_to_stop_ms"), "≤ 100 ms", "lazy<=100", base,
            note=(f"lazygrpc: {len(cancel)}/{len(lazy['cancel_to_stop_ms'])} producers stopped "
                  f"({', '.join(sorted(set(lazy.get('cancel_reasons', []))))}); LazyLLM: "
                  + ("did not stop within its bound" if ll and ll_cancel is None
                     else f"{ll_cancel} ms" if ll else "not run"))),
    ]  # fmt: skip


# -- scaling ---------------------------------------------------------------------------------


async def scaling(quick: bool) -> tuple[list[Row], dict[str, Any]]:
    levels = [1, 8, 64, 256]
    tokens = 500 if quick else 1000
    data: dict[str, Any] = {"levels": levels, "tokens_per_stream": tokens}
    with Servers() as servers:
        lm = servers.start("lazy-model")
        bm = servers.start("bare-model")
        ch = c.bare_channel(bm.address)
        try:
            fn = {
                "lazy": c.lazy_generate(lm.url, token_prompt(tokens)),
                "bare": c.bare_generate(ch, token_prompt(tokens)),
            }
            for side in ("lazy", "bare"):
                await c.stream_once(fn[side])
            for level in levels:
                for side in ("lazy", "bare") if level % 2 == 0 else ("bare", "lazy"):
                    t0 = time.perf_counter()
                    results = await asyncio.gather(
                        *(c.stream_once(fn[side], prompt_chars(tokens)) for _ in range(level)),
                        return_exceptions=True,
                    )
                    wall = time.perf_counter() - t0
                    ok = [r for r in results if not isinstance(r, BaseException)]
                    errors = [r for r in results if isinstance(r, BaseException)]
                    rec = data.setdefault(side, {})
                    rec[level] = {
                        "tokens_per_s": len(ok) * tokens / wall,
                        "p99_ttft_ms": pct([r[0] for r in ok], 99) * 1000 if ok else None,
                        "errors": len(errors),
                        "first_error": repr(errors[0])[:300] if errors else "",
                    }
                    if side == "lazy" and level == levels[-1]:
                        data["lazy_server_rss_mib"] = lm.rss_mib()
                log(f"scaling {level} streams done")
        finally:
            await ch.close()
    rows = []
    base = "bare grpcio model server, one message per token, same client"
    for level in levels:
        lz, bz = data["lazy"][level], data["bare"][level]
        rows.append(
            Row("scaling", f"{level} streams: aggregate tokens/s", "tokens/s",
                [lz["tokens_per_s"]], [bz["tokens_per_s"]], "—", "", base)
        )  # fmt: skip
        rows.append(
            Row("scaling", f"{level} streams: p99 time to first token", "ms",
                [lz["p99_ttft_ms"] or float("nan")], [bz["p99_ttft_ms"] or float("nan")],
                "—", "", base)
        )  # fmt: skip
    top = levels[-1]
    errs = data["lazy"][top]["errors"]
    rows.append(
        Row("scaling", f"{top} streams: errors (one lazygrpc server process)", "errors",
            [float(errs)], [float(data["bare"][top]["errors"])], "0", "lazy<=0", base,
            note=data["lazy"][top]["first_error"])
    )  # fmt: skip
    return rows, data


def plot_scaling(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = data["levels"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for side, label, style in (("lazy", "lazygrpc", "o-"), ("bare", "bare grpcio", "s--")):
        ax1.plot(levels, [data[side][n]["tokens_per_s"] for n in levels], style, label=label)
        ax2.plot(
            levels,
            [data[side][n]["p99_ttft_ms"] or float("nan") for n in levels],
            style,
            label=label,
        )
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(n) for n in levels])
        ax.set_xlabel("concurrent streams")
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax1.set_ylabel("aggregate tokens/s")
    ax1.set_yscale("log")
    ax1.set_title(f"throughput ({data['tokens_per_stream']} tokens per stream)")
    ax2.set_ylabel("p99 time to first token (ms)")
    ax2.set_yscale("log")
    ax2.set_title("p99 time to first token")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- report ----------------------------------------------------------------------------------


def write_report(
    path: Path,
    sections: list[tuple[str, list[Row], str]],
    *,
    command: str,
    started: str,
    elapsed: float,
    lazyllm: dict[str, Any] | None,
    scaling_data: dict[str, Any] | None,
) -> None:
    all_rows = [r for _, rows, _ in sections for r in rows]
    misses = [r for r in all_rows if r.passed() is False]
    lines = [
        "# lazygrpc benchmark results",
        "",
        f"- date: {started}",
        f"- command: `{command}` ({elapsed / 60:.1f} min)",
        f"- machine: {machine()}",
        "- method: servers in their own processes, this process is the load client; lazygrpc "
        "and its baseline alternate A/B, B/A, … in the same run (three or more sides: the "
        "orders of a Williams design, so every side runs in every place and after every "
        "other side equally often). Each cell is the median "
        "[min–max] over rounds; the ratio is lazygrpc ÷ baseline of the medians, with the "
        "min–max of the per-round (paired) ratios. Each section starts in a fresh lazygrpc "
        "session (no globals left over from the sections before it).",
        "",
        "- diagnosing a miss: `python -m benchmarks.profile_calls unary|ttft|relay-ttft --spy` "
        "(CPU per call in client and servers, py-spy of the lazygrpc server); "
        "`python -m benchmarks.timeline` (where a relay's time to first token goes: each "
        "step in each process, lazygrpc against bare grpcio).",
        "",
        "## Summary",
        "",
    ]
    checked = [r for r in all_rows if r.passed() is not None]
    lines.append(f"{len(checked) - len(misses)} of {len(checked)} targets met.")
    if misses:
        lines.append("")
        lines.append("Missed:")
        for r in misses:
            rel = f"ratio {r.ratio:.3g}×" if r.base else "no baseline"
            if r.check.startswith("base/lazy") and r.ratio:
                rel = f"{1 / r.ratio:.3g}× lower"
            lines.append(
                f"- {r.scenario} / {r.metric}: {rel} "
                f"(lazygrpc median {statistics.median(r.lazy):.4g} {r.unit}), target {r.target}"
            )
    for title, rows, text in sections:
        lines += ["", f"## {title}", ""]
        if text:
            lines += [text, ""]
        lines.append(md_table(rows))
    if scaling_data:
        lines += ["", "![scaling](scaling.png)", ""]
        rss = scaling_data.get("lazy_server_rss_mib")
        if rss:
            lines.append(f"lazygrpc model server RSS after 256 streams: {rss:.0f} MiB.")
    if lazyllm:
        lines += ["", "## LazyLLM harness output (raw)", "", "```json",
                  json.dumps(lazyllm, indent=1, sort_keys=True), "```"]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def run_fresh(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)` in a fresh lazygrpc session: a section starts with no globals,
    whatever the sections before it brought back to this thread (the relays' `usage`)."""
    from lazygrpc import session

    async def main() -> T:
        with session():
            return await coro

    return asyncio.run(main())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short run (~3 minutes)")
    p.add_argument("--skip-lazyllm", action="store_true", help="no LazyLLM harness")
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    a = p.parse_args()
    started = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    command = "python -m benchmarks.run_all" + " ".join(["", *sys.argv[1:]]).rstrip()
    t0 = time.monotonic()
    sections: list[tuple[str, list[Row], str]] = []

    def add(title: str, rows: list[Row], text: str = "") -> None:
        sections.append((title, rows, text))
        print_rows(rows, title)
        log(f"elapsed {time.monotonic() - t0:.0f} s")

    unary_rows = run_fresh(unary(a.quick))
    add("Unary: ModuleService `Call` with all interceptors vs bare grpcio", unary_rows,
        "lazygrpc: `Server().add_modules({'echo': ..., 'aecho': ...})` + "
        "`connect(url).acall(x)` (client and server interceptors on); `echo` is a plain "
        "`def` (lazygrpc runs it in its thread pool), `aecho` an `async def` (runs on the "
        "loop). Bare: a hand-written aio servicer of the same proto (`async def Call`). The "
        "three alternate in every round.")  # fmt: skip
    add("Streaming: direct and through a two-hop relay", run_fresh(streaming(a.quick)),
        "Direct: `LLM(url).astream(prompt)` against `Server().add_model(echo backend)`. Relay: "
        "client → gateway module (`async for d in LLM(model).astream(x): yield d`) → model "
        "server. Bare grpcio: hand-written servicers of the same protos, one message per token "
        "at every hop.")  # fmt: skip
    ll = None if a.skip_lazyllm else run_lazyllm(a.quick)
    stream_tokens = int((ll or {}).get("stream_tokens", 2000))
    lazy = run_fresh(lazy_pipeline(a.quick, stream_tokens))
    lazy["stream_tokens"] = stream_tokens
    add("Three-hop pipeline vs LazyLLM 1.4", pipeline_rows(lazy, ll, unary_rows[0].lazy),
        "Same topology as `benchmarks/lazyllm/pipeline.py`: client → hop1 (adds `h1|`) → hop2 "
        "(adds `h2|`) → hop3 (a sync generator of `t{i} ` tokens whose `finally` records the "
        "time). lazygrpc hop1/hop2 are 3-line async generator modules forwarding the deltas "
        "of `connect(below).astream(prefix + x)`; round trip uses `Call` (aggregated text). "
        "Cancel-to-stop: the client closes the stream after 5 tokens; time until hop 3's "
        "`finally` runs (wall clock, same machine).")  # fmt: skip
    scale_rows, scale_data = run_fresh(scaling(a.quick))
    png = HERE / "scaling.png"
    plot_scaling(scale_data, png)
    add("Scaling: concurrent streams on one model server", scale_rows,
        f"Each stream is {scale_data['tokens_per_stream']} tokens, direct to one model server "
        "process (lazygrpc `LLM.astream` vs bare grpcio); all streams start together. "
        "See scaling.png.")  # fmt: skip
    add("Issue 3: interceptor cost (quick)", run_fresh(bench_interceptors.run(quick=True)),
        "`python -m benchmarks.bench_interceptors --quick`: the same hand-written servicer with "
        "and without lazygrpc's server + client interceptors, with grpc.aio interceptors "
        "that do nothing (what grpc's interceptor path costs by itself), and bare again in a "
        "second process (A/A: how far two identical servers differ in this run). The CPU rows "
        "add up the CPU time the server process and the client spent per call or message "
        "over every block of a side: waiting costs no CPU, so they show the layer's own cost "
        "without the wall-clock noise of the throughput rows.")  # fmt: skip
    add("Issue 5: broker and coalescing relay (quick)", run_fresh(bench_broker.run(quick=True)),
        "`python -m benchmarks.bench_broker --quick`. In quick mode bare grpcio relays 20,000 "
        "tokens (tokens/s is a rate; the full run uses 100,000).")  # fmt: skip
    add("Issue 16: the HTTP/SSE edge against direct gRPC (quick)",
        run_fresh(bench_edge.run(quick=True)),
        "`python -m benchmarks.bench_edge --quick`: `POST /v1/completions` (stream) through "
        "`lazygrpc edge` in front of the echo model server, read by a minimal keep-alive "
        "HTTP/1.1 client, against `LLM(url).astream` to the same server; the sides "
        "alternate in every round. The added row pairs the rounds.")  # fmt: skip
    add("Issue 18: past one process (quick)", bench_scale.run(quick=True),
        "`python -m benchmarks.bench_scale --quick`: `lazygrpc serve --workers 2` against "
        "`--workers 1` from 8 connections (the kernel spreads connections, not calls), and "
        "the Redis broker (a real redis-server) between two processes, alone and through "
        "two servers' BrokerService (one gRPC message per event, capped near a single "
        "stream's messages/s).")  # fmt: skip
    load = run_fresh(bench_load.run(quick=a.quick))
    add(bench_load.TITLE, load.rows,
        " ".join([bench_load.SECTION, *load.notes]))  # fmt: skip
    if bench_instructions.available():
        add("Instructions per call (callgrind)", bench_instructions.run(quick=True),
            "`python -m benchmarks.bench_instructions --quick`: one process of each pair runs "
            "under callgrind, which counts the instructions of all its threads per call: the "
            "same figure in every run, where the throughput rows above move by ±10 % "
            "(cache misses are not in it). Unary: the servicer of the issue-3 rows; relay: "
            "one-token streams through the issue-5 relay.")  # fmt: skip
    else:
        log("valgrind not found: no instruction counts")
    elapsed = time.monotonic() - t0
    out = Path(a.out)
    write_report(out, sections, command=command, started=started, elapsed=elapsed,
                 lazyllm=ll, scaling_data=scale_data)  # fmt: skip
    log(f"wrote {out} and {png} in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
