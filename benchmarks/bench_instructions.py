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
  `lazygrpc.Server` with the client through `lazygrpc.client.call` (what `connect()` does), and
  with `server_interceptors()` on a plain grpc.aio server and the channel wrapped by
  `intercept_aio_channel()`, against the same servicer and stub bare.
- issue 21, logging: the server of the unary `lazygrpc.Server` row with logging configured as
  the CLI does by default (`info`: no access line, a failed call would be logged) against
  the same server with `logging.disable()`: what the lifecycle's logging costs a call that
  succeeds (one cached level check).
- issue 5(c): one-token streams through the two-hop relay of `bench_broker`: each process
  of the chain (client, gateway, model), lazygrpc against bare grpcio.

- issue 19, per relayed token: 8 streams of 100 tokens at 50 ms a token (every token its
  own message, as at a model's pace) through the load benchmark's gateways
  (`_load_servers.py`); the gateway is counted. lazygrpc and bare grpcio as in
  `bench_load`, and grpc.aio's floor: a gateway that reads the leaf's events as bytes and
  writes them on, with no decoding and no Python between the two.

- issue 5(c), the first token's own path: the same relay with 1-token streams, counting
  only the stretches a first token waits on in each process (the client until its call is
  made and from its first message to its first delta; the gateway from its handler's start
  to its downstream call and from that call's first message to its own first message; the
  model from its handler's start to its first message). Collection is toggled by a small C
  helper (`_cgtoggle.c`, built with `cc`), and the cache is simulated cold: before each
  stretch the process copies 8 MiB, as the other processes on the two cores would have
  evicted it between calls. "Est. cycles" weighs a cache miss as callgrind_annotate does
  (Ir + 10 x L1 misses + 100 x LL misses); it tracks the measured time to first token.

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
SCEN_SEAMS = "grpc seams: client instructions per unary call, seams on vs their public fallbacks"
SCEN_METRICS = "metrics: server instructions per unary call, Prometheus metrics on vs off"
SCEN_PATH = "issue 5(c): the first token's own path per process, cold caches (callgrind)"
SCEN_LOGS = "issue 21: server instructions per unary call, logging at the CLI's default level"
SCEN_TOKENS = "issue 19: gateway instructions per relayed token, streams at a model's pace"


def available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


class _Proc:
    """A process, maybe under callgrind; `listening on HOST:PORT` or `ready` lines drive it."""

    def __init__(
        self, argv: list[str], out: Path | None, env: dict[str, str] | None = None
    ) -> None:
        pre = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] if out else []
        self.out = out
        # One hash seed in every process: the same dict layouts, so the same counts.
        env = {**os.environ, "PYTHONHASHSEED": "0", **(env or {})}
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


def _measure(
    servers: list[list[str]],
    client: list[str],
    counted: int,
    calls: int,
    env: dict[str, str] | None = None,
) -> int:
    """Instructions per call in process `counted` (an index of servers, or -1: the client).

    Servers start in order; each gets the previous one's address as `{below}`; `env` is
    added to every process's environment."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        procs: list[_Proc] = []
        try:
            below = ""
            for i, argv in enumerate(servers):
                p = _Proc([PYTHON, "-m", "benchmarks._servers",
                           *(a.format(below=below) for a in argv)],
                          out if i == counted else None, env)  # fmt: skip
                procs.append(p)
                below = p.expect(r"listening on (\S+:\d+)").group(1)
            cli = _Proc([PYTHON, "-m", "benchmarks.bench_instructions", "--client", below,
                         *client, str(calls)], out if counted == -1 else None, env)  # fmt: skip
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
        await _driven(fn, 200, calls)
        await channel.close()


async def _driven(fn: Any, warm: int, calls: int) -> None:
    """The counted client's protocol: `warm` calls, "warm", wait for a line (the counters
    are zeroed), `calls` calls, "done", wait for a line (they are dumped)."""
    for _ in range(warm):
        await fn()
    print("warm", flush=True)
    sys.stdin.readline()
    for _ in range(calls):
        await fn()
    print("done", flush=True)
    sys.stdin.readline()


# -- the first token's path: collection toggled on and off around its stretches ------------

_TOGGLE_ENV = "LAZYGRPC_BENCH_TOGGLE"
_state = {"on": False, "armed": False}
_toggle: Any = None
_evict: tuple[bytearray, bytearray] | None = None


def _on() -> None:
    if not _state["on"]:
        assert _evict is not None
        _evict[1][:] = _evict[0]  # cold caches, as between calls on a shared machine
        _toggle()
        _state["on"] = True


def _off() -> None:
    if _state["on"]:
        _toggle()
        _state["on"] = False


def _install_marks() -> None:
    """Toggle at a stream call's creation (off) and its first message (on), when this
    process runs under callgrind with the toggle helper (else nothing)."""
    global _toggle, _evict
    lib = os.environ.get(_TOGGLE_ENV)
    if not lib:
        return
    import ctypes

    import grpc.aio._call as calls

    _toggle = ctypes.CDLL(lib).lazygrpc_bench_toggle
    _evict = (bytearray(8 << 20), bytearray(8 << 20))
    init = calls.UnaryStreamCall.__init__
    read = calls._StreamResponseMixin._read

    def marked_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        _off()
        _state["armed"] = True

    async def marked_read(self: Any) -> Any:
        message = await read(self)
        if _state["armed"]:
            _state["armed"] = False
            _on()
        return message

    calls.UnaryStreamCall.__init__ = marked_init  # type: ignore[method-assign]
    calls._StreamResponseMixin._read = marked_read  # type: ignore[method-assign]


def _marked(fn: Any) -> Any:
    """A streaming handler counted from its start to its first message."""

    async def handler(*args: Any) -> Any:
        _on()
        first = True
        async for item in fn(*args):
            if first:
                _off()
                first = False
            yield item

    return handler


def _serve_marked(argv: list[str]) -> None:
    import importlib

    import benchmarks._servers as servers

    _install_marks()
    if _toggle is not None:
        if argv[0].startswith("bare"):
            servers.BareModules.Stream = _marked(servers.BareModules.Stream)  # type: ignore[method-assign]
            servers.BareModel.Generate = _marked(servers.BareModel.Generate)  # type: ignore[method-assign]
        else:
            import inspect

            builder = importlib.import_module("lazygrpc.server.builder")
            wrap = builder.aio_behavior

            def marked_behavior(behavior: Any, hooks: Any) -> Any:
                wrapped = wrap(behavior, hooks)
                return _marked(wrapped) if inspect.isasyncgenfunction(wrapped) else wrapped

            builder.aio_behavior = marked_behavior
    sys.argv = [sys.argv[0], *argv]
    servers.main()


def _build_toggle(tmp: Path) -> Path | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not Path("/usr/include/valgrind/callgrind.h").exists():
        return None
    lib = tmp / "cgtoggle.so"
    done = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(lib),
                           str(ROOT / "benchmarks" / "_cgtoggle.c")], capture_output=True)  # fmt: skip
    return lib if done.returncode == 0 else None


_CACHES = ["--cache-sim=yes", "--I1=32768,8,64", "--D1=49152,12,64", "--LL=2097152,16,64"]


def _measure_path(side: str, who: int, calls: int, lib: Path) -> tuple[int, int]:
    """(instructions, estimated cycles) per first token on its path in process `who`
    (0 model, 1 gateway, -1 client), cold caches."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        procs: list[subprocess.Popen[str]] = []

        def start(argv: list[str], counted: bool) -> subprocess.Popen[str]:
            pre = ["valgrind", "--tool=callgrind", "--collect-atstart=no", *_CACHES,
                   f"--callgrind-out-file={out}"] if counted else []  # fmt: skip
            p = subprocess.Popen(
                [*pre, PYTHON, "-m", "benchmarks.bench_instructions", *argv], cwd=ROOT,
                env={**env, _TOGGLE_ENV: str(lib)} if counted else env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            procs.append(p)
            return p

        def expect(p: subprocess.Popen[str], pattern: str) -> str:
            assert p.stdout is not None
            while line := p.stdout.readline():
                if m := re.search(pattern, line):
                    return m.group(1) if m.groups() else line
            raise RuntimeError(f"{p.args} ended before printing {pattern!r}")

        try:
            model = start(["--serve-marked", f"{side}-model"], who == 0)
            below = expect(model, r"listening on (\S+:\d+)")
            below = f"grpc://{below}" if side == "lazy" else below
            gateway = start(["--serve-marked", f"{side}-modules", "--model", below], who == 1)
            address = expect(gateway, r"listening on (\S+:\d+)")
            client = start(["--client-marked", address, side, str(calls)], who == -1)
            target = {0: model, 1: gateway, -1: client}[who]
            expect(client, "^(warm)")
            subprocess.run(["callgrind_control", "-z", str(target.pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            assert client.stdin is not None
            client.stdin.write("\n")
            client.stdin.flush()
            expect(client, "^(done)")
            subprocess.run(["callgrind_control", "-d", str(target.pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            client.stdin.write("\n")
            client.stdin.flush()
            text = sorted(out.parent.glob(out.name + ".*"))[-1].read_text()
        finally:
            for p in reversed(procs):
                if p.poll() is None:
                    p.terminate()
                    p.wait(30)
    events = re.search(r"^events: (.*)$", text, re.M)
    totals = re.search(r"^(?:totals|summary): (.*)$", text, re.M)
    assert events and totals
    n = dict(zip(events.group(1).split(), map(int, totals.group(1).split()), strict=True))
    l1 = n["I1mr"] + n["D1mr"] + n["D1mw"]
    ll = n["ILmr"] + n["DLmr"] + n["DLmw"]
    return n["Ir"] // calls, (n["Ir"] + 10 * l1 + 100 * ll) // calls


async def _client_marked(address: str, side: str, calls: int) -> None:
    from benchmarks import _clients as c
    from benchmarks._servers import token_prompt

    _install_marks()
    prompt = token_prompt(1)
    stream = (
        c.lazy_module_stream(f"grpc://{address}", "relay", prompt)
        if side == "lazy"
        else c.bare_module_stream(c.bare_channel(address), "relay", prompt)
    )
    counted = _toggle is not None

    async def once() -> None:
        if counted:
            _on()
        async for text in stream():
            if text and counted:
                _off()
        if counted:
            _off()

    await _driven(once, 50, calls)


def run_first_token(quick: bool = False) -> list[Row]:
    if not available():
        return []
    with tempfile.TemporaryDirectory() as tmp:
        lib = _build_toggle(Path(tmp))
        if lib is None:
            log("instructions: no cc or valgrind/callgrind.h: no first-token path rows")
            return []
        calls = 50 if quick else 100
        got = {}
        for side in ("lazy", "bare"):
            for who in (-1, 1, 0):
                got[side, who] = _measure_path(side, who, calls, lib)
                log(f"instructions: first-token path {side} process {who} done")
    rows = []
    base = "bare grpcio relay"
    for who, proc in ((-1, "client"), (1, "gateway"), (0, "model server")):
        for k, unit in ((1, "est. cycles"), (0, "instructions")):
            rows.append(Row(SCEN_PATH, f"{proc}: {unit}", unit, [got["lazy", who][k]],
                            [got["bare", who][k]], baseline=base))  # fmt: skip
    rows.append(Row(SCEN_PATH, "all three processes: est. cycles", "est. cycles",
                    [sum(got["lazy", w][1] for w in (-1, 0, 1))],
                    [sum(got["bare", w][1] for w in (-1, 0, 1))], baseline=base,
                    note="cold caches; what the relay's time to first token adds up over "
                         "the bare relay's, apart from the hops themselves"))  # fmt: skip
    return rows


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
    logged = {}
    for level in ("info", "off"):
        servers = [["bare-modules", "--wrapped", "--log-level", level]]
        logged[level] = _measure(servers, unary["layer"][1], 0, calls)
        log(f"instructions: unary layer server, logging {level}, done")
    rows.append(Row(SCEN_LOGS, "lazygrpc.Server + connect(): server, logging at info",
                    "instructions", [logged["info"]], [logged["off"]], "≤ 1.03×", "ratio<=1.03",
                    "the same server with logging.disable()"))  # fmt: skip
    public = {"LAZYGRPC_GRPC_SEAMS": "0"}
    for side, what in (("layer", "connect()'s asyncio driver"),
                       ("raw", "intercept_aio_channel()")):  # fmt: skip
        servers, client = unary[side]
        off = _measure(servers, client, -1, calls, public)
        log(f"instructions: unary {side} client, seams off, done")
        rows.append(Row(SCEN_SEAMS, f"{what}: client", "instructions", [counts[side, -1]],
                        [off], baseline="the same client with LAZYGRPC_GRPC_SEAMS=0"))  # fmt: skip
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
    return rows + run_metrics(quick) + run_relay_tokens(quick) + run_first_token(quick)


def run_relay_tokens(quick: bool = False) -> list[Row]:
    """Gateway instructions per relayed token: lazygrpc, bare grpcio and grpc.aio's floor."""
    streams, tokens, pace = 8, 50 if quick else 100, 0.05
    sides = {
        "lazy": ("lazy-leaf", "lazy-gateway", "grpc://"),
        "bare": ("bare-leaf", "bare-gateway", ""),
        "floor": ("bare-leaf", "floor-gateway", ""),
    }
    per: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for side, (leaf_kind, gateway_kind, scheme) in sides.items():
            out = Path(tmp) / f"{side}.out"
            module = [PYTHON, "-m", "benchmarks._load_servers"]
            leaf = _Proc([*module, leaf_kind], None)
            gateway: _Proc | None = None
            try:
                below = scheme + leaf.expect(r"listening on (\S+:\d+)").group(1)
                gateway = _Proc([*module, gateway_kind, "--leaf", below], out)
                address = gateway.expect(r"listening on (\S+:\d+)").group(1)
                per[side] = asyncio.run(_count_tokens(gateway, address, streams, tokens, pace))
            finally:
                for p in (gateway, leaf):
                    if p is not None:
                        p.stop()
            log(f"instructions: relayed tokens, {side} gateway done")
    base = "bare grpcio: hand-written grpc.aio gateway, a new Event per message"
    return [
        Row(SCEN_TOKENS, "lazygrpc gateway", "instructions", [per["lazy"]], [per["bare"]],
            "≤ 0.8×", "ratio<=0.8", base),
        Row(SCEN_TOKENS, "grpc.aio's floor (bytes in, bytes out)", "instructions",
            [per["floor"]], [per["bare"]], baseline=base,
            note="the least any grpc.aio relay does per token; below it only by leaving "
                 "grpc.aio"),
    ]  # fmt: skip


async def _count_tokens(gateway: _Proc, address: str, streams: int, tokens: int,
                        pace: float) -> int:  # fmt: skip
    """Instructions per token in `gateway` over `streams` concurrent streams of `tokens`."""
    from benchmarks._load_client import GrpcSide
    from benchmarks._pace import record

    side = GrpcSide("counted", address, "relay", leaf=None)  # type: ignore[arg-type]

    async def round_of(n: int) -> None:
        request = side.request(n, pace)
        raw = await asyncio.gather(*(side.stream(i, request) for i in range(streams)))
        for sent, arrivals, ended, error in raw:
            assert record(sent, arrivals, ended, n, pace, error).intact, error or "tokens lost"

    try:
        await round_of(10)  # warm: channels, caches, the first calls
        gateway.control("-z")
        await round_of(tokens)
        gateway.control("-d")
    finally:
        await side.close()
    return gateway.counted() // (streams * tokens)


def run_metrics(quick: bool = False) -> list[Row]:
    """What `Server(metrics_port=...)` adds to a unary call on the server."""
    calls = 1_000 if quick else 2_000
    off = _measure([["bare-modules", "--wrapped"]], ["unary-layer", "-"], 0, calls)
    on = _measure([["bare-modules", "--wrapped", "--metrics"]], ["unary-layer", "-"], 0, calls)
    log("instructions: unary server with metrics on and off done")
    return [Row(SCEN_METRICS, "lazygrpc.Server + connect(): server", "instructions", [on],
                [off], baseline="the same server with metrics off")]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer calls per count")
    p.add_argument("--client", nargs=4, metavar=("ADDRESS", "KIND", "ARG", "CALLS"),
                   help=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--serve-marked", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.add_argument("--client-marked", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--only", choices=["first-token", "metrics", "tokens"], help="run one part")
    a = p.parse_args()
    if a.serve_marked:
        _serve_marked(a.serve_marked)
        return
    if a.client_marked:
        address, side, calls = a.client_marked
        asyncio.run(_client_marked(address, side, int(calls)))
        return
    if a.only == "first-token":
        print_rows(run_first_token(a.quick), "the first token's path, lazygrpc vs bare")
        return
    if a.only == "tokens":
        print_rows(run_relay_tokens(a.quick), "gateway instructions per relayed token")
        return
    if a.only == "metrics":
        print_rows(run_metrics(a.quick), "what metrics add to a unary call (callgrind)")
        return
    if a.client:
        address, kind, arg, calls = a.client
        asyncio.run(_client(address, kind, arg, int(calls)))
        return
    print_rows(run(a.quick), "instructions per call, lazygrpc vs bare (callgrind)")


if __name__ == "__main__":
    main()
