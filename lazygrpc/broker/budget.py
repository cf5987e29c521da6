"""The run-ahead budget the stream producers of a process share (`lazygrpc.broker.topic`)."""

from __future__ import annotations

import threading

#: How many events the producers of this process may run ahead of their consumers in all:
#: each open topic's share of it (at least `FAIR_BATCH`) bounds it below its `max_events`.
RUN_AHEAD = 2048
FAIR_BATCH = 8


class OpenTopics:
    """How many topics are open in this process: the divisor of `RUN_AHEAD`.

    A producer that never waits for anything else fills its topic in one step of the
    event loop. With a few streams that is what coalescing feeds on; with hundreds, every
    step of every other call (a new call's first token among them) would queue behind all
    of it. Sharing one run-ahead budget keeps the work a loop's turn can hold bounded,
    however many streams run, and one fast stream keeps its whole topic.
    """

    __slots__ = ("_lock", "count")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def change(self, by: int) -> None:
        with self._lock:
            self.count += by

    def share(self) -> int:
        """The events one topic may hold now."""
        return max(FAIR_BATCH, RUN_AHEAD // max(self.count, 1))


OPEN = OpenTopics()
