"""The pure metadata codecs: globals ⇄ baggage, session ids, limits (property tests)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazygrpc import metadata
from lazygrpc.session import Session

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
keys = st.text(min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, json_values, max_size=8))
def test_globals_round_trip_through_baggage(values: dict[str, Any]) -> None:
    try:
        header = metadata.encode_globals(values, ["other=1;prop"])
    except ValueError as exc:
        assert "over the limit" in str(exc)
        return
    assert header.isascii() and " " not in header and '"' not in header
    decoded, others, deleted = metadata.split_baggage(header)
    assert json.dumps(decoded, sort_keys=True) == json.dumps(values, sort_keys=True)
    assert others == ["other=1;prop"] and not deleted


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=8300, max_value=20000))
def test_oversized_globals_are_refused_with_the_size(size: int) -> None:
    with pytest.raises(ValueError, match=r"encoded baggage is \d+ bytes, over the limit of 8192"):
        metadata.encode_globals({"k": "x" * size})


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=181, max_value=400))
def test_too_many_entries_are_refused_with_the_count(n: int) -> None:
    with pytest.raises(ValueError, match=rf"{n} baggage entries, over the limit of 180"):
        metadata.encode_globals({f"k{i}": i for i in range(n)})


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(keys, json_values, max_size=5), st.sets(keys, max_size=3))
def test_update_trailer_round_trips_sets_and_deletes(
    values: dict[str, Any], gone: set[str]
) -> None:
    gone -= set(values)
    decoded, deleted = metadata.decode_update(metadata.encode_update(values, gone))
    assert json.dumps(decoded, sort_keys=True) == json.dumps(values, sort_keys=True)
    assert deleted == gone


@pytest.mark.parametrize(
    "header",
    ["lazy.k", "lazy.k=%7B", "bad key=1", "lazy.k=%ZZ", "=1", "lazy.k=%FF%FE"],
)
def test_malformed_baggage_names_the_header(header: str) -> None:
    with pytest.raises(ValueError, match=r"^baggage: "):
        metadata.split_baggage(header)


@pytest.mark.parametrize("sid", ["", "a b", "x" * 129, "é", "a/b"])
def test_invalid_session_ids_are_refused(sid: str) -> None:
    with pytest.raises(ValueError, match="lazy-session-id"):
        metadata.validate_session_id(sid)


def test_session_tracks_changes_and_deletions() -> None:
    s = Session("s1", {"a": 1, "b": 2})
    assert s.update_trailer() == ""
    s.set("a", 3)
    s.delete("b")
    values, deleted = metadata.decode_update(s.update_trailer())
    assert values == {"a": 3} and deleted == {"b"}
    parent = Session("s1", {"b": 2})
    parent.merge_update(values, deleted)
    assert parent.values() == {"a": 3}
