"""The one place child processes live and die: start, readiness, restart, drain, reap.

A `Supervisor` runs `Child`ren (an argv, an environment, a grpc health target):

- **start** each child, and call it ready once its health target answers SERVING
  (`grpc.health.v1.Health/Watch`, whole server);
- **restart** a child that dies on its own after it was ready, after a backoff (doubling from
  `Restarts.backoff` to `Restarts.backoff_max`), and **give up** once a child died
  `Restarts.limit` times within `Restarts.window` seconds, or died before it was first
  ready (a bad argument, a port in use): then every other child is drained and `run()`
  returns 1;
- on SIGTERM or SIGINT **forward SIGTERM** to every child (each drains gracefully), wait
  up to `stop_timeout` seconds, SIGKILL what is left, **reap** every child, return 0.

It knows nothing of what the children serve: `lazygrpc serve --workers N` runs N copies of
one server on one port with it (`lazygrpc/workers.py`); `lazygrpc up` runs one process per
service of a mesh file, the demo's included (`lazygrpc/meshfile.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

_log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class Child:
    """One process to keep running: `argv`, extra `env`, and the target whose health says
    it is ready: grpc's (`host:port` or `unix:PATH`), or an HTTP URL that answers 200
    (`http://host:port/health`); None: ready once started."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    health_target: str | None = None
    #: Keep the child's stdout (True) or drop it (its lines would mix with ours).
    stdout: bool = True
    #: Names of the children that must be ready before this one first starts.
    after: Sequence[str] = ()


@dataclass(frozen=True)
class Restarts:
    """When a child that died is started again, and when the supervisor gives up."""

    limit: int = 5
    window: float = 60.0
    backoff: float = 0.1
    backoff_max: float = 5.0


class GaveUp(RuntimeError):
    """A child kept dying (or never became ready): the supervisor stopped the rest."""


class _Running:
    """A child's current process and its history of deaths."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.proc: asyncio.subprocess.Process | None = None
        self.deaths: list[float] = []
        self.ready = asyncio.Event()


class Supervisor:
    """Runs children until SIGTERM/SIGINT (`run()` → 0) or until one keeps dying (→ 1).

    >>> Supervisor([Child("w0", ["python", "-m", "http.server"])]).run()  # doctest: +SKIP
    """

    def __init__(
        self,
        children: Sequence[Child],
        *,
        restarts: Restarts = Restarts(),
        ready_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        if not children:
            raise ValueError("a supervisor needs at least one child")
        names = [c.name for c in children]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must differ: {names!r}")
        self.restarts = restarts
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._running = [_Running(c) for c in children]
        unknown = sorted({a for c in children for a in c.after} - set(names))
        if unknown:
            raise ValueError(f"children wait for unknown children: {unknown!r}")
        self._stopping = asyncio.Event()

    def run(self) -> int:
        """Run on a new event loop in this (main) thread; the exit code to return."""
        return asyncio.run(self.arun())

    async def arun(self, on_ready: object = None) -> int:
        """`run()` on the running loop. `on_ready()` (if given) runs once all are ready."""
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(RuntimeError, ValueError):  # not the main thread
                loop.add_signal_handler(sig, self.stop)
                installed.append(sig)
        watchers = [asyncio.create_task(self._keep(r), name=r.child.name) for r in self._running]
        code = 0
        try:
            await self._all_ready(watchers)
            if callable(on_ready):
                on_ready()
            stop = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait([stop, *watchers], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            for task in done - {stop}:
                task.result()  # a watcher ends only by raising GaveUp
        except GaveUp as exc:
            _log.error("%s; stopping the other children", exc)
            code = 1
        finally:
            self._stopping.set()
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await self._stop_all()
            for sig in installed:
                loop.remove_signal_handler(sig)
        return code

    def stop(self) -> None:
        """Drain every child and return from `run()` (what SIGTERM does)."""
        self._stopping.set()

    def pids(self) -> dict[str, int]:
        """The pid of each child running now, by name."""
        return {
            r.child.name: r.proc.pid
            for r in self._running
            if r.proc is not None and r.proc.returncode is None
        }

    async def _all_ready(self, watchers: list[asyncio.Task[None]]) -> None:
        """Return once every child is ready; a watcher's GaveUp (or the timeout) raises."""

        async def every_one() -> None:
            for r in self._running:
                await r.ready.wait()

        ready: asyncio.Future[Any] = asyncio.ensure_future(every_one())
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        waits: list[asyncio.Future[Any]] = [ready, stop, *watchers]
        try:
            done, _ = await asyncio.wait(
                waits, timeout=self.ready_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
            stop.cancel()
        for task in done:
            if task in watchers:
                task.result()
        missing = [r.child.name for r in self._running if not r.ready.is_set()]
        if missing and not self._stopping.is_set():
            raise GaveUp(f"children {missing!r} not SERVING within {self.ready_timeout:g} s")

    async def _keep(self, running: _Running) -> None:
        """Start the child, watch it, start it again when it dies; GaveUp past the limit."""
        child, policy = running.child, self.restarts
        delay = policy.backoff
        for before in self._running:  # started in dependency order (`Child.after`)
            if before.child.name in child.after:
                await before.ready.wait()
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                running.proc = await asyncio.create_subprocess_exec(
                    *child.argv,
                    env={**os.environ, **child.env},
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=None if child.stdout else asyncio.subprocess.DEVNULL,
                )
            except OSError as exc:  # no such program, too many processes
                raise GaveUp(f"cannot start {child.name} ({child.argv[0]!r}): {exc}") from None
            _log.info("started %s (pid %d)", child.name, running.proc.pid)
            ready = asyncio.create_task(self._wait_ready(running))
            code = await running.proc.wait()
            ready.cancel()
            if self._stopping.is_set():
                return
            if not running.ready.is_set():  # it never served: starting it again won't help
                raise GaveUp(f"{child.name} exited with code {code} before it was ready")
            now = time.monotonic()
            running.deaths = [t for t in running.deaths if now - t < policy.window] + [now]
            if len(running.deaths) > policy.limit:
                raise GaveUp(
                    f"{child.name} died {len(running.deaths)} times in {policy.window:g} s "
                    f"(last exit code {code})"
                )
            if now - started > policy.window:
                delay = policy.backoff  # it had been running well: start over
            _log.warning("%s (pid %d) exited with %s; restarting in %.2f s",
                         child.name, running.proc.pid, code, delay)  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, policy.backoff_max)

    async def _wait_ready(self, running: _Running) -> None:
        target = running.child.health_target
        if target is not None and target.startswith("http://"):
            await wait_http(target)
        elif target is not None:
            await wait_serving(target)
        _log.info("%s is ready", running.child.name)
        running.ready.set()

    async def _stop_all(self) -> None:
        """SIGTERM to every child, wait `stop_timeout`, SIGKILL the rest; all reaped."""
        procs = [r.proc for r in self._running if r.proc is not None]
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(proc.wait()) for proc in procs]
        if not waits:
            return
        await asyncio.wait(waits, timeout=self.stop_timeout)
        for proc in procs:
            if proc.returncode is None:
                _log.error("pid %d did not stop within %g s: killed", proc.pid, self.stop_timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        await asyncio.gather(*waits)  # every child reaped: no zombie left behind


async def wait_serving(target: str) -> None:
    """Return once `target`'s grpc health says SERVING (waits for it to listen)."""
    # A child takes a moment to listen: reconnect every 0.1-0.5 s meanwhile, not grpc's
    # default backoff (1 s growing to 120 s).
    options = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                async for reply in stub.Watch(health_pb2.HealthCheckRequest(), wait_for_ready=True):
                    if reply.status == SERVING:
                        return
            except grpc.aio.AioRpcError as err:  # restarted in between: watch again
                _log.debug("health of %s: %s", target, err.code().name)
            await asyncio.sleep(0.05)


async def wait_http(url: str) -> None:
    """Return once `GET url` answers 200 (waits for the server to listen)."""

    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no *_proxy env

    def get() -> bool:
        try:
            with direct.open(url, timeout=5) as reply:
                return bool(reply.status == 200)
        except OSError:  # refused while it starts, or not 200 yet (HTTPError)
            return False

    delay = 0.02
    while not await asyncio.to_thread(get):
        await asyncio.sleep(delay)  # a child takes a moment to listen: poll, backing off
        delay = min(delay * 2, 0.5)


def python_argv(*args: str) -> list[str]:
    """`python -m lazygrpc ARGS` with this interpreter."""
    return [sys.executable, "-m", "lazygrpc", *args]
