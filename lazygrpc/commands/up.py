"""`lazygrpc up`: a mesh file's services (`-f FILE`) or the bundled demo mesh, run by the
supervisor: one code path to start, wait on health, report, restart and stop a mesh
(docs/mesh-file.md). The demo is only a mesh file shipped in the package
(`lazygrpc/demo/mesh.yaml`), and `--demo QUESTION` asks its gateway one question, then stops.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from lazygrpc import logs
from lazygrpc.commands.common import Failed, UsageError
from lazygrpc.meshfile import Mesh, MeshFileError, Options, load
from lazygrpc.supervisor import Supervisor

#: The variable of the demo mesh file that `--token-delay` sets.
TOKEN_DELAY = "LAZYGRPC_DEMO_TOKEN_DELAY"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f", "--file", metavar="MESH.yaml", help="run the services of a mesh file (see docs)"
    )
    p.add_argument("--demo", metavar="QUESTION", help="ask one question, print the answer, stop")
    p.add_argument(
        "--token-delay",
        type=float,
        default=None,
        help=f"the demo model's seconds per token (default 0.02; sets ${{{TOKEN_DELAY}}})",
    )
    p.add_argument(
        "--port", type=int, default=0, help="first port of `port: auto` services (default: free)"
    )
    p.add_argument(
        "--otel", action="store_true", help="every service exports spans (see `serve --help`)"
    )
    logs.add_arguments(p)
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="Prometheus /metrics for each grpc service, on this port and the next ones "
        "(0: free ports)",
    )


def demo_file() -> Path:
    """The bundled demo mesh file (package data: a wheel has it too)."""
    return Path(str(resources.files("lazygrpc") / "demo" / "mesh.yaml"))


def run(args: argparse.Namespace) -> int:
    """Run the mesh until SIGTERM or Ctrl-C (0), a child that keeps dying (1), or the end
    of `--demo`'s answer (its exit code)."""
    if args.demo is not None and args.file:
        raise UsageError("--demo asks the bundled demo mesh a question: leave out -f")
    lazy = _command("lazygrpc")
    variables = {**os.environ, "lazygrpc": lazy, "grpcurl": _command("grpcurl")}
    if args.token_delay is not None:
        variables[TOKEN_DELAY] = str(args.token_delay)
    flags = [*(["--otel"] if args.otel else []), "--log-level", args.log_level,
             "--log-format", args.log_format]  # fmt: skip
    path = args.file or demo_file()
    try:
        mesh = load(path, Options(flags, args.port, args.metrics_port, variables))
    except MeshFileError as exc:
        raise Failed(str(exc)) from None
    supervisor = Supervisor(mesh.children)
    asked: list[Any] = []

    def ready() -> None:
        report(mesh, supervisor.pids(), "the demo" if args.file is None else str(path))
        if args.demo is None:
            _print_try(mesh)
            print("Ctrl-C or SIGTERM stops the mesh.", flush=True)
        else:
            asked.append(asyncio.ensure_future(_ask(mesh, args.demo, supervisor)))

    code = asyncio.run(supervisor.arun(on_ready=ready))
    print("mesh stopped.", flush=True)
    if args.demo is not None:
        print(f"`{lazy} up` keeps a mesh up until Ctrl-C and prints commands to try on it.")
        if asked and asked[0].done() and not asked[0].cancelled():
            code = code or int(asked[0].result())
        elif not code:
            code = 1  # stopped before the answer came
    return code


async def _ask(mesh: Mesh, question: str, supervisor: Supervisor) -> int:
    """Ask the demo's gateway (in a thread: the client is sync), then stop the mesh."""
    from lazygrpc.demo.ask import ask

    gateway = next(s.url for s in mesh.services if s.name == "gateway")
    try:
        return await asyncio.to_thread(ask, gateway, question)
    finally:
        print("stopping the mesh…", flush=True)
        supervisor.stop()


def report(mesh: Mesh, pids: dict[str, int], source: str) -> None:
    """The status table: each service's URL, pid and note, its /metrics, what was left out."""
    print(f"lazygrpc mesh is up ({source}), every service SERVING:")
    for s in mesh.services:
        pid = f"pid {pids.get(s.name, 0)}"
        print(f"  {s.name:<10} {s.url:<34} {pid:<10} {s.note}".rstrip())
    for s in mesh.services:
        if s.metrics_url:
            print(f"  metrics    {s.name}: {s.metrics_url}")
    for line in mesh.left_out:
        print(f"  ({line})")
    sys.stdout.flush()


def _print_try(mesh: Mesh) -> None:
    """Commands to try, only for a mesh that stays up: its ports are live until Ctrl-C."""
    if mesh.try_commands:
        print("try:")
        for line in mesh.try_commands:
            print(f"  {line}")


def _command(name: str) -> str:
    """`name` as the user can paste it: bare when on PATH, else next to this Python."""
    if shutil.which(name):
        return name
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside.relative_to(Path.cwd()) if beside.is_relative_to(Path.cwd()) else beside)
    return f"{sys.executable} -m lazygrpc" if name == "lazygrpc" else name
