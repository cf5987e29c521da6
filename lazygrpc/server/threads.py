"""The threads `def` modules run on: a fixed pool, and a bounded wait for one.

A sync module (and a sync generator's producer) holds a thread for as long as it runs. When
every thread is busy, new calls wait in the pool's queue; past `MAX_WAITING` of them, or once
one has waited `MAX_WAIT` seconds without a thread, a call is refused with
RESOURCE_EXHAUSTED and a retry delay (docs/admission.md). While every thread is busy the
servers of this process say NOT_SERVING on health (`watch`), so that a client's round_robin
sends its calls to other replicas meanwhile.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

from lazygrpc.core.errors import ResourceExhausted

WORKERS = 256
MAX_WAITING = 1024
MAX_WAIT = 30.0
RETRY_AFTER = 1.0


class ModuleThreads:
    """A thread pool for module code, counting busy threads and waiting calls."""

    def __init__(
        self, workers: int = WORKERS, max_waiting: int = MAX_WAITING, max_wait: float = MAX_WAIT
    ) -> None:
        self.workers = workers
        self.max_waiting = max_waiting
        self.max_wait = max_wait
        self.busy = 0
        self.waiting = 0
        self._lock = threading.Lock()
        self._listeners: list[Callable[[bool], object]] = []
        self._executor = futures.ThreadPoolExecutor(workers, thread_name_prefix="lazygrpc-module")

    def watch(self, listener: Callable[[bool], object]) -> Callable[[], None]:
        """Call `listener(exhausted)` (from a module thread) when every thread becomes busy
        and when one is free again; returns what stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    @property
    def exhausted(self) -> bool:
        return self.busy >= self.workers

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on a module thread, in a copy of the caller's context."""
        with self._lock:
            if self.busy + self.waiting >= self.workers + self.max_waiting:
                raise self._refusal(f"{self.waiting} calls already wait (max {self.max_waiting})")
            queued = self.busy + self.waiting >= self.workers  # no thread free: it waits
            self.waiting += 1
        ctx = contextvars.copy_context()
        started = threading.Event()
        loop = asyncio.get_running_loop()
        task = loop.run_in_executor(self._executor, self._job, started, ctx.run, fn, *args)
        if not queued:  # a thread is free: it runs now, no wait to bound
            return await task
        done, _ = await asyncio.wait({task}, timeout=self.max_wait)
        if not done and not started.is_set() and task.cancel():
            with self._lock:
                self.waiting -= 1  # it never ran: `_job` will not count it out
            raise self._refusal(f"no thread came free in {self.max_wait:g} s")
        return await task

    def _job(self, started: threading.Event, run: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            self.waiting -= 1
            self.busy += 1
            full = self.busy == self.workers
            started.set()
        if full:
            self._tell(True)
        try:
            return run(*args)
        finally:
            with self._lock:
                freed = self.busy == self.workers
                self.busy -= 1
            if freed:
                self._tell(False)

    def _tell(self, exhausted: bool) -> None:
        for listener in list(self._listeners):
            listener(exhausted)

    def _refusal(self, why: str) -> ResourceExhausted:
        return ResourceExhausted(
            f"every module thread is busy ({self.workers}): {why}; retry in {RETRY_AFTER:g} s",
            retry_after=RETRY_AFTER,
        )


#: The module threads of this process.
THREADS = ModuleThreads()
