"""Server instructions per unary `Call` of a module, by how its parameters are annotated.

    python -m benchmarks.bench_signatures [--calls N]

Two modules on `lazygrpc.Server`: `add(a: int, b: int = 2)` (plain JSON types: the one type
test every call takes) and `total(xs: list[int])` called with three items (a pydantic
validator, built at registration, checks each item). The server runs under callgrind, the
client natively, with the protocol of `bench_instructions` (warm up, zero, N calls, dump).
To compare with code without the deep checks, run it with that code first on PYTHONPATH
(docs/performance.md, "Argument checks").

Needs valgrind (`callgrind_control` on PATH).
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

WARM = 200


def add(a: int, b: int = 2) -> int:
    return a + b


def total(xs: list[int]) -> int:
    return sum(xs)


ARGUMENT = {"add": 1, "total": [1, 2, 3]}


async def serve() -> None:
    import lazygrpc

    server = lazygrpc.Server(name="bench")
    server.add_modules({"add": add, "total": total})
    port = await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await server.wait()


async def client(address: str, module: str, calls: int) -> None:
    import lazygrpc

    remote = lazygrpc.connect(f"grpc://{address}/{module}")
    with lazygrpc.session():
        for _ in range(WARM):
            await remote.acall(ARGUMENT[module])
        print("warm", flush=True)
        sys.stdin.readline()
        for _ in range(calls):
            await remote.acall(ARGUMENT[module])
        print("done", flush=True)
        sys.stdin.readline()


def measure(module: str, calls: int) -> int:
    """Server instructions per call of `module`."""
    me = [sys.executable, "-m", "benchmarks.bench_signatures"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *me, "--serve"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )  # fmt: skip
        assert server.stdout is not None
        address = server.stdout.readline().split()[-1]
        caller = subprocess.Popen(
            [*me, "--client", address, module, "--calls", str(calls)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert caller.stdin is not None and caller.stdout is not None
        try:
            assert caller.stdout.readline().startswith("warm")
            _control("-z", server.pid)
            caller.stdin.write("\n")
            caller.stdin.flush()
            assert caller.stdout.readline().startswith("done")
            _control("-d", server.pid)
            caller.stdin.write("\n")
            caller.stdin.flush()
            caller.wait(60)
        finally:
            server.terminate()
            server.wait(60)
        dump = sorted(out.parent.glob(out.name + ".*"))[-1].read_text()
        found = re.search(r"^(?:totals|summary): (\d+)", dump, re.M)
        assert found, "no totals in the callgrind dump"
        return int(found.group(1)) // calls


def _control(flag: str, pid: int) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--client", nargs=2, metavar=("ADDRESS", "MODULE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        asyncio.run(serve())
    elif a.client:
        asyncio.run(client(a.client[0], a.client[1], a.calls))
    elif shutil.which("callgrind_control") is None:
        print("valgrind is not installed: no instruction counts")
    else:
        for module in ARGUMENT:
            print(f"{module}: {measure(module, a.calls):,} server instructions per call")


if __name__ == "__main__":
    main()
