"""Issue 5: the broker alone, and a long stream through a two-hop relay with coalescing.

(a) broker alone, in this process: events/s into one topic (default bounds) drained by an
    asyncio consumer, from a same-thread asyncio producer (`await Topic.aput`, target
    >= 300k/s) and from a producer thread (`Topic.put`, target >= 50k/s). Baseline for
    reference: `asyncio.Queue(256)` (same thread) and `loop.call_soon_threadsafe(put_nowait)`
    (thread; unbounded, no backpressure).
(b) tokens/s of a 100k-token stream: client -> gateway module (lazygrpc `relay` module,
    `LLM(model).astream`) -> lazygrpc model server (echo backend), against bare grpcio
    relaying one message per token (client -> hand-written gateway -> hand-written model).
    Target >= 5x. Each in its own process.
(c) time to first token through the same relays (8-token streams). Target <= 1.15x.

    python -m benchmarks.bench_broker [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from typing import Any

from benchmarks import _clients as c
from benchmarks._common import Row, Servers, log, print_rows
from benchmarks._servers import prompt_chars, token_prompt

SCEN_A = "broker alone (issue 5a)"
SCEN_B = "two-hop relay (issue 5b, 5c)"


# -- (a) broker alone ------------------------------------------------------------------------


async def _drain(topic: Any) -> int:
    got = 0
    while await topic.get() is not None:
        got += 1
    return got


async def broker_same_thread(n: int, text: bool = True) -> float:
    from lazygrpc.broker import BROKER, DELTA, INTERMEDIATE, Item

    topic = BROKER.open()
    kind, value = (DELTA, "tok") if text else (INTERMEDIATE, 1)

    async def produce() -> None:
        for _ in range(n):
            await topic.aput(Item.of(kind, "src", value))
        topic.finish()

    t0 = time.perf_counter()
    task = asyncio.ensure_future(produce())
    await _drain(topic)
    await task
    dt = time.perf_counter() - t0
    BROKER.close(topic)
    return n / dt


async def broker_thread(n: int, text: bool = True) -> float:
    from lazygrpc.broker import BROKER, DELTA, INTERMEDIATE, Item

    topic = BROKER.open()
    kind, value = (DELTA, "tok") if text else (INTERMEDIATE, 1)

    def produce() -> None:
        for _ in range(n):
            topic.put(Item.of(kind, "src", value))
        topic.finish()

    t0 = time.perf_counter()
    th = threading.Thread(target=produce)
    th.start()
    await _drain(topic)
    th.join()
    dt = time.perf_counter() - t0
    BROKER.close(topic)
    return n / dt


async def queue_same_thread(n: int) -> float:
    q: asyncio.Queue[str | None] = asyncio.Queue(256)

    async def produce() -> None:
        for _ in range(n):
            await q.put("tok")
        await q.put(None)

    t0 = time.perf_counter()
    task = asyncio.ensure_future(produce())
    while await q.get() is not None:
        pass
    await task
    return n / (time.perf_counter() - t0)


async def queue_thread(n: int) -> float:
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[str | None] = asyncio.Queue()

    def produce() -> None:
        for _ in range(n):
            loop.call_soon_threadsafe(q.put_nowait, "tok")
        loop.call_soon_threadsafe(q.put_nowait, None)

    t0 = time.perf_counter()
    th = threading.Thread(target=produce)
    th.start()
    while await q.get() is not None:
        pass
    th.join()
    return n / (time.perf_counter() - t0)


async def run_alone(quick: bool) -> list[Row]:
    n = 100_000 if quick else 300_000
    n_thread = 50_000 if quick else 200_000
    rounds = 3 if quick else 5
    res: dict[str, list[float]] = {
        k: [] for k in ("same", "same_q", "same_v", "thr", "thr_q", "thr_v")
    }
    for _ in range(rounds):
        res["same"].append(await broker_same_thread(n))
        res["same_q"].append(await queue_same_thread(n))
        res["same_v"].append(await broker_same_thread(n, text=False))
        res["thr"].append(await broker_thread(n_thread))
        res["thr_q"].append(await queue_thread(n_thread))
        res["thr_v"].append(await broker_thread(n_thread, text=False))
    log("broker alone done")
    q_base = "asyncio.Queue(256), same thread"
    t_base = "loop.call_soon_threadsafe(queue.put_nowait) from a thread (unbounded)"
    return [
        Row(SCEN_A, "same-thread producer, text deltas", "events/s", res["same"], res["same_q"],
            "≥ 300,000/s", "lazy>=300000", q_base),
        Row(SCEN_A, "same-thread producer, Value events", "events/s", res["same_v"],
            res["same_q"], "— (no coalescing)", "", q_base),
        Row(SCEN_A, "producer thread, text deltas", "events/s", res["thr"], res["thr_q"],
            "≥ 50,000/s", "lazy>=50000", t_base),
        Row(SCEN_A, "producer thread, Value events", "events/s", res["thr_v"], res["thr_q"],
            "— (no coalescing)", "", t_base),
    ]  # fmt: skip


# -- (b), (c) through relays -----------------------------------------------------------------


async def run_relay(quick: bool) -> list[Row]:
    n_lazy = 100_000
    n_bare = 20_000 if quick else 100_000
    rounds = 2 if quick else 3
    ttft_trials = 200 if quick else 500
    ttft_tokens = 8
    with Servers() as servers:
        lm = servers.start("lazy-model")
        lg = servers.start("lazy-modules", "--model", lm.url)
        bm = servers.start("bare-model")
        bg = servers.start("bare-modules", "--model", bm.address)
        ch = c.bare_channel(bg.address)
        try:
            long = {
                "lazy": c.lazy_module_stream(lg.url, "relay", token_prompt(n_lazy)),
                "bare": c.bare_module_stream(ch, "relay", token_prompt(n_bare)),
            }
            short = {
                "lazy": c.lazy_module_stream(lg.url, "relay", token_prompt(ttft_tokens)),
                "bare": c.bare_module_stream(ch, "relay", token_prompt(ttft_tokens)),
            }
            expect = {"lazy": prompt_chars(n_lazy), "bare": prompt_chars(n_bare)}
            ntok = {"lazy": n_lazy, "bare": n_bare}
            for side in ("lazy", "bare"):
                for _ in range(20):
                    await c.stream_once(short[side])
            # (c) first, on servers that have not yet streamed 100k tokens: each side's time
            # to first token from the same starting state; sides alternate every trial.
            ttft: dict[str, list[float]] = {"lazy": [], "bare": []}
            for r in range(ttft_trials):
                for side in ("lazy", "bare") if r % 2 == 0 else ("bare", "lazy"):
                    t, _, _ = await c.stream_once(short[side], prompt_chars(ttft_tokens))
                    ttft[side].append(t * 1000)
            log("relay ttft done")
            tps: dict[str, list[float]] = {"lazy": [], "bare": []}
            msgs: list[int] = []
            for r in range(rounds):
                for side in ("lazy", "bare") if r % 2 == 0 else ("bare", "lazy"):
                    _, total, m = await c.stream_once(long[side], expect[side])
                    tps[side].append(ntok[side] / total)
                    if side == "lazy":
                        msgs.append(m)
                log(f"relay long stream round {r + 1}/{rounds} done")
        finally:
            await ch.close()
    base = "bare grpcio relay, one message per token"
    return [
        Row(SCEN_B, f"tokens/s, {n_lazy:,}-token stream via 2 hops", "tokens/s", tps["lazy"],
            tps["bare"], "≥ 5×", "ratio>=5", base,
            note=(f"lazygrpc streamed {n_lazy:,} tokens in a median of "
                  f"{sorted(msgs)[len(msgs) // 2]:,} messages (coalesced); bare grpcio "
                  f"{n_bare:,} tokens, one message each")),
        Row(SCEN_B, f"time to first token via 2 hops ({ttft_tokens}-token streams)", "ms",
            ttft["lazy"], ttft["bare"], "≤ 1.15×", "ratio<=1.15", base),
    ]  # fmt: skip


async def run(quick: bool = False) -> list[Row]:
    return [*await run_alone(quick), *await run_relay(quick)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short run")
    p.add_argument("--only", choices=["alone", "relay"], help="run one part")
    a = p.parse_args()
    if a.only == "alone":
        rows = asyncio.run(run_alone(a.quick))
    elif a.only == "relay":
        rows = asyncio.run(run_relay(a.quick))
    else:
        rows = asyncio.run(run(a.quick))
    print_rows(rows, "lazygrpc broker and coalescing relay vs baselines (same run)")


if __name__ == "__main__":
    main()
