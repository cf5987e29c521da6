"""The pure metadata codecs: globals ⇄ baggage, session ids, limits (property tests)."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazygrpc.core import baggage as metadata
from lazygrpc.core.errors import InvalidArgument
from lazygrpc.server_interceptors import ServerCore
from lazygrpc.core.session import Session

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


def _from_wire(header: str, defer: bool = True) -> Session:
    """A server's session for an incoming `baggage` header, as a server makes it when
    deferring (its per-call path, with the header it forwards joined once), or decoded at
    once."""
    if defer:
        md = (("lazy-session-id", "s1"), ("baggage", header))
        return ServerCore().begin("/lazygrpc.v1.ModuleService/Call", md, None).session
    parsed = metadata.parse_baggage(header)
    return Session("s1", parsed.values, parsed.others, parsed.texts, parsed.entries)


#: Both ways a server may take globals off the wire: decoded at once, or at first read.
both_ways = pytest.mark.parametrize("defer", [False, True], ids=["eager", "deferred"])


@both_ways
def test_untouched_globals_are_forwarded_as_they_came_and_report_no_change(defer: bool) -> None:
    # A peer that formats JSON its own way (spaces, "{" escaped): still valid baggage.
    header = "lazy.a=%7B%22x%22%3A%201%7D,other=1,lazy.b=%5B1%2C2%5D,lazy.c=%7B%22y%22:2%7D"
    s = _from_wire(header, defer)
    assert s.baggage() == (
        "other=1,lazy.a=%7B%22x%22%3A%201%7D,lazy.b=%5B1%2C2%5D,lazy.c=%7B%22y%22:2%7D"
    )
    assert s.update_trailer() == ""
    # Read but not changed: compared canonically, still no change.
    assert s.get("a") == {"x": 1} and s.get("c") == {"y": 2}
    assert s.update_trailer() == ""
    assert metadata.split_baggage(s.baggage())[0] == {"a": {"x": 1}, "b": [1, 2], "c": {"y": 2}}


@settings(max_examples=500, deadline=None)
@given(st.text() | st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_values_are_quoted_exactly_as_urllib_does(text: str) -> None:
    assert metadata._quote_value(text) == urllib.parse.quote(text, safe=metadata._VALUE_SAFE)


def test_every_ascii_character_is_quoted_as_urllib_does() -> None:
    for ch in map(chr, range(0x80)):
        assert metadata._quote_value(ch) == urllib.parse.quote(ch, safe=metadata._VALUE_SAFE)


def test_a_value_set_as_owned_is_sent_as_it_was_when_set() -> None:
    s = Session("s1")
    usage = {"calls": 1}
    s.set("usage", usage, owned=True)
    header = s.baggage()
    usage["calls"] = 2  # breaks the promise: not seen, the encoding made at set() stands
    assert s.baggage() == header == "lazy.usage={%22calls%22:1}"
    assert metadata.decode_update(s.update_trailer())[0] == {"usage": {"calls": 1}}
    s.get("usage")["calls"] = 3  # handed out again by get(): changes in place count again
    assert metadata.decode_update(s.update_trailer())[0] == {"usage": {"calls": 3}}


def test_a_hop_forwards_the_header_it_came_with_until_a_global_changes() -> None:
    header = metadata.encode_globals({"usage": {"prompt_tokens": 3}, "user": "ann", "n": 1})
    s = _from_wire(header)
    assert s.baggage() == header
    s.set("n", 2)
    assert s.baggage() == header.replace("lazy.n=1", "lazy.n=2")
    # Not every entry as it came (a repeated name, a foreign entry): built from the globals.
    assert _from_wire("lazy.n=1,lazy.n=2").baggage() == "lazy.n=2"
    # A name first sent in a form decoded on arrival, then flat: the globals' order holds.
    assert _from_wire('lazy.a="hi",lazy.b=1,lazy.a=2').baggage() == "lazy.a=2,lazy.b=1"
    assert _from_wire("lazy.n=1,k=v").baggage() == "k=v,lazy.n=1"


@pytest.mark.parametrize("source", ["wire", "deferred", "merged", "set"])
def test_a_value_changed_in_place_is_sent_and_reported(source: str) -> None:
    if source in ("wire", "deferred"):
        s = _from_wire(metadata.encode_globals({"history": ["a"]}), source == "deferred")
    elif source == "merged":
        s = Session("s1")
        update = metadata.parse_baggage(metadata.encode_update({"history": ["a"]}, ()))
        s.merge_update(update.values, update.deleted, update.entries)
    else:
        s = Session("s1")
        s.set("history", ["a"])
    s.get("history").append("b")
    values, _, _ = metadata.split_baggage(s.baggage())
    assert values == {"history": ["a", "b"]}
    changed, _ = metadata.decode_update(s.update_trailer())
    assert changed == {"history": ["a", "b"]}
    # Every later change is seen too, not only the first.
    s.item("history").append("c")
    assert metadata.split_baggage(s.baggage())[0] == {"history": ["a", "b", "c"]}


@both_ways
@settings(max_examples=100, deadline=None)
@given(st.dictionaries(keys, json_values, max_size=6), st.data())
def test_wire_session_roundtrip_and_changes(defer: bool, values: dict[str, Any], data: Any) -> None:
    header = metadata.encode_globals(values)
    s = _from_wire(header, defer)
    assert s.baggage() == header  # forwarded as it came
    assert s.update_trailer() == ""
    expected = json.loads(json.dumps(values))
    if values and data.draw(st.booleans()):  # read some first: reading changes nothing
        read = data.draw(st.sampled_from(sorted(values)))
        assert s.get(read) == expected[read]
        assert s.update_trailer() == ""
    assert s.values() == expected
    assert metadata.split_baggage(s.baggage())[0] == expected
    assert s.update_trailer() == ""
    if values:
        key = data.draw(st.sampled_from(sorted(values)))
        new = data.draw(json_values)
        s.set(key, new)
        changed, _ = metadata.decode_update(s.update_trailer())
        assert changed == {key: json.loads(json.dumps(new))}


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "%5B1%2CNaN%5D"])
def test_non_json_numbers_are_refused_in_baggage_and_dropped_from_updates(value: str) -> None:
    from lazygrpc.client.call import merge_trailers

    for defer in (False, True):
        with pytest.raises(ValueError, match="does not hold percent-encoded JSON"):
            metadata.parse_baggage(f"lazy.x={value}", defer=defer)
    s = Session("s1")
    merge_trailers(s, [(metadata.UPDATE_TRAILER, f"lazy.x={value}")])
    assert s.values() == {} and s.baggage() == ""


def test_an_empty_global_name_is_refused() -> None:
    with pytest.raises(ValueError, match="empty global name"):
        metadata.parse_baggage("lazy.=1")


@both_ways
def test_entries_that_are_not_baggage_octets_are_encoded_afresh_when_sent_on(
    defer: bool,
) -> None:
    # Lenient input (a raw quote and "é") is accepted, but not forwarded as it came.
    s = _from_wire('lazy.x="a\u00e9",lazy.y=%22ok%22', defer)
    assert s.baggage() == "lazy.x=%22a%C3%A9%22,lazy.y=%22ok%22"


def test_outgoing_metadata_is_a_full_grpc_aio_metadata() -> None:
    """grpc.aio reads the call metadata with len() and tuple() only; an interceptor may use
    the whole `grpc.aio.Metadata` API on it, changes included."""
    import grpc.aio

    from lazygrpc.client_interceptors import OutgoingMetadata

    items = (("lazy-session-id", "s-1"), ("baggage", "lazy.a=1"), ("x-bin", b"\x00"))
    out = OutgoingMetadata(items)
    assert isinstance(out, grpc.aio.Metadata)
    assert len(out) == 3 and tuple(out) == items and bool(out)
    assert out == grpc.aio.Metadata(*items) and out == items
    assert out["baggage"] == "lazy.a=1" and "x-bin" in out and "nope" not in out
    out.add("baggage", "b=2")
    out["x-extra"] = "yes"
    del out["x-bin"]
    assert tuple(out) == (
        ("lazy-session-id", "s-1"),
        ("baggage", "lazy.a=1"),
        ("baggage", "b=2"),
        ("x-extra", "yes"),
    )
    assert len(out) == 4 and out.get_all("baggage") == ["lazy.a=1", "b=2"]
    assert tuple(items) == items  # the tuple it was built from is never changed


@settings(max_examples=500, deadline=None)
@given(st.from_regex(metadata._FLAT_WIRE, fullmatch=True))
def test_a_value_deferred_on_arrival_is_always_strict_json(wire: str) -> None:
    """Deferring is only sound if everything the flat pattern lets through decodes."""
    deferred = metadata.parse_baggage(f"lazy.k={wire}", defer=True).values["k"]
    assert isinstance(deferred, metadata.Deferred)
    value, text = deferred.decode()
    assert value == metadata.parse_baggage(f"lazy.k={wire}").values["k"]
    assert text == metadata._unquote(wire)


@pytest.mark.parametrize(
    "wire", ["%7B%22a%22:%7B%7D%7D", "%22a%5Cn%22", "%5B%5B1%5D%5D", "%7B%22x%22%3A%201%7D"]
)
def test_values_outside_the_flat_pattern_are_decoded_on_arrival(wire: str) -> None:
    value = metadata.parse_baggage(f"lazy.k={wire}", defer=True).values["k"]
    assert not isinstance(value, metadata.Deferred)
    assert value == metadata.parse_baggage(f"lazy.k={wire}").values["k"]


@pytest.mark.parametrize("wire", ["%5B1%2C%5D", "01", "%22a", "tru", "%7B%22a%22%7D", "1.", "-"])
def test_bad_json_is_refused_on_arrival_when_deferring_too(wire: str) -> None:
    with pytest.raises(ValueError, match="does not hold percent-encoded JSON"):
        metadata.parse_baggage(f"lazy.k={wire}", defer=True)


def test_the_baggage_header_follows_every_change() -> None:
    s = Session("s1")
    assert s.baggage() == ""
    s.set("a", 1)
    assert s.baggage() == "lazy.a=1"
    assert s.baggage() is s.baggage()  # kept while nothing changes
    s.set("b", [1])
    assert s.baggage() == "lazy.a=1,lazy.b=[1]"
    s.get("b").append(2)  # changed in place: encoded afresh
    assert s.baggage() == "lazy.a=1,lazy.b=[1%2C2]"
    s.delete("a")
    assert s.baggage() == "lazy.b=[1%2C2]"
    s.merge_update({"c": "x"}, {"b"})
    assert s.baggage() == "lazy.c=%22x%22"
    update = metadata.parse_baggage(metadata.encode_update({"d": 4}, ()))
    s.merge_update(update.values, update.deleted, update.entries)
    assert s.baggage() == "lazy.c=%22x%22,lazy.d=4"


@pytest.mark.parametrize(
    "wire", ["9" * 5000, "1e999", "-1e999", "%5B1e400%5D", "1" + "0" * 300 + "e99"]
)
def test_numbers_python_cannot_hold_are_refused_on_arrival(wire: str) -> None:
    for defer in (False, True):
        with pytest.raises(ValueError, match="does not hold percent-encoded JSON"):
            metadata.parse_baggage(f"lazy.n={wire}", defer=defer)


def test_a_repeated_name_takes_the_last_entry_whole() -> None:
    # The second entry (raw quotes) is not forwardable as it came: the hop must send what
    # its handler sees, never the first entry's bytes.
    for defer in (False, True):
        s = _from_wire('lazy.a=1,lazy.a="x"', defer)
        assert s.get("a") == "x"
        assert s.baggage() == "lazy.a=%22x%22"


def test_a_trailer_entry_that_is_not_forwardable_is_merged_and_encoded_afresh() -> None:
    from lazygrpc.client.call import merge_trailers

    s = Session("s1", {"a": 1})
    merge_trailers(s, [(metadata.UPDATE_TRAILER, 'lazy.a="x"')])
    assert s.get("a") == "x" and s.baggage() == "lazy.a=%22x%22"
    assert metadata.decode_update(s.update_trailer())[0] == {"a": "x"}


def test_a_merged_update_is_decoded_only_when_read_and_forwarded_as_it_came() -> None:
    """A hop that only passes `usage` on never decodes it: the trailer's entry goes up and
    down as it came; reading the global gives the value, and changing it is sent."""
    from lazygrpc.client.call import merge_trailers

    entry = "lazy.usage={%22calls%22:1%2C%22total_tokens%22:16}"
    s = Session("s1")
    merge_trailers(s, [(metadata.UPDATE_TRAILER, entry)])
    assert type(s._values["usage"]) is metadata.Deferred  # not decoded yet
    assert s.baggage() == entry and s.update_trailer() == entry
    assert s.get("usage") == {"calls": 1, "total_tokens": 16}
    s.get("usage")["calls"] = 2
    assert s.update_trailer() == "lazy.usage={%22calls%22:2%2C%22total_tokens%22:16}"


def test_a_merge_is_never_lost_to_a_header_built_at_the_same_time() -> None:
    """baggage() on one thread, merge_update() on another (a call's threads share one
    session): the header sent afterwards always has the merged value."""
    import threading

    update = metadata.parse_baggage(metadata.encode_update({"a": 2}, ()))
    for _ in range(1000):
        s = Session("s1", {"a": 1})
        start = threading.Barrier(2)

        def build(s: Session = s, start: threading.Barrier = start) -> None:
            start.wait()
            s.baggage()

        t = threading.Thread(target=build)
        t.start()
        start.wait()
        s.merge_update(update.values, update.deleted, update.entries)
        t.join()
        assert s.baggage() == "lazy.a=2"


def test_outgoing_metadata_adds_to_plain_metadata_and_sync_interceptors_get_a_list() -> None:
    import grpc.aio

    from lazygrpc.client_interceptors import ClientInterceptor, OutgoingMetadata

    out = OutgoingMetadata((("lazy-session-id", "s-1"),))
    assert tuple(out + grpc.aio.Metadata(("x", "1"))) == (("lazy-session-id", "s-1"), ("x", "1"))
    assert tuple(out + (("y", "2"),)) == (("lazy-session-id", "s-1"), ("y", "2"))  # noqa: RUF005

    class Details:
        method, timeout, metadata, credentials = "/s/m", None, None, None

    new, _ = ClientInterceptor()._details(Details())
    assert isinstance(new.metadata, list)
    new.metadata.append(("x-later", "1"))  # what an interceptor after ours may do


def test_a_long_bad_session_id_is_shown_cut_with_its_length() -> None:
    with pytest.raises(ValueError) as info:
        metadata.validate_session_id("a" * 129)
    assert str(info.value) == (
        f"lazy-session-id: {'a' * 40!r}… (129 characters) is not 1-128 characters of "
        "[A-Za-z0-9._:-]"
    )


def test_trace_headers_forward_only_a_valid_traceparent_and_a_bounded_tracestate() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert metadata.trace_headers(tp, "a=1") == (("traceparent", tp), ("tracestate", "a=1"))
    assert metadata.trace_headers(tp, None) == (("traceparent", tp),)
    assert metadata.trace_headers(tp, "a=" + "x" * 9000) == (("traceparent", tp),)
    for bad in (tp.upper(), "ff" + tp[2:], tp[:-1], tp.replace("b7ad6b7169203331", "0" * 16)):
        assert metadata.trace_headers(bad, "a=1") == ()
    # A later version may add fields after the flags (W3C versioning); version 00 may not.
    later = "01" + tp[2:] + "-future"
    assert metadata.trace_headers(later, None) == (("traceparent", later),)
    assert metadata.trace_headers(tp + "-future", None) == ()


def test_a_global_deleted_while_its_first_read_decodes_reads_as_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another thread of the call deletes the global between the read's lookup and the end
    of its decode: `get` gives the default and `[]` raises KeyError, never a stale None."""
    decode = metadata.Deferred.decode
    for read in ("get", "item"):
        s = _from_wire("lazy.a=1", True)

        def decode_then_delete(self: metadata.Deferred, s: Session = s) -> tuple[object, str]:
            s.delete("a")  # what the other thread does meanwhile
            return decode(self)

        monkeypatch.setattr(metadata.Deferred, "decode", decode_then_delete)
        if read == "get":
            assert s.get("a", "default") == "default"
        else:
            with pytest.raises(KeyError):
                s.item("a")
        monkeypatch.setattr(metadata.Deferred, "decode", decode)
        assert not s.has("a") and s.baggage() == ""


def test_a_global_merged_again_while_its_first_read_decodes_reads_as_the_newer_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child call's trailer lands (another thread of the call) while a read decodes the
    value that came before: the read gives the merged value decoded, never its wire text,
    and what goes on is the merged entry as it came."""
    from lazygrpc.client.call import merge_trailers

    newer = "lazy.usage={%22calls%22:2}"
    decode = metadata.Deferred.decode
    for read in ("get", "item", "values"):
        s = Session("s1")
        merge_trailers(s, [(metadata.UPDATE_TRAILER, "lazy.usage={%22calls%22:1}")])
        merged: list[bool] = []

        def decode_then_merge(
            self: metadata.Deferred, s: Session = s, merged: list[bool] = merged
        ) -> tuple[object, str]:
            if not merged:
                merged.append(True)
                merge_trailers(s, [(metadata.UPDATE_TRAILER, newer)])  # meanwhile
            return decode(self)

        monkeypatch.setattr(metadata.Deferred, "decode", decode_then_merge)
        if read == "get":
            value = s.get("usage")
        elif read == "item":
            value = s.item("usage")
        else:
            value = s.values()["usage"]
        monkeypatch.setattr(metadata.Deferred, "decode", decode)
        assert value == {"calls": 2} and type(value) is dict
        assert s.baggage() == newer and s.update_trailer() == newer


def test_a_global_this_process_wrote_is_known_when_it_comes_back() -> None:
    """An entry `encode_entry` wrote (a nested value too, which the flat pattern does not
    take) comes back as a header checked by one lookup, parsed when read, as it was."""
    value = {"docs": [{"id": 1, "score": 0.5}], "note": 'a "quoted", b;c'}
    entry = metadata.encode_entry("ctx", metadata.encode_json("ctx", value))
    assert metadata._FLAT_HEADER.fullmatch(entry) is None  # not flat: known, not matched
    assert metadata.is_flat_header(entry)
    s = _from_wire(entry)
    assert s.baggage() == entry  # forwarded as it came
    assert s.get("ctx") == value and s.update_trailer() == ""
    # Not written here and not flat: parsed (and checked) on arrival, as before.
    other = entry.replace("lazy.ctx=", "lazy.other=")
    assert not metadata.is_flat_header(other)
    assert _from_wire(other).get("other") == value
    with pytest.raises(InvalidArgument, match="baggage"):
        _from_wire(other.replace("%7D", "", 1) + "%7D%7D")


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(keys, json_values, min_size=1, max_size=6))
def test_a_flat_header_splits_as_the_parser_reads_it(values: dict[str, Any]) -> None:
    header = metadata.encode_globals(values)
    if not metadata.is_flat_header(header):
        return  # not all flat and not known: the parser's own path (other tests)
    split_values, split_entries = metadata.split_flat_header(header)
    parsed = metadata.parse_baggage(header, defer=True)
    assert split_entries == parsed.entries
    assert {k: metadata.Deferred(v).decode()[0] for k, v in split_values.items()} == json.loads(
        json.dumps(values)
    )


def test_the_known_headers_stay_within_their_bound() -> None:
    for i in range(3 * metadata._KNOWN_MAX):
        metadata._know(f"lazy.k{i}={i}")
    assert len(metadata._KNOWN) <= metadata._KNOWN_MAX
    metadata._know("lazy.big=" + "1" * metadata._KNOWN_CHARS)  # too long to keep
    assert all(len(k) <= metadata._KNOWN_CHARS for k in metadata._KNOWN)
