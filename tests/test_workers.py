"""`--workers N`: real worker processes on one port under the supervisor (lazygrpc/supervisor.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import psutil
import pytest

from lazygrpc.core.values import from_value, to_value
from lazygrpc.supervisor import Child, Restarts, Supervisor
from lazygrpc.v1 import module_pb2, module_pb2_grpc
from tests.conftest import start_cli

MODULES = "tests/fixtures/worker_modules.py"


def _call_pid(address: str) -> int:
    """`pid` on a connection of its own (a channel sharing no subchannel with another)."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(address, options=options) as ch:
        stub = module_pb2_grpc.ModuleServiceStub(ch)
        reply = stub.Call(module_pb2.CallRequest(module="pid"), timeout=10, wait_for_ready=True)
        return int(from_value(reply.output))


def _workers(proc: subprocess.Popen[str], n: int) -> list[psutil.Process]:
    children = psutil.Process(proc.pid).children()
    assert len(children) == n, children
    return children


@pytest.fixture
def two_workers() -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc, address = start_cli(
        "serve", f"{MODULES}:pid", f"{MODULES}:ticks", "--workers", "2", "--grace", "10"
    )
    yield proc, address
    if proc.poll() is None:
        proc.terminate()
    proc.communicate(timeout=30)


def test_calls_are_served_by_every_worker(two_workers: tuple[subprocess.Popen[str], str]) -> None:
    proc, address = two_workers
    workers = {w.pid for w in _workers(proc, 2)}
    seen = {_call_pid(address) for _ in range(24)}
    assert seen == workers  # the kernel spreads connections over both (2**-23 to miss one)


def test_a_killed_worker_is_restarted(two_workers: tuple[subprocess.Popen[str], str]) -> None:
    proc, address = two_workers
    victim, survivor = _workers(proc, 2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    t0 = time.monotonic()
    while True:  # until the supervisor has a new worker in its place
        assert time.monotonic() - t0 < 20, "the killed worker was not restarted"
        pids = {w.pid for w in psutil.Process(proc.pid).children()}
        if len(pids) == 2 and victim.pid not in pids:
            break
        psutil.wait_procs([], timeout=0)
    (new,) = pids - {survivor.pid}
    t0 = time.monotonic()
    seen: set[int] = set()
    while new not in seen:  # the new worker serves on the shared port
        assert time.monotonic() - t0 < 20, f"worker {new} never served: {seen}"
        seen.add(_call_pid(address))
    assert proc.poll() is None


def test_sigterm_drains_every_worker_and_exits_zero(
    two_workers: tuple[subprocess.Popen[str], str],
) -> None:
    proc, address = two_workers
    workers = _workers(proc, 2)
    with grpc.insecure_channel(address) as ch:
        stream = module_pb2_grpc.ModuleServiceStub(ch).Stream(
            module_pb2.CallRequest(module="ticks", input=to_value(20)), timeout=30
        )
        first = next(stream)  # in flight on one worker: 19 ticks x 50 ms still to go
        proc.send_signal(signal.SIGTERM)
        rest = list(stream)
    deltas = [first, *rest[:-1]]
    assert len(deltas) == 20 and rest[-1].HasField("result")
    assert proc.wait(30) == 0
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive  # every worker exited and was reaped (a zombie would still exist)


def test_a_bad_module_spec_gives_up_at_once_with_exit_one() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lazygrpc", "serve", "nope.py:f", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "'nope.py:f'" in result.stderr
    assert "before it was ready" in result.stderr


async def test_the_supervisor_gives_up_on_a_child_that_keeps_dying(tmp_path: object) -> None:
    """A generic child (no lazygrpc in it): ready at start, then exits; restarted with a
    backoff until the limit, then the supervisor stops the rest and returns 1."""
    die = Child("dies", [sys.executable, "-c", "import time; time.sleep(0.2)"])
    stays = Child("stays", [sys.executable, "-c", "import time; time.sleep(60)"])
    supervisor = Supervisor(
        [die, stays], restarts=Restarts(limit=2, window=60, backoff=0.01), stop_timeout=5
    )
    t0 = time.monotonic()
    assert await asyncio.wait_for(supervisor.arun(), 60) == 1
    assert time.monotonic() - t0 < 30
    assert supervisor.pids() == {}  # every child stopped and reaped
    assert not [p for p in psutil.Process(os.getpid()).children() if p.status() != "zombie"]


async def test_a_child_that_cannot_start_gives_up_with_exit_one() -> None:
    supervisor = Supervisor([Child("ghost", ["/nonexistent/lazygrpc-child"])], stop_timeout=5)
    assert await asyncio.wait_for(supervisor.arun(), 30) == 1
