"""Prometheus metrics of a server (extra `metrics`): one more set of Hooks on the dispatcher.

`Server(metrics_port=...)` (`--metrics-port` on the CLI) serves `/metrics` over HTTP; the
names are in docs/metrics.md. Your own `grpc.aio.server` gets the same through
`lazygrpc.server_interceptors(metrics=Metrics())` and `Metrics.serve`. Each method of the
server gets a `MethodStats`, and `Metrics.wrap` (the one place, for both) puts its
`MetricHooks` outside lazygrpc's own lifecycle, so that they see every call the way the
caller does: the status the lifecycle ended it with, refusals (draining, bad headers,
admission limits) included.

A call costs a few plain integer and float updates on the event loop thread, where every
hook of a grpc.aio server runs: no lock, no label lookup. prometheus_client only renders
them at scrape time (a custom collector), and reads the broker's stats then too. With
metrics off nothing is wrapped, so a call costs nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from bisect import bisect_left
from collections.abc import Iterator
from time import perf_counter
from typing import Any

try:
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        "lazygrpc metrics need prometheus-client, which is not installed: "
        "pip install 'lazygrpc[metrics]'"
    ) from exc

import grpc

from lazygrpc import broker
from lazygrpc.core import chain
from lazygrpc.core.context import current_call
from lazygrpc.server.dispatch import aio_behavior, context_code, end_code, wrap_handler
from lazygrpc.server.modules import active_producers

PREFIX = "lazygrpc_"
#: Upper bounds (seconds) of the latency histogram's buckets: from a fast unary call to a
#: long generation.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
           30.0, 60.0, 120.0, 300.0, math.inf)  # fmt: skip
_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_METHOD_LABELS = ("grpc_service", "grpc_method")
_CODE_LABELS = (*_METHOD_LABELS, "grpc_code")


class MethodStats:
    """What the calls of one method did: written by its hooks, read by scrapes."""

    __slots__ = ("buckets", "codes", "in_flight", "labels", "refused", "seconds", "streaming")

    def __init__(self, full_method: str, streaming: bool) -> None:
        self.labels = chain.split_method(full_method)
        self.streaming = streaming
        self.in_flight = 0
        self.codes: dict[grpc.StatusCode, int] = {}
        self.refused: dict[grpc.StatusCode, int] = {}
        self.buckets = [0] * len(BUCKETS)  # per bucket, not cumulative
        self.seconds = 0.0


class MetricHooks:
    """Counts, times and holds in flight each call of one method
    (`lazygrpc.server.dispatch.Hooks`); the per-call state is the start time."""

    __slots__ = ("stats",)

    def __init__(self, stats: MethodStats) -> None:
        self.stats = stats

    def start(self, context: Any) -> float:
        self.stats.in_flight += 1
        return perf_counter()

    def error(self, started: float, context: Any, exc: BaseException) -> None:
        code = end_code(context, exc, sync=False)
        if code is _CANCELLED and _past_deadline(context):
            code = grpc.StatusCode.DEADLINE_EXCEEDED  # what the caller got
        if current_call() is None:  # the lifecycle refused it before binding a scope
            refused = self.stats.refused
            refused[code] = refused.get(code, 0) + 1
        self._end(started, code)
        return None  # the exception goes on to grpc

    def leave(self, started: float) -> None:
        self.stats.in_flight -= 1

    def done(self, started: float, context: Any) -> None:
        self._end(started, context_code(context) or _OK)
        return None

    def _end(self, started: float, code: grpc.StatusCode) -> None:
        elapsed = perf_counter() - started
        stats = self.stats
        stats.codes[code] = stats.codes.get(code, 0) + 1
        stats.buckets[bisect_left(BUCKETS, elapsed)] += 1
        stats.seconds += elapsed


def _past_deadline(context: Any) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


class Metrics:
    """One server's metrics: its methods' stats, a registry, and the `/metrics` endpoint.

    For your own grpc.aio server (docs/metrics.md):

    >>> metrics = Metrics()  # doctest: +SKIP
    >>> server = grpc.aio.server(interceptors=server_interceptors(metrics=metrics))
    >>> port = metrics.serve("127.0.0.1", 9100)  # on the server's loop; close() at the end
    """

    def __init__(self) -> None:
        self.methods: list[MethodStats] = []
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's, once serving
        self._http: Any = None
        self._thread: threading.Thread | None = None

    def hooks(self, full_method: str, streaming: bool) -> MetricHooks:
        """The hooks of one method (made once, when the server wraps its handler)."""
        stats = MethodStats(full_method, streaming)
        self.methods.append(stats)
        return MetricHooks(stats)

    def wrap(self, handler: Any, full_method: str) -> Any:
        """`handler` (already wrapped in lazygrpc's lifecycle) counted from outside it."""
        counted = self.hooks(full_method, handler.response_streaming)
        return wrap_handler(handler, lambda behavior, _s: aio_behavior(behavior, counted))

    def render(self) -> bytes:
        """The metrics in Prometheus' text format, as `/metrics` serves them."""
        return bytes(generate_latest(self.registry))

    def serve(self, host: str, port: int) -> int:
        """Serve `/metrics` on `host:port` (0: a free port) in a thread; the bound port.
        Called on the server's event loop, whose tasks it then counts."""
        with contextlib.suppress(RuntimeError):  # no loop running: no tasks gauge
            self.loop = asyncio.get_running_loop()
        try:
            self._http, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise OSError(
                f"could not bind the metrics port {host}:{port} ({exc.strerror})"
            ) from None
        return int(self._http.server_port)

    def close(self) -> None:
        """Stop serving `/metrics`."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _family(kind: Any, name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
    return kind(PREFIX + name, doc, labels=labels)


class _Collector:
    """Builds the metric families at scrape time from `Metrics.methods` and the broker."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        handled = _family(CounterMetricFamily, "server_handled", "Calls ended, by status code.",
                          _CODE_LABELS)  # fmt: skip
        refused = _family(
            CounterMetricFamily,
            "server_refused",
            "Calls refused before their handler ran (draining, bad headers, admission limits).",
            _CODE_LABELS,
        )
        seconds = _family(HistogramMetricFamily, "server_handling_seconds",
                          "Seconds from a call's start to its end.", _METHOD_LABELS)  # fmt: skip
        in_flight = _family(GaugeMetricFamily, "server_in_flight", "Calls in flight.",
                            _METHOD_LABELS)  # fmt: skip
        streams = 0
        for stats in list(self.metrics.methods):
            labels = list(stats.labels)
            for code, count in stats.codes.copy().items():  # copies: the loop thread writes
                handled.add_metric([*labels, code.name], count)
            for code, count in stats.refused.copy().items():
                refused.add_metric([*labels, code.name], count)
            cumulative, total = [], 0
            for bound, count in zip(BUCKETS, list(stats.buckets), strict=True):
                total += count
                cumulative.append((_le(bound), total))
            seconds.add_metric(labels, cumulative, stats.seconds)
            in_flight.add_metric(labels, stats.in_flight)
            if stats.streaming:
                streams += stats.in_flight
        yield from (handled, refused, seconds, in_flight)
        yield GaugeMetricFamily(
            PREFIX + "server_streams_in_flight", "Response streams in flight.", value=streams
        )
        yield GaugeMetricFamily(
            PREFIX + "server_producers", "Module generators running.", value=active_producers()
        )
        if self.metrics.loop is not None:
            tasks = len(asyncio.all_tasks(self.metrics.loop))
            yield GaugeMetricFamily(PREFIX + "server_tasks", "asyncio tasks of the server's loop.",
                                    value=tasks)  # fmt: skip
        yield from _broker_families(broker.stats())


def _le(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(bound)


#: The broker's figures: (kind, name, help, `BrokerStats` field).
_BROKER = (
    (GaugeMetricFamily, "broker_open_topics", "Open stream topics.", "open_topics"),
    (GaugeMetricFamily, "broker_queued_events", "Events queued in open topics.", "queued_events"),
    (GaugeMetricFamily, "broker_queued_bytes", "Bytes queued in open topics.", "queued_bytes"),
    (GaugeMetricFamily, "broker_blocked_producers", "Producers waiting on a full topic.",
     "blocked_producers"),
    (CounterMetricFamily, "broker_published_events", "Events put into topics.",
     "published_events"),
    (CounterMetricFamily, "broker_coalesced_events", "Deltas merged into the one before them.",
     "coalesced_events"),
)  # fmt: skip


def _broker_families(stats: broker.BrokerStats) -> Iterator[Metric]:
    """The process's broker (`lazygrpc stats URL` prints the same numbers)."""
    for kind, name, doc, field in _BROKER:
        yield kind(PREFIX + name, doc, value=getattr(stats, field))
