"""Bad input gets INVALID_ARGUMENT naming the problem, and the server keeps serving: bytes that
are no protobuf, values nested past the depth limit, NaN and ±Infinity, `;deleted` baggage."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

import lazygrpc
from lazygrpc.core.values import MAX_DEPTH, from_value, to_value
from lazygrpc.v1 import module_pb2, module_pb2_grpc


def _nested(depth: int, kind: str = "list") -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, encoded by hand."""
    size, length = len(payload), b""
    while True:
        byte, size = size & 0x7F, size >> 7
        length += bytes([byte | (0x80 if size else 0)])
        if not size:
            return bytes([number << 3 | 2]) + length + payload


def _deep_request(depth: int) -> bytes:
    """A `CallRequest` for `echo` whose input is `depth` nested lists, written as bytes:
    past 49 lists protobuf itself will neither build nor parse it."""
    value = struct_pb2.Value(number_value=1).SerializeToString()
    for _ in range(depth):
        value = _field(6, _field(1, value))  # Value.list_value, ListValue.values
    return _field(1, b"echo") + _field(2, value)  # CallRequest.module, CallRequest.input


@pytest.fixture
def target(servers: Any) -> str:
    def deep(n: int, kind: str = "list") -> Any:
        return _nested(n, kind)

    def echo(x: Any = None) -> Any:
        return x

    def set_global(n: int) -> None:
        lazygrpc.globals["deep"] = _nested(n)

    def emit_deep(n: int) -> Iterator[int]:
        lazygrpc.emit(_nested(n))
        yield 1

    url = servers.modules(
        {"deep": deep, "echo": echo, "set_global": set_global, "emit_deep": emit_deep}, name="bad"
    )
    return url.removeprefix("grpc://")


def _raw_call(target: str, method: str, data: bytes, *, streaming: bool = False) -> grpc.RpcError:
    with grpc.insecure_channel(target) as ch:
        identity = ch.unary_stream if streaming else ch.unary_unary
        call = identity(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            result = call(data, timeout=20)
            if streaming:
                list(result)
    return info.value


def _call(target: str, request: module_pb2.CallRequest, md: Any = ()) -> grpc.RpcError:
    with grpc.insecure_channel(target) as ch, pytest.raises(grpc.RpcError) as info:
        module_pb2_grpc.ModuleServiceStub(ch).Call(request, metadata=md, timeout=20)
    return info.value


@pytest.mark.parametrize("streaming", [False, True])
def test_garbage_bytes_get_invalid_argument_naming_the_message(
    target: str, streaming: bool
) -> None:
    method = "/lazygrpc.v1.ModuleService/" + ("Stream" if streaming else "Call")
    err = _raw_call(target, method, b"\xff\xff\xff\xffgarbage", streaming=streaming)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid lazygrpc.v1.CallRequest" in (err.details() or "")
    assert lazygrpc.connect(f"grpc://{target}/echo")("still serving") == "still serving"


def test_values_nest_up_to_the_limit_both_ways(target: str) -> None:
    for kind in ("list", "object"):
        assert lazygrpc.connect(f"grpc://{target}/echo")(_nested(MAX_DEPTH, kind)) == _nested(
            MAX_DEPTH, kind
        )
    with pytest.raises(TypeError, match=f"deeper than {MAX_DEPTH}"):
        lazygrpc.connect(f"grpc://{target}/echo")(_nested(MAX_DEPTH + 1))


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 45, 60])
def test_input_nested_too_deep_is_invalid_argument(target: str, depth: int) -> None:
    err = _raw_call(target, "/lazygrpc.v1.ModuleService/Call", _deep_request(depth))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{MAX_DEPTH} levels" in (err.details() or "")


@pytest.mark.parametrize("kind", ["list", "object"])
def test_output_nested_too_deep_is_internal_naming_the_module(target: str, kind: str) -> None:
    with pytest.raises(lazygrpc.RemoteError) as info:
        lazygrpc.connect(f"grpc://{target}/deep")(MAX_DEPTH + 18, kind=kind)
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert "module 'deep'" in info.value.message
    assert f"deeper than {MAX_DEPTH}" in info.value.message


def test_globals_and_events_share_the_depth_limit(target: str) -> None:
    with pytest.raises(lazygrpc.RemoteError, match="session global 'deep'"):
        lazygrpc.connect(f"grpc://{target}/set_global")(MAX_DEPTH + 1)
    with pytest.raises(lazygrpc.RemoteError, match=f"emitted value.*deeper than {MAX_DEPTH}"):
        list(lazygrpc.connect(f"grpc://{target}/emit_deep").stream(MAX_DEPTH + 1))
    entry = "lazy.deep=" + "%5B" * (MAX_DEPTH + 1) + "1" + "%5D" * (MAX_DEPTH + 1)
    err = _call(target, module_pb2.CallRequest(module="echo"), [("baggage", entry)])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'lazy.deep'" in (err.details() or "") and f"{MAX_DEPTH}" in (err.details() or "")


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_in_input_are_invalid_argument_naming_the_field(
    target: str, number: float
) -> None:
    request = module_pb2.CallRequest(module="echo", input=struct_pb2.Value(number_value=number))
    err = _call(target, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.details() or "").startswith("input:")
    request = module_pb2.CallRequest(module="echo")
    request.kwargs.fields["x"].list_value.values.add().number_value = number
    err = _call(target, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kwargs['x'][0]" in (err.details() or "")
    with pytest.raises(lazygrpc.InvalidArgument, match="not a JSON number"):
        from_value(struct_pb2.Value(number_value=number))


def test_deleted_on_incoming_baggage_is_refused_naming_the_entry(target: str) -> None:
    md = [("baggage", "lazy.user=%22ada%22,lazy.role=;deleted")]
    err = _call(target, module_pb2.CallRequest(module="echo", input=to_value(1)), md)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "lazy.role=;deleted" in (err.details() or "")
    assert "lazy-globals-update" in (err.details() or "")


def test_deleted_in_an_update_trailer_still_deletes(servers: Any) -> None:
    def forget() -> None:
        del lazygrpc.globals["user"]

    url = servers.modules({"forget": forget}, name="forgetful")
    with lazygrpc.session("del-1"):
        lazygrpc.globals["user"] = "ada"
        lazygrpc.connect(f"{url}/forget")()
        assert "user" not in lazygrpc.globals


def test_garbage_bytes_on_a_sync_server_with_lazygrpc_interceptors() -> None:
    from tests.hops import start_sync_server

    server, url = start_sync_server("sync-bad", {"echo": lambda x: x})
    try:
        target = url.removeprefix("grpc://")
        err = _raw_call(target, "/lazygrpc.v1.ModuleService/Call", b"\x0a\xff\xff")
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid lazygrpc.v1.CallRequest" in (err.details() or "")
        assert lazygrpc.connect(f"{url}/echo")("still serving") == "still serving"
    finally:
        server.stop(0)


def test_garbage_in_a_request_stream_is_invalid_argument(target: str) -> None:
    with grpc.insecure_channel(target) as ch:
        publish = ch.stream_unary("/lazygrpc.v1.BrokerService/Publish")
        with pytest.raises(grpc.RpcError) as info:
            publish(iter([b"\xff\xff\xff"]), timeout=20)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid lazygrpc.v1.PublishRequest" in (info.value.details() or "")
