"""Instructions per call, counted by callgrind: the layer's cost without the machine's noise.

Throughput on a shared 2-core VM moves by ±10 % between identical blocks (the A/A rows of
`bench_interceptors`), so a cost near its target passes in one run and misses in the next.
Instruction counts do not move: one process of the pair (server or client) runs under
`valgrind --tool=callgrind`, the other natively; after a warm-up its counters are zeroed,
the client makes N calls, and the counters are dumped. The count covers every thread of
the process (grpc's poller threads included), so it is the whole CPU work of a call on
that side, in instructions rather than seconds (cache misses are not in it).

    python -m benchmarks.bench_instructions [--quick]

Scenarios (one valgrind run per cell):
- issue 3, unary `Call`: the hand-written servicer of `bench_interceptors` on
  `lazygrpc.Server` with the client through `lazygrpc.invoke` (what `connect()` does), and
  with `server_interceptors()` on a plain grpc.aio server and the channel wrapped by
  `intercept_aio_channel()`, against the same servicer and stub bare.
- issue 5(c): one-token streams through the two-hop relay of `bench_broker`: each process
  of the chain (client, gateway, model), lazygrpc against bare grpcio.

Needs valgrind (`callgrind_control` on PATH); without it the script says so and gives no rows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._common import PYTHON, ROOT, Row, log, print_rows

SCEN_UNARY = "issue 3: instructions per unary call (callgrind)"
SCEN_RELAY = "issue 5(c): instructions per one-token stream through the two-hop relay (callgrind)"


def available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


class _Proc:
    """A process, maybe under callgrind; `listening on HOST:PORT` or `ready` lines drive it."""

    def __init__(self, argv: list[str], out: Path | None) -> None:
        pre = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] if out else []
        self.out = out
        # One hash seed in every process: the same dict layouts, so the same counts.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        self.proc = subprocess.Popen(
            [*pre, *argv], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip

    def expect(self, pattern: str) -> re.Match[str]:
        assert self.proc.stdout is not None
        while line := self.proc.stdout.readline():
            if m := re.search(pattern, line):
                return m
        raise RuntimeError(f"{self.proc.args} ended before printing {pattern!r}")

    def send(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def control(self, flag: str) -> None:
        subprocess.run(["callgrind_control", flag, str(self.proc.pid)], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip

    def counted(self) -> int:
        """Instructions in the dump made by `control('-d')` (the last one)."""
        assert self.out is not None
        dumps = sorted(self.out.parent.glob(self.out.name + ".*"))
        m = re.search(r"^(?:totals|summary): (\d+)", dumps[-1].read_text(), re.M)
        assert m, f"no totals in {dumps[-1]}"
        return int(m.group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def _measure(servers: list[list[str]], client: list[str], counted: int, calls: int) -> int:
    """Instructions per call in process `counted` (an index of servers, or -1: the client).

    Servers start in order; each gets the previous one's address as `{below}`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        procs: list[_Proc] = []
        try:
            below = ""
            for i, argv in enumerate(servers):
                p = _Proc([PYTHON, "-m", "benchmarks._servers",
                           *(a.format(below=below) for a in argv)],
                          out if i == counted else None)  # fmt: skip
                procs.append(p)
                below = p.expect(r"listening on (\S+:\d+)").group(1)
            cli = _Proc([PYTHON, "-m", "benchmarks.bench_instructions", "--client", below,
                         *client, str(calls)], out if counted == -1 else None)  # fmt: skip
            procs.append(cli)
            target = procs[counted]
            cli.expect("^warm")
            target.control("-z")
            cli.send()
            cli.expect("^done")
            target.control("-d")
            cli.send()
            return target.counted() // calls
        finally:
            for p in reversed(procs):
                p.stop()


# -- the client process ----------------------------------------------------------------------


async def _client(address: str, kind: str, arg: str, calls: int) -> None:
    from benchmarks import _clients as c
    from benchmarks._servers import token_prompt
    from lazygrpc import intercept_aio_channel, session

    with session():
        channel = c.bare_channel(address)
        if kind == "unary-bare":
            fn: Any = c.bare_unary(channel)
        elif kind == "unary-layer":
            fn = c.layered_unary(channel)
        elif kind == "unary-raw":
            channel = intercept_aio_channel(channel)
            fn = c.bare_unary(channel)
        elif kind == "relay-bare":
            stream = c.bare_module_stream(channel, "relay", token_prompt(int(arg)))
            fn = lambda: c.stream_once(stream)  # noqa: E731
        else:  # relay-lazy
            stream = c.lazy_module_stream(f"grpc://{address}", "relay", token_prompt(int(arg)))
            fn = lambda: c.stream_once(stream)  # noqa: E731
        for _ in range(200):
            await fn()
        print("warm", flush=True)
        sys.stdin.readline()
        for _ in range(calls):
            await fn()
        print("done", flush=True)
        sys.stdin.readline()
        await channel.close()


# -- scenarios -------------------------------------------------------------------------------


def run(quick: bool = False) -> list[Row]:
    if not available():
        log("instructions: valgrind not found (apt install valgrind): no rows")
        return []
    calls = 1_000 if quick else 2_000
    streams = 300 if quick else 600
    base = "the same servicer and stub without lazygrpc"
    unary = {
        "bare": ([["bare-modules"]], ["unary-bare", "-"]),
        "layer": ([["bare-modules", "--wrapped"]], ["unary-layer", "-"]),
        "raw": ([["bare-modules", "--interceptors"]], ["unary-raw", "-"]),
    }
    counts: dict[tuple[str, int], int] = {}
    for side, (servers, client) in unary.items():
        for who in (0, -1):
            counts[side, who] = _measure(servers, client, who, calls)
            log(f"instructions: unary {side} {'server' if who == 0 else 'client'} done")
    rows = []
    for side, what in (("layer", "lazygrpc.Server + connect()"),
                       ("raw", "server_interceptors() + intercept_aio_channel()")):  # fmt: skip
        for who, proc in ((0, "server"), (-1, "client")):
            rows.append(Row(SCEN_UNARY, f"{what}: {proc}", "instructions",
                            [counts[side, who]], [counts["bare", who]], baseline=base))  # fmt: skip
        both = counts[side, 0] + counts[side, -1]
        bare = counts["bare", 0] + counts["bare", -1]
        rows.append(Row(SCEN_UNARY, f"{what}: server + client", "instructions", [both], [bare],
                        "≤ 1.11× (0.90× QPS when CPU-bound)", "ratio<=1.11", base))  # fmt: skip
    relay = {
        "lazy": ([["lazy-model"], ["lazy-modules", "--model", "grpc://{below}"]], "relay-lazy"),
        "bare": ([["bare-model"], ["bare-modules", "--model", "{below}"]], "relay-bare"),
    }
    per: dict[tuple[str, int], int] = {}
    for side, (servers, client) in relay.items():
        for who in (0, 1, -1):
            per[side, who] = _measure(servers, [client, "1"], who, streams)
            log(f"instructions: relay {side} process {who} done")
    for who, proc in ((-1, "client"), (1, "gateway"), (0, "model server")):
        rows.append(Row(SCEN_RELAY, proc, "instructions", [per["lazy", who]],
                        [per["bare", who]], baseline="bare grpcio relay"))  # fmt: skip
    rows.append(Row(SCEN_RELAY, "all three processes", "instructions",
                    [sum(per["lazy", w] for w in (0, 1, -1))],
                    [sum(per["bare", w] for w in (0, 1, -1))],
                    baseline="bare grpcio relay",
                    note="lazygrpc's model adds its usage to the `usage` global on every "
                         "call, and the client's session carries it back down"))  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer calls per count")
    p.add_argument("--client", nargs=4, metavar=("ADDRESS", "KIND", "ARG", "CALLS"),
                   help=argparse.SUPPRESS)  # fmt: skip
    a = p.parse_args()
    if a.client:
        address, kind, arg, calls = a.client
        asyncio.run(_client(address, kind, arg, int(calls)))
        return
    print_rows(run(a.quick), "instructions per call, lazygrpc vs bare (callgrind)")


if __name__ == "__main__":
    main()
