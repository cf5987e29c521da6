"""ModuleService: sync/async functions and generators, ListModules, bad input."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

import lazygrpc
from lazygrpc.server.module_spec import load_target
from lazygrpc.v1 import module_pb2, module_pb2_grpc


def add(x: int, y: int = 1) -> int:
    """Add y to x."""
    return x + y


def plus(x, y=1):  # type: ignore[no-untyped-def]  # unannotated: nothing checked on arrival
    return x + y


async def shout(x: str) -> str:
    """Upper-case the input."""
    return x.upper()


def words(text: str) -> Iterator[str]:
    """Stream the words of the text."""
    for w in text.split():
        yield w + " "


async def awords(text: str) -> AsyncIterator[str]:
    """Stream the words of the text, asynchronously."""
    for w in text.split():
        yield w + " "
        await asyncio.sleep(0)


def numbers(n: int) -> Iterator[int]:
    yield from range(n)
    return sum(range(n))  # a generator's return value becomes the result


def bad_output(x: Any) -> Any:
    return {1, 2}


MODULES = {"add": add, "shout": shout, "words": words, "awords": awords, "numbers": numbers}


@pytest.fixture
def url(servers: Any) -> str:
    return servers.modules({**MODULES, "bad_output": bad_output}, name="mods")


def test_sync_and_async_functions(url: str) -> None:
    assert lazygrpc.connect(f"{url}/add")(2, y=40) == 42
    assert lazygrpc.connect(f"{url}/shout")("hi") == "HI"


@pytest.mark.parametrize("module", ["words", "awords"])
def test_generators_stream_deltas_then_one_result(url: str, module: str) -> None:
    events = list(lazygrpc.connect(f"{url}/{module}").stream("a b c"))
    assert [e.kind for e in events][-1] == "result"
    assert sum(e.kind == "result" for e in events) == 1
    assert "".join(e.value for e in events if e.kind == "delta") == "a b c "
    assert events[-1].value == "a b c "
    assert [e.seq for e in events] == list(range(len(events)))
    assert all(e.source == module for e in events)


@pytest.mark.parametrize("module", ["words", "awords"])
def test_generators_stream_from_asyncio(url: str, module: str) -> None:
    async def go() -> list[Any]:
        try:
            return [e async for e in lazygrpc.connect(f"{url}/{module}").astream("x y")]
        finally:
            await lazygrpc.client.channels.aclose_all()

    events = asyncio.run(go())
    assert events[-1].kind == "result" and events[-1].value == "x y "


def test_generator_return_value_is_the_result_and_call_aggregates(url: str) -> None:
    events = list(lazygrpc.connect(f"{url}/numbers").stream(4))
    assert [e.value for e in events if e.kind == "delta"] == [0, 1, 2, 3]
    assert events[-1].value == 6
    assert lazygrpc.connect(f"{url}/words")("p q") == "p q "


def test_list_modules_describes_them(url: str) -> None:
    modules = {m["name"]: m for m in lazygrpc.connect(f"{url}/add").list_modules()}
    assert set(modules) == {*MODULES, "bad_output"}
    assert modules["words"]["streaming"] and not modules["add"]["streaming"]
    assert modules["add"]["doc"] == "Add y to x."


def _stub(url: str) -> tuple[grpc.Channel, Any]:
    ch = grpc.insecure_channel(url.removeprefix("grpc://"))
    return ch, module_pb2_grpc.ModuleServiceStub(ch)


def test_unknown_module_is_not_found_naming_it(url: str) -> None:
    with pytest.raises(lazygrpc.RemoteError) as info:
        lazygrpc.connect(f"{url}/nope")(1)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert "'nope'" in info.value.message
    assert lazygrpc.connect(f"{url}/add")(1) == 2


@pytest.mark.parametrize("rpc", ["Call", "Stream"])
def test_malformed_value_is_invalid_argument(url: str, rpc: str) -> None:
    ch, stub = _stub(url)
    with ch:
        request = module_pb2.CallRequest(module="add", input=struct_pb2.Value())
        with pytest.raises(grpc.RpcError) as info:
            result = getattr(stub, rpc)(request, timeout=10)
            list(result) if rpc == "Stream" else result
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "input: google.protobuf.Value has no kind set" in info.value.details()
        nested = module_pb2.CallRequest(module="add", input=struct_pb2.Value(number_value=1))
        nested.kwargs.fields["y"].CopyFrom(struct_pb2.Value())
        with pytest.raises(grpc.RpcError) as info:
            stub.Call(nested, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "kwargs['y']" in info.value.details()
        ok = stub.Call(module_pb2.CallRequest(module="add", input=struct_pb2.Value(number_value=1)))
        assert ok.output.number_value == 2


def test_unconvertible_output_is_internal_and_names_the_module(url: str) -> None:
    with pytest.raises(lazygrpc.RemoteError) as info:
        lazygrpc.connect(f"{url}/bad_output")(1)
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert "'bad_output'" in info.value.message and "set" in info.value.message


def test_unconvertible_input_fails_at_the_client() -> None:
    with pytest.raises(TypeError, match="input: object is not JSON-like"):
        lazygrpc.connect("grpc://127.0.0.1:1/add")(object())


def test_arguments_that_do_not_fit_the_signature_are_invalid(url: str) -> None:
    with pytest.raises(lazygrpc.RemoteError) as info:
        lazygrpc.connect(f"{url}/add")(1, z=2)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.message == "module 'add': got an unexpected keyword argument 'z'"
    with pytest.raises(lazygrpc.RemoteError) as info:
        list(lazygrpc.connect(f"{url}/words").stream())
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing a required argument: 'text'" in info.value.message
    assert info.value.chain[-1].traceback == ""  # a deliberate status carries no traceback


def _logged(fn: Any) -> Any:
    """A decorator as users write them: `*args, **kwargs` and `functools.wraps`."""
    import functools

    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def agen(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            RAN.append(fn.__name__)
            async for x in fn(*args, **kwargs):
                yield x

        return agen

    if not inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        def sync_call(*args: Any, **kwargs: Any) -> Any:
            RAN.append(fn.__name__)
            return fn(*args, **kwargs)

        return sync_call

    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        RAN.append(fn.__name__)
        return await fn(*args, **kwargs)

    return call


RAN: list[str] = []


@pytest.mark.parametrize("decorated", [False, True], ids=["plain", "decorated"])
@pytest.mark.parametrize("module", ["shout", "awords"])
def test_async_modules_refuse_arguments_that_do_not_fit(
    servers: Any, module: str, decorated: bool
) -> None:
    fn = MODULES[module]
    url = servers.modules({module: _logged(fn) if decorated else fn}, name="checked")
    RAN.clear()
    remote = lazygrpc.connect(f"{url}/{module}")
    for call in (lambda: remote("a", bogus=1), lambda: list(remote.stream("a", bogus=1))):
        with pytest.raises(lazygrpc.RemoteError) as info:
            call()
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "unexpected keyword argument 'bogus'" in info.value.message
    assert RAN == []  # refused before any of the module's code (or its wrapper's) ran
    assert remote("go") in ("GO", "go ")


@pytest.mark.parametrize("decorated", [False, True], ids=["plain", "decorated"])
def test_def_modules_refuse_arguments_that_do_not_fit(servers: Any, decorated: bool) -> None:
    """A plain `def` is called at once (Python binds before the body runs) and a wrapper is
    checked first: either way a call that does not fit is INVALID_ARGUMENT, and a
    TypeError raised inside the body stays the module's own error."""
    url = servers.modules({"plus": _logged(plus) if decorated else plus}, name="checked")
    RAN.clear()
    remote = lazygrpc.connect(f"{url}/plus")
    with pytest.raises(lazygrpc.RemoteError) as info:
        remote(1, bogus=1)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.message == "module 'plus': got an unexpected keyword argument 'bogus'"
    assert RAN == []
    with pytest.raises(lazygrpc.RemoteError) as info:
        remote("a", y=1)  # fits the signature; `"a" + 1` fails inside
    assert (info.value.code, info.value.remote_type) == (grpc.StatusCode.UNKNOWN, "TypeError")
    assert remote(2, y=3) == 5


def test_errors_inside_a_module_keep_their_type(servers: Any) -> None:
    url = servers.modules({"plus": plus}, name="plain")
    with pytest.raises(lazygrpc.RemoteError) as info:
        lazygrpc.connect(f"{url}/plus")("a", y=1)
    assert info.value.code == grpc.StatusCode.UNKNOWN
    assert info.value.remote_type == "TypeError"


def typed(
    n: int,
    ratio: float = 0.5,
    name: str | None = None,
    flag: bool = False,
    tags: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    anything: Any = None,
    loose: int = None,  # type: ignore[assignment]  # noqa: RUF013 (None, its default, passes)
) -> str:
    return "ok"


async def atyped(text: str) -> AsyncIterator[str]:
    yield text


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("abc",), {}, "argument 'n' must be int, got str"),
        ((1.5,), {}, "argument 'n' must be int, got float"),
        ((True,), {}, "argument 'n' must be int, got bool"),  # true is no number in JSON
        ((None,), {}, "argument 'n' must be int, got null"),
        ((1,), {"ratio": "x"}, "argument 'ratio' must be int or float, got str"),
        ((1,), {"name": 3}, "argument 'name' must be str or null, got int"),
        ((1,), {"flag": 1}, "argument 'flag' must be bool, got int"),
        ((1,), {"tags": "a"}, "argument 'tags' must be list or null, got str"),
        ((1,), {"extra": [1]}, "argument 'extra' must be dict or null, got list"),
    ],
)
def test_values_of_the_wrong_json_type_are_invalid_naming_the_argument(
    servers: Any, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    """Parameters annotated with a JSON type are checked on arrival, in `Call` and `Stream`
    alike, before any of the module runs."""
    url = servers.modules({"typed": typed, "atyped": atyped}, name="typed")
    remote = lazygrpc.connect(f"{url}/typed")
    with pytest.raises(lazygrpc.RemoteError) as info:
        remote(*args, **kwargs)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.message == f"module 'typed': {message}"


def test_values_of_the_right_json_type_pass(servers: Any) -> None:
    url = servers.modules({"typed": typed, "atyped": atyped}, name="typed")
    remote = lazygrpc.connect(f"{url}/typed")
    assert remote(2) == "ok"
    both = {"ratio": 2, "name": None, "tags": ["a"], "extra": {"k": 1}, "flag": True}
    assert remote(2, anything=[{"x": 1}], loose=None, **both) == "ok"
    stream = lazygrpc.connect(f"{url}/atyped")
    with pytest.raises(lazygrpc.RemoteError) as info:
        list(stream.stream(5))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.message == "module 'atyped': argument 'text' must be str, got int"
    assert [ev.value for ev in stream.stream("hi")][-1] == "hi"


def test_load_target_from_file_and_package(tmp_path: Path) -> None:
    f = tmp_path / "mine.py"
    f.write_text("def hello(x):\n    return f'hello {x}'\n")
    name, fn = load_target(f"{f}:hello")
    assert name == "hello" and fn("you") == "hello you"
    name, fn = load_target("lazygrpc.demo.modules:ask")
    assert name == "ask"
    for bad in ("nocolon", f"{tmp_path}/missing.py:x", "lazygrpc.demo.modules:missing"):
        with pytest.raises(ValueError, match="module spec"):
            load_target(bad)
