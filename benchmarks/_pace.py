"""The load benchmark's producer schedule and its reading at the client (stdlib only).

A paced producer yields `n` tokens, token k due at start + k * pace and sleeping until then
(against its own schedule, so one late token does not push the rest back). Each token
carries its due time: `"k:due_us "` (wall-clock microseconds; every process of the
benchmark is on one machine), so a client that gets them, one per message or coalesced
several to a message, knows each token's schedule and checks that all came, in order.

Imported by the servers (`_load_servers.py`), the gRPC load client (`bench_load.py`) and
the Ray Serve harness (`ray/load.py`, in Ray's own virtualenv: no lazygrpc, no grpcio).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


async def paced(n: int, pace: float) -> AsyncIterator[str]:
    """`n` tokens, token k due `k * pace` seconds after the first (which is due at once)."""
    loop = asyncio.get_running_loop()
    start, start_us, pace_us = loop.time(), time.time_ns() // 1000, round(pace * 1e6)
    for k in range(int(n)):
        delay = start + k * pace - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield f"{k}:{start_us + k * pace_us} "


@dataclass
class StreamRecord:
    """What one stream looked like at the client (seconds, wall clock)."""

    ttft: float = float("nan")  # request sent → first token
    delays: list[float] = field(default_factory=list)  # per token: arrival - due
    completion: float = float("nan")  # last token → end of the stream (status received)
    messages: int = 0  # messages that carried tokens
    intact: bool = False  # every token, in order, on schedule stamps
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def record(
    sent: float,
    arrivals: Sequence[tuple[float, str]],
    ended: float,
    n: int,
    pace: float,
    error: str = "",
) -> StreamRecord:
    """A stream's record from its messages (arrival time, text) as they came."""
    rec = StreamRecord(messages=len(arrivals), error=error)
    ks: list[int] = []
    dues: list[int] = []
    for at, text in arrivals:
        for tok in text.split():
            k, _, due = tok.partition(":")
            try:
                ks.append(int(k))
                dues.append(int(due))
            except ValueError:
                ks.append(-1)
                dues.append(0)
            rec.delays.append(at - dues[-1] / 1e6)
    if arrivals:
        rec.ttft = arrivals[0][0] - sent
        rec.completion = ended - arrivals[-1][0]
    pace_us = round(pace * 1e6)
    rec.intact = (
        not error
        and ks == list(range(n))
        and all(d == dues[0] + k * pace_us for k, d in enumerate(dues))
    )
    return rec


def peak_rss_mib(pid: int) -> float:
    """A process's peak resident set so far (Linux `VmHWM`), MiB; NaN where /proc has none."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
