"""The pure metadata codecs: globals ⇄ baggage, session ids, limits (property tests)."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazygrpc.core import baggage as metadata
from lazygrpc.core import usage
from lazygrpc.core.errors import InvalidArgument, ResourceExhausted
from lazygrpc.core.session import Session
from lazygrpc.server.call import incoming_scope

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
#: Global names; `usage` is the servers' own account, checked on arrival (its own tests).
keys = st.text(min_size=1, max_size=12).filter(lambda k: k != usage.USAGE)


def _header(values: dict[str, Any], others: list[str] | None = None) -> str:
    """The `baggage` header a session with these globals (and foreign entries) sends."""
    return Session(None, values, others).baggage()


def _update(values: dict[str, Any], deleted: Any = ()) -> str:
    """A `lazy-globals-update` value setting `values` and deleting `deleted`."""
    entries = [metadata.encode_entry(k, metadata.encode_json(k, v)) for k, v in values.items()]
    return metadata.join_update(entries, deleted)


def _read_update(update: str) -> tuple[dict[str, Any], set[str]]:
    """(set values, deleted keys) of a `lazy-globals-update` value."""
    parsed = metadata.parse_baggage(update, update=True)
    return parsed.values, parsed.deleted


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, json_values, max_size=8))
def test_globals_round_trip_through_baggage(values: dict[str, Any]) -> None:
    try:
        header = _header(values, ["other=1;prop"])
    except ValueError as exc:
        assert "over the limit" in str(exc)
        return
    assert header.isascii() and " " not in header and '"' not in header
    parsed = metadata.parse_baggage(header)
    sent = {k: v for k, v in values.items() if k != "usage"}  # usage flows only upstream
    assert json.dumps(parsed.values, sort_keys=True) == json.dumps(sent, sort_keys=True)
    assert parsed.others == ["other=1;prop"] and not parsed.deleted


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=8300, max_value=20000))
def test_oversized_globals_are_refused_with_the_size(size: int) -> None:
    with pytest.raises(ValueError, match=r"encoded baggage is \d+ bytes, over the limit of 8192"):
        _header({"k": "x" * size})


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=181, max_value=400))
def test_too_many_entries_are_refused_with_the_count(n: int) -> None:
    with pytest.raises(ValueError, match=rf"{n} baggage entries, over the limit of 180"):
        _header({f"k{i}": i for i in range(n)})


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(keys, json_values, max_size=5), st.sets(keys, max_size=3))
def test_update_trailer_round_trips_sets_and_deletes(
    values: dict[str, Any], gone: set[str]
) -> None:
    gone -= set(values)
    decoded, deleted = _read_update(_update(values, gone))
    assert json.dumps(decoded, sort_keys=True) == json.dumps(values, sort_keys=True)
    assert deleted == gone


@pytest.mark.parametrize(
    "header",
    ["lazy.k", "lazy.k=%7B", "bad key=1", "lazy.k=%ZZ", "=1", "lazy.k=%FF%FE"],
)
def test_malformed_baggage_names_the_header(header: str) -> None:
    with pytest.raises(ValueError, match=r"^baggage: "):
        metadata.parse_baggage(header)


@pytest.mark.parametrize("sid", ["", "a b", "x" * 129, "é", "a/b"])
def test_invalid_session_ids_are_refused(sid: str) -> None:
    with pytest.raises(ValueError, match="lazy-session-id"):
        metadata.check_session_id(sid)


def test_session_tracks_changes_and_deletions() -> None:
    s = Session("s1", {"a": 1, "b": 2})
    assert s.update_trailer() == ""
    s.set("a", 3)
    s.delete("b")
    values, deleted = _read_update(s.update_trailer())
    assert values == {"a": 3} and deleted == {"b"}
    parent = Session("s1", {"b": 2})
    parent.merge_update(values, deleted)
    assert parent.values() == {"a": 3}


def _from_wire(header: str, server: bool = True) -> Session:
    """The session of an incoming call with this `baggage` header: as a server's call
    lifecycle makes it from the call's metadata, or as `Session.arrived` makes it."""
    if server:
        md = (("lazy-session-id", "s1"), ("baggage", header))
        return incoming_scope("ModuleService", "Call", md, None).session
    return Session.arrived("s1", header, metadata.is_flat_header(header))


#: Both routes a session takes off the wire: a server call's headers, or `Session.arrived`.
both_ways = pytest.mark.parametrize("server", [False, True], ids=["arrived", "server"])


@both_ways
def test_untouched_globals_are_forwarded_as_they_came_and_report_no_change(server: bool) -> None:
    # A peer that formats JSON its own way (spaces, "{" escaped): still valid baggage.
    header = "lazy.a=%7B%22x%22%3A%201%7D,other=1,lazy.b=%5B1%2C2%5D,lazy.c=%7B%22y%22:2%7D"
    s = _from_wire(header, server)
    assert s.baggage() == (
        "other=1,lazy.a=%7B%22x%22%3A%201%7D,lazy.b=%5B1%2C2%5D,lazy.c=%7B%22y%22:2%7D"
    )
    assert s.update_trailer() == ""
    # Read but not changed: compared canonically, still no change.
    assert s.get("a") == {"x": 1} and s.get("c") == {"y": 2}
    assert s.update_trailer() == ""
    assert metadata.parse_baggage(s.baggage()).values == {"a": {"x": 1}, "b": [1, 2], "c": {"y": 2}}


#: What a value may hold unescaped: W3C baggage-octet (%x21 / %x23-2B / %x2D-3A / %x3C-5B /
#: %x5D-7E) less "%", the escape character.
BAGGAGE_SAFE = "".join(ch for ch in map(chr, range(0x21, 0x7F)) if ch not in '"%,;\\')


@settings(max_examples=500, deadline=None)
@given(st.text() | st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_values_are_quoted_exactly_as_urllib_does(text: str) -> None:
    assert metadata.encode_entry("k", text) == "lazy.k=" + urllib.parse.quote(
        text, safe=BAGGAGE_SAFE
    )


def test_every_ascii_character_is_quoted_as_urllib_does() -> None:
    for ch in map(chr, range(0x80)):
        assert metadata.encode_entry("k", ch) == "lazy.k=" + urllib.parse.quote(
            ch, safe=BAGGAGE_SAFE
        )


def test_a_value_set_as_owned_is_sent_as_it_was_when_set() -> None:
    s = Session("s1")
    usage = {"calls": 1}
    s.set("docs", usage, owned=True)
    header = s.baggage()
    usage["calls"] = 2  # breaks the promise: not seen, the encoding made at set() stands
    assert s.baggage() == header == "lazy.docs={%22calls%22:1}"
    assert _read_update(s.update_trailer())[0] == {"docs": {"calls": 1}}
    s.get("docs")["calls"] = 3  # handed out again by get(): changes in place count again
    assert _read_update(s.update_trailer())[0] == {"docs": {"calls": 3}}


def test_a_hop_forwards_the_header_it_came_with_until_a_global_changes() -> None:
    header = _header({"usage": {"prompt_tokens": 3}, "user": "ann", "n": 1})
    s = _from_wire(header)
    assert s.baggage() == header
    s.set("n", 2)
    assert s.baggage() == header.replace("lazy.n=1", "lazy.n=2")
    # Not every entry as it came (a repeated name, a foreign entry): built from the globals.
    assert _from_wire("lazy.n=1,lazy.n=2").baggage() == "lazy.n=2"
    # A name first sent in a form decoded on arrival, then flat: the globals' order holds.
    assert _from_wire('lazy.a="hi",lazy.b=1,lazy.a=2').baggage() == "lazy.a=2,lazy.b=1"
    assert _from_wire("lazy.n=1,k=v").baggage() == "k=v,lazy.n=1"


@pytest.mark.parametrize("source", ["arrived", "server", "merged", "set"])
def test_a_value_changed_in_place_is_sent_and_reported(source: str) -> None:
    if source in ("arrived", "server"):
        s = _from_wire(_header({"history": ["a"]}), source == "server")
    elif source == "merged":
        s = Session("s1")
        update = metadata.parse_baggage(_update({"history": ["a"]}))
        s.merge_update(update.values, update.deleted, update.entries)
    else:
        s = Session("s1")
        s.set("history", ["a"])
    s.get("history").append("b")
    assert metadata.parse_baggage(s.baggage()).values == {"history": ["a", "b"]}
    changed, _ = _read_update(s.update_trailer())
    assert changed == {"history": ["a", "b"]}
    # Every later change is seen too, not only the first.
    s.item("history").append("c")
    assert metadata.parse_baggage(s.baggage()).values == {"history": ["a", "b", "c"]}


@both_ways
@settings(max_examples=100, deadline=None)
@given(st.dictionaries(keys, json_values, max_size=6), st.data())
def test_wire_session_roundtrip_and_changes(
    server: bool, values: dict[str, Any], data: Any
) -> None:
    header = _header(values)
    s = _from_wire(header, server)
    assert s.baggage() == header  # forwarded as it came
    assert s.update_trailer() == ""
    expected = json.loads(json.dumps(values))
    if values and data.draw(st.booleans()):  # read some first: reading changes nothing
        read = data.draw(st.sampled_from(sorted(values)))
        assert s.get(read) == expected[read]
        assert s.update_trailer() == ""
    assert s.values() == expected
    assert metadata.parse_baggage(s.baggage()).values == expected
    assert s.update_trailer() == ""
    if values:
        key = data.draw(st.sampled_from(sorted(values)))
        new = data.draw(json_values)
        s.set(key, new)
        changed, _ = _read_update(s.update_trailer())
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
    server: bool,
) -> None:
    # Lenient input (a raw quote and "é") is accepted, but not forwarded as it came.
    s = _from_wire('lazy.x="a\u00e9",lazy.y=%22ok%22', server)
    assert s.baggage() == "lazy.x=%22a%C3%A9%22,lazy.y=%22ok%22"


def test_outgoing_metadata_is_a_full_grpc_aio_metadata() -> None:
    """grpc.aio reads the call metadata with len() and tuple() only; an interceptor may use
    the whole `grpc.aio.Metadata` API on it, changes included."""
    import grpc.aio

    from lazygrpc.client.seams import OutgoingMetadata

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


def _flat_wire(number: str, string: str, *literals: str) -> str:
    """A pattern of wire values: a scalar, or a flat object or array of scalars."""
    scalar = f"(?:{string}|{number}|{'|'.join(literals)})"
    return (
        f"{scalar}"
        f"|\\{{(?:{string}:{scalar}(?:%2C{string}:{scalar})*)?\\}}"
        f"|\\[(?:{scalar}(?:%2C{scalar})*)?\\]"
    )


_PLAIN = r"[A-Za-z0-9_.~!#$&'()*+/:<=>?@\[\]^`{|}-]"
#: Flat JSON as `encode_entry` writes it (printable ASCII strings, no backslash escapes)...
FLAT_WIRE = _flat_wire(
    r"-?(?:0|[1-9][0-9]{0,5})(?:\.[0-9]{1,3})?(?:[eE][+-]?[0-9]{1,2})?",
    f"%22(?:{_PLAIN}|%2[05C]|%3B)*%22",
    "true",
    "false",
    "null",
)
#: ...and near it: numbers, strings and escapes that are not quite valid percent-encoded JSON.
NEAR_FLAT_WIRE = _flat_wire(
    r"-?[0-9]{1,4}(?:\.[0-9]{0,2})?(?:[eE][+-]?[0-9]{0,3})?",
    f"%22(?:{_PLAIN}|%2[05C]|%3B|%5C|%22|%[0-9A-Fa-f]{{2}})*%22",
    "true",
    "null",
    "nul",
)
_REFUSED = object()


def _arrived_value(wire: str, *, defer: bool) -> Any:
    try:
        return metadata.parse_baggage(f"lazy.k={wire}", defer=defer).values["k"]
    except ValueError:
        return _REFUSED


@settings(max_examples=500, deadline=None)
@given(st.from_regex(FLAT_WIRE, fullmatch=True) | st.from_regex(NEAR_FLAT_WIRE, fullmatch=True))
def test_a_value_deferred_on_arrival_is_always_strict_json(wire: str) -> None:
    """Deferring is only sound if everything let through undecoded decodes, to the value
    the parser gives when it decodes at once (and what is refused is refused either way)."""
    eager = _arrived_value(wire, defer=False)
    deferred = _arrived_value(wire, defer=True)
    if isinstance(deferred, metadata.Undecoded):
        assert eager is not _REFUSED
        value, text = deferred.decode()
        assert json.dumps(value) == json.dumps(eager)
        assert text == urllib.parse.unquote(wire, errors="strict")
    elif eager is _REFUSED:
        assert deferred is _REFUSED
    else:
        assert json.dumps(deferred) == json.dumps(eager)


@pytest.mark.parametrize(
    "wire", ["1", "-0.5e+10", "%22a%20b%2C%25%22", "{%22a%22:null}", "[true%2C%22x%22]", "{}"]
)
def test_flat_values_are_deferred_on_arrival(wire: str) -> None:
    value = metadata.parse_baggage(f"lazy.k={wire}", defer=True).values["k"]
    assert isinstance(value, metadata.Undecoded) and value.wire == wire
    assert value.decode() == (
        metadata.parse_baggage(f"lazy.k={wire}").values["k"],
        urllib.parse.unquote(wire),
    )


@pytest.mark.parametrize(
    "wire", ["%7B%22a%22:%7B%7D%7D", "%22a%5Cn%22", "%5B%5B1%5D%5D", "%7B%22x%22%3A%201%7D"]
)
def test_values_outside_the_flat_pattern_are_decoded_on_arrival(wire: str) -> None:
    value = metadata.parse_baggage(f"lazy.k={wire}", defer=True).values["k"]
    assert not isinstance(value, metadata.Undecoded)
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
    update = metadata.parse_baggage(_update({"d": 4}))
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
    for server in (False, True):
        s = _from_wire('lazy.a=1,lazy.a="x"', server)
        assert s.get("a") == "x"
        assert s.baggage() == "lazy.a=%22x%22"


def test_a_trailer_entry_that_is_not_forwardable_is_merged_and_encoded_afresh() -> None:
    from lazygrpc.client.call import merge_trailers

    s = Session("s1", {"a": 1})
    merge_trailers(s, [(metadata.UPDATE_TRAILER, 'lazy.a="x"')])
    assert s.get("a") == "x" and s.baggage() == "lazy.a=%22x%22"
    assert _read_update(s.update_trailer())[0] == {"a": "x"}


def test_a_merged_update_is_decoded_only_when_read_and_forwarded_as_it_came(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hop that only passes a global on never decodes it: the trailer's entry goes up and
    down as it came; reading the global gives the value, and changing it is sent."""
    from lazygrpc.client.call import merge_trailers

    decoded: list[str] = []
    decode = metadata.Undecoded.decode

    def counted(self: metadata.Undecoded) -> tuple[object, str]:
        decoded.append(self.wire)
        return decode(self)

    monkeypatch.setattr(metadata.Undecoded, "decode", counted)
    entry = "lazy.docs={%22calls%22:1%2C%22total_tokens%22:16}"
    s = Session("s1")
    merge_trailers(s, [(metadata.UPDATE_TRAILER, entry)])
    assert s.baggage() == entry and s.update_trailer() == entry
    assert decoded == []  # not decoded yet
    assert s.get("docs") == {"calls": 1, "total_tokens": 16}
    assert decoded == [entry.partition("=")[2]]
    s.get("docs")["calls"] = 2
    assert s.update_trailer() == "lazy.docs={%22calls%22:2%2C%22total_tokens%22:16}"


def test_usage_from_a_callee_adds_to_the_callers_and_only_what_was_added_goes_up() -> None:
    """`usage` in an update is what the call below added: the caller adds it to its own, and
    its own update carries what its callees added, never the total it started with."""
    from lazygrpc.client.call import merge_trailers

    s = Session.arrived("s1", "lazy.usage={%22calls%22:1000000000001}", True)  # a forged base
    for _ in range(2):
        merge_trailers(s, [(metadata.UPDATE_TRAILER, "lazy.usage={%22calls%22:1}")])
    assert s.get("usage") == {"calls": 1000000000003}  # what its sender reads back
    assert s.update_trailer() == "lazy.usage={%22calls%22:2}"  # what goes up: what was added


@pytest.mark.parametrize(
    "forged", ["{%22calls%22:-5}", "{%22calls%22:true}", "%22lots%22", "{%22calls%22:1.5}"]
)
def test_an_update_with_no_usage_counts_is_not_merged(forged: str) -> None:
    from lazygrpc.client.call import merge_trailers

    s = Session("s1", {"usage": {"calls": 1}})
    merge_trailers(s, [(metadata.UPDATE_TRAILER, f"lazy.usage={forged}")])
    assert s.get("usage") == {"calls": 1} and s.update_trailer() == ""


def test_an_update_that_would_not_fit_is_not_merged_and_the_caller_keeps_its_globals() -> None:
    """A callee's update that would push the caller past the baggage limits is dropped whole:
    the caller's session stays usable (its next call's header still fits)."""
    from lazygrpc.client.call import merge_trailers

    s = Session("s1", {"big": "x" * 5000, "user": "ada"})
    update = ",".join(
        [metadata.encode_entry("other", metadata.encode_json("other", "y" * 4000)),
         metadata.encode_entry("user", metadata.encode_json("user", "eve"))]
    )  # fmt: skip
    merge_trailers(s, [(metadata.UPDATE_TRAILER, update)])
    assert s.values() == {"big": "x" * 5000, "user": "ada"}
    assert len(s.baggage()) < metadata.MAX_BAGGAGE_BYTES
    many = ",".join(f"lazy.k{i}=1" for i in range(179))
    merge_trailers(s, [(metadata.UPDATE_TRAILER, many)])
    assert set(s.values()) == {"big", "user"}


def test_a_change_that_would_not_fit_the_callers_session_fails_at_the_callee() -> None:
    """The callee sees the caller's globals in its header: an update that would not fit
    with them is refused there (RESOURCE_EXHAUSTED naming the keys), not sent up."""
    header = metadata.encode_entry("big", metadata.encode_json("big", "x" * 5000))
    s = Session.arrived("s1", header, True)
    s.set("answer", "y" * 4000)
    with pytest.raises(ResourceExhausted, match="answer"):
        s.update_trailer()


@both_ways
def test_a_lone_surrogate_in_an_incoming_global_is_refused_on_arrival(server: bool) -> None:
    with pytest.raises((ValueError, InvalidArgument), match="surrogate"):
        _from_wire("lazy.usage=%7B%22%5Cud800%22:1%7D", server)
    assert _from_wire("lazy.k=%22%5Cud83d%5Cude00%22", server).get("k") == "😀"  # a pair is fine


def test_a_lone_surrogate_is_refused_when_set_and_in_an_update() -> None:
    from lazygrpc.client.call import merge_trailers

    with pytest.raises(TypeError, match="surrogate"):
        Session().set("k", "\ud800")
    s = Session("s1", {"k": 1})
    merge_trailers(s, [(metadata.UPDATE_TRAILER, "lazy.k=%22%5Cudfff%22")])
    assert s.values() == {"k": 1}
    s.baggage()  # still encodes


def test_a_merge_is_never_lost_to_a_header_built_at_the_same_time() -> None:
    """baggage() on one thread, merge_update() on another (a call's threads share one
    session): the header sent afterwards always has the merged value."""
    import threading

    update = metadata.parse_baggage(_update({"a": 2}))
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
    from concurrent import futures

    import grpc
    import grpc.aio

    from lazygrpc import ClientInterceptor, session
    from lazygrpc.client.call import OutgoingCall
    from lazygrpc.client.seams import OutgoingMetadata

    out = OutgoingMetadata((("lazy-session-id", "s-1"),))
    assert tuple(out + grpc.aio.Metadata(("x", "1"))) == (("lazy-session-id", "s-1"), ("x", "1"))
    assert tuple(out + (("y", "2"),)) == (("lazy-session-id", "s-1"), ("y", "2"))  # noqa: RUF005

    # A call made with no metadata of its own carries the session's.
    with session("s-1", user="ann"):
        call = OutgoingCall(None, None)
    assert call.metadata == (("lazy-session-id", "s-1"), ("baggage", "lazy.user=%22ann%22"))
    assert call.timeout is None

    # A sync interceptor after ours gets that metadata as a list it may append to.
    seen: list[type] = []

    class Appender(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            seen.append(type(details.metadata))
            details.metadata.append(("x-later", "1"))  # what an interceptor after ours may do
            return continuation(details, request)

    def echo_metadata(request: bytes, context: Any) -> bytes:
        md = dict(context.invocation_metadata())
        return json.dumps(
            {k: md.get(k) for k in ("lazy-session-id", "baggage", "x-later")}
        ).encode()

    server = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "t.Echo", {"Metadata": grpc.unary_unary_rpc_method_handler(echo_metadata)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as raw:
            channel = grpc.intercept_channel(raw, ClientInterceptor(), Appender())
            with session("s-1", user="ann"):
                reply = channel.unary_unary("/t.Echo/Metadata")(b"", timeout=10)
    finally:
        server.stop(0)
    assert seen == [list]
    assert json.loads(reply) == {
        "lazy-session-id": "s-1",
        "baggage": "lazy.user=%22ann%22",
        "x-later": "1",
    }


def test_a_long_bad_session_id_is_shown_cut_with_its_length() -> None:
    with pytest.raises(ValueError) as info:
        metadata.check_session_id("a" * 129)
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
    decode = metadata.Undecoded.decode
    for read in ("get", "item"):
        s = _from_wire("lazy.a=1", True)

        def decode_then_delete(self: metadata.Undecoded, s: Session = s) -> tuple[object, str]:
            s.delete("a")  # what the other thread does meanwhile
            return decode(self)

        monkeypatch.setattr(metadata.Undecoded, "decode", decode_then_delete)
        if read == "get":
            assert s.get("a", "default") == "default"
        else:
            with pytest.raises(KeyError):
                s.item("a")
        monkeypatch.setattr(metadata.Undecoded, "decode", decode)
        assert not s.has("a") and s.baggage() == ""


def test_a_global_merged_again_while_its_first_read_decodes_reads_as_the_newer_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child call's trailer lands (another thread of the call) while a read decodes the
    value that came before: the read gives the merged value decoded, never its wire text,
    and what goes on is the merged entry as it came."""
    from lazygrpc.client.call import merge_trailers

    newer = "lazy.docs={%22calls%22:2}"
    decode = metadata.Undecoded.decode
    for read in ("get", "item", "values"):
        s = Session("s1")
        merge_trailers(s, [(metadata.UPDATE_TRAILER, "lazy.docs={%22calls%22:1}")])
        merged: list[bool] = []

        def decode_then_merge(
            self: metadata.Undecoded, s: Session = s, merged: list[bool] = merged
        ) -> tuple[object, str]:
            if not merged:
                merged.append(True)
                merge_trailers(s, [(metadata.UPDATE_TRAILER, newer)])  # meanwhile
            return decode(self)

        monkeypatch.setattr(metadata.Undecoded, "decode", decode_then_merge)
        if read == "get":
            value = s.get("docs")
        elif read == "item":
            value = s.item("docs")
        else:
            value = s.values()["docs"]
        monkeypatch.setattr(metadata.Undecoded, "decode", decode)
        assert value == {"calls": 2} and type(value) is dict
        assert s.baggage() == newer and s.update_trailer() == newer


def test_a_nested_global_comes_back_as_it_was_and_a_broken_one_is_refused() -> None:
    """An entry `encode_entry` wrote with a nested value (which the flat pattern does not
    take) is parsed on arrival, forwarded as it came and read as it was; a broken one is
    refused, the error naming the header."""
    value = {"docs": [{"id": 1, "score": 0.5}], "note": 'a "quoted", b;c'}
    entry = metadata.encode_entry("ctx", metadata.encode_json("ctx", value))
    s = _from_wire(entry)
    assert s.baggage() == entry  # forwarded as it came
    assert s.get("ctx") == value and s.update_trailer() == ""
    with pytest.raises(InvalidArgument, match="baggage"):
        _from_wire(entry.replace("%7D", "", 1) + "%7D%7D")


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(keys, json_values, min_size=1, max_size=6))
def test_a_flat_header_splits_as_the_parser_reads_it(values: dict[str, Any]) -> None:
    header = _header(values)
    if not metadata.is_flat_header(header):
        return  # not all flat: the parser's own path (other tests)
    split_values, split_entries = metadata.split_flat_header(header)
    parsed = metadata.parse_baggage(header, defer=True)
    assert split_entries == parsed.entries
    assert all(isinstance(v, metadata.Undecoded) for v in split_values.values())
    assert {k: v.decode()[0] for k, v in split_values.items()} == json.loads(json.dumps(values))


@pytest.mark.parametrize(
    "header",
    [
        "lazy.a=1",
        "lazy.a=1,lazy.b=%22x%22",
        "lazy.a=1,lazy.a=2",  # a name twice: not flat
        "lazy.a={%22b%22:{%22c%22:1}}",  # nested: not flat
        "other=1",
        "lazy.a=%ZZ",
    ],
)
def test_known_headers_change_no_answer_of_the_check(header: str) -> None:
    """`is_flat_header` answers as its uncached check does, whether or not it knew the
    header, and what it learns from checking is the same answer again."""
    metadata.KNOWN_FLAT.clear()
    expected = metadata.check_flat_header(header)
    assert metadata.is_flat_header(header) is expected
    assert metadata.is_flat_header(header) is expected  # now maybe known
    assert (header in metadata.KNOWN_FLAT) is expected


def test_an_entry_this_process_wrote_is_known_and_reads_back() -> None:
    metadata.KNOWN_FLAT.clear()
    entry = metadata.encode_entry("docs", metadata.encode_json("docs", {"calls": 1}))
    assert entry in metadata.KNOWN_FLAT and metadata.is_flat_header(entry)
    s = Session.arrived("s1", entry, metadata.is_flat_header(entry))
    assert s.get("docs") == {"calls": 1} and s.baggage() == entry


def test_known_headers_stay_within_their_bound() -> None:
    known = metadata.KnownHeaders(size=4, max_chars=10)
    for i in range(10):
        known.add(f"lazy.k{i}=1")
    known.add("lazy.big=" + "1" * 10)  # too long to keep
    assert [f"lazy.k{i}=1" in known for i in range(10)] == [False] * 6 + [True] * 4
    assert "lazy.big=" + "1" * 10 not in known
