"""Admission control: how many calls a server takes at once, and how long any may last.

Past a limit a new call is refused with RESOURCE_EXHAUSTED and a `google.rpc.RetryInfo`
delay, before its handler runs (nothing it would have done is lost: it never started);
calls already admitted go on. The limits count in the server's drain gate
(`lazygrpc.server.call.DrainGate`), the one place calls are counted in and out.
"""

from __future__ import annotations

from dataclasses import dataclass

from lazygrpc.core.errors import ResourceExhausted


@dataclass(frozen=True)
class Limits:
    """A server's admission limits (None: unlimited). `Server(limits=Limits(...))`.

    `max_calls` counts every call in flight, streams included; `max_streams` the
    server-streaming ones. `retry_after` is the delay refused callers are told to wait.
    `default_deadline` is the deadline (seconds) of a call that came without one, and
    `max_deadline` the longest any call may have: every call it makes below gets what is
    left of it (grpc keeps the caller's own deadline on the call itself; docs/deadlines.md)."""

    max_calls: int | None = None
    max_streams: int | None = None
    retry_after: float = 1.0
    default_deadline: float | None = None
    max_deadline: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_calls", "max_streams", "default_deadline", "max_deadline"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"Limits.{name} must be positive, got {value!r}")

    def refusal(self, active: int, streams: int, streaming: bool) -> ResourceExhausted | None:
        """The error that refuses a new call, with `active` calls and `streams` streams in
        flight, or None to admit it."""
        if self.max_calls is not None and active >= self.max_calls:
            what = f"{active} calls in flight, the limit is {self.max_calls} (max_calls)"
        elif streaming and self.max_streams is not None and streams >= self.max_streams:
            what = f"{streams} streams in flight, the limit is {self.max_streams} (max_streams)"
        else:
            return None
        return ResourceExhausted(
            f"server busy: {what}; retry in {self.retry_after:g} s", retry_after=self.retry_after
        )

    def deadline(self, time_remaining: float | None) -> float | None:
        """A new call's time remaining (None: no deadline) within these limits."""
        if time_remaining is None or time_remaining >= 1e8:  # none (sync reports a huge one)
            time_remaining = self.default_deadline
        if self.max_deadline is not None and (
            time_remaining is None or time_remaining > self.max_deadline
        ):
            time_remaining = self.max_deadline
        return time_remaining
