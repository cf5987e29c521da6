"""Where W3C baggage meets OpenTelemetry: `+` and spaces in globals (docs/telemetry.md).

OpenTelemetry Python's `W3CBaggagePropagator` form-encodes (`quote_plus`/`unquote_plus`:
opentelemetry-python #5566): it reads a literal `+` as a space and writes a space as `+`.
lazygrpc's codec percent-encodes as W3C baggage says (space `%20`, `+` literal), and its
own paths use only the trace-context propagator, so globals never pass through OpenTelemetry's.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import grpc
from opentelemetry import baggage as otel_baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.instrumentation.grpc import aio_server_interceptor, client_interceptor
from opentelemetry.instrumentation.grpc.grpcext import intercept_channel

import lazygrpc
from lazygrpc.core import baggage
from lazygrpc.core.values import from_value
from lazygrpc.v1 import module_pb2, module_pb2_grpc

TRICKY = "a b+c"  # a space and a plus: the two characters the two encodings disagree on


def test_lazygrpcs_codec_is_w3c_percent_encoding() -> None:
    entry = baggage.encode_entry("q", baggage.encode_json("q", TRICKY))
    assert entry == "lazy.q=%22a%20b+c%22"
    assert unquote(entry.partition("=")[2]) == f'"{TRICKY}"'  # RFC 3986 percent-decoding
    assert baggage.parse_baggage(entry).values["q"] == TRICKY


def test_opentelemetrys_propagator_reads_the_same_header_differently() -> None:
    """The upstream bug, shown on lazygrpc's own header: OpenTelemetry reads the `+` as a
    space. This is why lazygrpc never extracts or injects its globals with that propagator."""
    read = dict(otel_baggage.get_all(W3CBaggagePropagator().extract({"baggage": "k=a%20b+c"})))
    ours = baggage.parse_baggage("k=a%20b+c").others
    assert ours == ["k=a%20b+c"]  # a foreign entry: forwarded exactly as it came
    assert read["k"] in ("a b c", "a b+c")  # "a b+c" once #5566 is fixed upstream


def test_globals_with_plus_and_space_cross_otel_instrumented_hops(
    servers: Any, exporter: Any
) -> None:
    """Upstream OpenTelemetry server interceptors (which extract baggage with the default
    propagators) and a client interceptor outside lazygrpc's keep `+` and space intact."""

    def leaf() -> Any:
        lazygrpc.globals["back"] = lazygrpc.globals["q"] + " +"
        return lazygrpc.globals["q"]

    leaf_url = servers.modules({"leaf": leaf}, name="leaf", telemetry=True)

    def mid() -> Any:
        target = leaf_url.removeprefix("grpc://")
        # OpenTelemetry's client interceptor OUTSIDE lazygrpc's: its baggage header (a
        # form-encoded copy of what the upstream server interceptor extracted) is replaced
        # by lazygrpc's for the `lazy.` entries (docs/telemetry.md).
        with grpc.insecure_channel(target) as raw:
            channel = intercept_channel(lazygrpc.intercept_channel(raw), client_interceptor())
            stub = module_pb2_grpc.ModuleServiceStub(channel)
            out = stub.Call(module_pb2.CallRequest(module="leaf"), timeout=10)
        return [from_value(out.output), lazygrpc.connect(leaf_url + "/leaf", timeout=10)()]

    mid_url = servers.modules(
        {"mid": mid}, name="mid", telemetry=True, interceptors=[aio_server_interceptor()]
    )
    with lazygrpc.session("plus-1", q=TRICKY) as s:
        assert lazygrpc.connect(mid_url + "/mid", timeout=10)() == [TRICKY, TRICKY]
        assert s.get("back") == TRICKY + " +"
    stub = module_pb2_grpc.ModuleServiceStub(grpc.insecure_channel(mid_url[7:]))
    header = baggage.encode_entry("q", baggage.encode_json("q", TRICKY))
    out = stub.Call(
        module_pb2.CallRequest(module="mid"),
        metadata=(("baggage", header),),
        timeout=10,
    )
    assert from_value(out.output) == [TRICKY, TRICKY]
