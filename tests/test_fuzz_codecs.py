"""Hypothesis over the codecs a peer's bytes reach: metadata (core/baggage.py and the
arrival check), exception chains (core/chain.py) and values (core/values.py).

Each property asserts only the errors the codec documents: `ValueError` from the baggage
parser, `InvalidArgument` from the arrival check, `TypeError` from `to_value` and
`encode_json`, `InvalidArgument` (or protobuf's `DecodeError` while parsing bytes) from
`from_value`, and nothing at all from `remote_error_from`. `make test` runs a short version;
`make soak` runs this file again with `LAZYGRPC_FUZZ_EXAMPLES` examples per property.
"""

from __future__ import annotations

import os
from typing import Any

import grpc
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazygrpc.core import baggage, chain
from lazygrpc.core.errors import InvalidArgument, RemoteError
from lazygrpc.core.values import MAX_SAFE_INT, from_value, to_value
from lazygrpc.server.call import incoming_scope

EXAMPLES = int(os.environ.get("LAZYGRPC_FUZZ_EXAMPLES", "40"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Lone surrogates are left out of the text that must round-trip: refusing them on arrival
# is issue 17 item 3 (the lead's); widen `TEXT` to `st.text()` once that has landed.
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
KEYS = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12)
NUMBERS = st.integers(-MAX_SAFE_INT, MAX_SAFE_INT) | st.floats(
    allow_nan=False, allow_infinity=False
)
JSON = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
#: Header text that looks like baggage often enough to get past the first checks.
PIECES = st.sampled_from(["lazy.", "=", ",", ";", "%", "%22", "%7B", "%5C", "deleted", " ", "\t"])
HEADERS = st.lists(PIECES | st.text(max_size=6), max_size=20).map("".join)


def _norm(value: Any) -> Any:
    """`value` as the codecs give it back: an integral float is an int (like JSON in JS)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_SAFE_INT:
        return int(value)
    if isinstance(value, list):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


# -- metadata ------------------------------------------------------------------------------


@fuzz
@given(st.dictionaries(KEYS, JSON, max_size=6))
def test_globals_round_trip_through_the_baggage_header(globals_: dict[str, Any]) -> None:
    entries = [baggage.encode_entry(k, baggage.encode_json(k, v)) for k, v in globals_.items()]
    try:
        header = baggage.join_baggage(entries)
    except ValueError:  # over the documented size or count limit
        return
    for defer in (False, True):
        parsed = baggage.parse_baggage(header, defer=defer)
        values = {
            k: v.decode()[0] if isinstance(v, baggage.Undecoded) else v
            for k, v in parsed.values.items()
        }
        assert _norm(values) == _norm(globals_)


@fuzz
@given(HEADERS)
def test_any_baggage_header_parses_or_is_a_value_error(header: str) -> None:
    try:
        baggage.parse_baggage(header)
    except ValueError as exc:
        assert "baggage" in str(exc)  # names the header


@fuzz
@given(
    st.lists(
        st.tuples(
            st.sampled_from([baggage.SESSION_HEADER, baggage.BAGGAGE_HEADER, "traceparent", "x"]),
            HEADERS | TEXT,
        ),
        max_size=4,
    )
)
def test_the_arrival_check_accepts_a_usable_session_or_refuses_with_invalid_argument(
    metadata: list[tuple[str, str]],
) -> None:
    try:
        scope = incoming_scope("svc", "m", metadata, None)
    except InvalidArgument:
        return
    session = scope.session
    values = session.values()  # what arrived can be read ...
    for key, value in values.items():
        baggage.encode_json(key, value)  # ... and sent on
    session.baggage()


# -- values --------------------------------------------------------------------------------


@fuzz
@given(JSON)
def test_json_values_round_trip(value: Any) -> None:
    assert _norm(from_value(to_value(value))) == _norm(value)


ANYTHING = st.recursive(
    st.none() | st.integers() | st.floats() | st.binary(max_size=4) | TEXT | st.complex_numbers(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.integers() | TEXT, inner, max_size=3)
        | st.tuples(inner)
    ),
    max_leaves=8,
)


@fuzz
@given(ANYTHING)
def test_to_value_converts_or_raises_type_error(value: Any) -> None:
    try:
        to_value(value)
    except TypeError as exc:
        assert str(exc).startswith("value")  # names where


@fuzz
@given(st.binary(max_size=200))
def test_value_bytes_decode_or_raise_a_documented_error(raw: bytes) -> None:
    try:
        v = struct_pb2.Value.FromString(raw)
    except DecodeError:
        return
    try:
        from_value(v)
    except InvalidArgument as exc:
        assert "no kind set" in str(exc)


# -- chains --------------------------------------------------------------------------------


@fuzz
@given(st.binary(max_size=300), TEXT, st.sampled_from(list(grpc.StatusCode)))
def test_any_details_trailer_decodes_without_raising(
    raw: bytes, details: str, code: grpc.StatusCode
) -> None:
    err = chain.remote_error_from(code, details, [(chain.DETAILS_TRAILER, raw)])
    assert isinstance(err, RemoteError) and err.chain


@fuzz
@given(TEXT, TEXT, TEXT)
def test_a_failure_chain_round_trips_through_its_status(
    message: str, service: str, method: str
) -> None:
    exc = ValueError(message)
    frames = chain.failure_chain(exc, service=service, method=method, session_id="s", trace_id="")
    status = chain.to_grpc_status(exc, frames, service=service, method=method, session_id="s")
    err = chain.remote_error_from(status.code, status.details, status.trailing_metadata)
    assert err.remote_type == "ValueError"
    assert err.chain[-1].message == frames.frames[-1].message
    assert len(err.chain) == 1
