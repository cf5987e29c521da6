"""JSON Schema of each module's signature in ListModules, deep argument checks from the
same annotations, and `lazygrpc list`: real servers, real clients."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from conftest import ROOT, start_cli
from fixtures import typed_modules

import lazygrpc
from lazygrpc.client.listing import type_text
from lazygrpc.v1 import module_pb2, module_pb2_grpc

FIXTURE = "tests/fixtures/typed_modules.py"
NAMES = ("add", "total", "move", "words", "squares", "anything")
DIALECT = "https://json-schema.org/draft/2020-12/schema"


@pytest.fixture
def url(servers: Any) -> str:
    return servers.modules({n: getattr(typed_modules, n) for n in NAMES}, name="typed")


def raw_list(url: str) -> dict[str, Any]:
    """ListModules with a plain grpcio stub, no lazygrpc on the client side."""
    with grpc.insecure_channel(url.removeprefix("grpc://")) as channel:
        reply = module_pb2_grpc.ModuleServiceStub(channel).ListModules(
            module_pb2.ListModulesRequest(), timeout=10
        )
    return {m.name: m for m in reply.modules}


def test_a_raw_grpc_client_reads_each_modules_json_schema(url: str) -> None:
    infos = raw_list(url)
    assert json.loads(infos["add"].params_schema) == {
        "$schema": DIALECT,
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer", "default": 2}},
        "required": ["a"],
        "additionalProperties": False,
    }
    assert json.loads(infos["add"].result_schema) == {"$schema": DIALECT, "type": "integer"}
    assert infos["add"].delta_schema == ""
    total = json.loads(infos["total"].params_schema)["properties"]
    assert total["xs"] == {"type": "array", "items": {"type": "integer"}}
    assert total["weights"]["anyOf"] == [
        {"type": "object", "additionalProperties": {"type": "number"}},
        {"type": "null"},
    ]
    move = json.loads(infos["move"].params_schema)
    assert move["properties"]["p"] == {"$ref": "#/$defs/Point"}
    assert move["$defs"]["Point"]["required"] == ["x"]
    assert move["$defs"]["Options"]["properties"]["mode"]["enum"] == ["fast", "slow"]
    assert move["$defs"]["Item"]["properties"]["tags"]["items"] == {"type": "string"}
    assert json.loads(infos["move"].result_schema)["$ref"] == "#/$defs/Point"
    assert infos["words"].streaming
    assert json.loads(infos["words"].delta_schema) == {"$schema": DIALECT, "type": "string"}
    assert json.loads(infos["words"].result_schema) == {"$schema": DIALECT, "type": "string"}
    assert json.loads(infos["squares"].delta_schema)["type"] == "integer"
    assert json.loads(infos["squares"].result_schema)["items"] == {"type": "integer"}
    anything = json.loads(infos["anything"].params_schema)
    assert anything["properties"] == {"value": {}}
    assert anything["additionalProperties"] == {"type": "integer"}
    assert json.loads(infos["anything"].result_schema) == {}


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "message"),
    [
        ("total", ([1, "a"],), {}, "argument 'xs'[1]: expected a valid integer, got 'a'"),
        ("total", ([1, "2"],), {}, "argument 'xs'[1]: expected a valid integer, got '2'"),
        (
            "total",
            ([1],),
            {"weights": {"0": "x"}},
            "argument 'weights'['0']: expected a valid number, got 'x'",
        ),
        ("move", ({"y": 1},), {}, "argument 'p'['x']: field required"),
        (
            "move",
            ({"x": 1},),
            {"opts": {"mode": "medium"}},
            "argument 'opts'['mode']: expected 'fast' or 'slow', got 'medium'",
        ),
        (
            "move",
            ({"x": 1},),
            {"item": {"name": "n", "tags": ["a", 2]}},
            "argument 'item'['tags'][1]: expected a valid string, got 2",
        ),
        ("add", ("1",), {}, "argument 'a' must be int, got str"),  # the shallow check
    ],
)
def test_a_bad_field_is_invalid_argument_naming_its_path_before_the_module_runs(
    url: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    runs = typed_modules.RUNS["total"]
    with pytest.raises(lazygrpc.RemoteError) as caught:
        lazygrpc.connect(f"{url}/{name}", timeout=10)(*args, **kwargs)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"module {name!r}: {message}" in str(caught.value)
    assert typed_modules.RUNS["total"] == runs
    assert lazygrpc.connect(f"{url}/add", timeout=10)(1) == 3  # still serving


def test_a_stream_is_checked_before_its_generator_starts(url: str) -> None:
    runs = typed_modules.RUNS["total"]
    squares = lazygrpc.connect(f"{url}/squares", timeout=10)
    with pytest.raises(lazygrpc.RemoteError) as caught:
        list(squares.stream([2, 2.5]))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "argument 'xs'[1]: expected a valid integer, got 2.5" in str(caught.value)
    assert typed_modules.RUNS["total"] == runs
    assert list(squares.stream([2, 3]))[-1].value == [4, 9]


def test_good_arguments_arrive_as_their_annotations_say(url: str) -> None:
    assert lazygrpc.connect(f"{url}/total", timeout=10)([1, 2], weights={"1": 0.5}) == 2
    assert lazygrpc.connect(f"{url}/total", timeout=10)([1, 2], weights=None) == 3
    move = lazygrpc.connect(f"{url}/move", timeout=10)
    # A dataclass parameter gets a Point; the Point it returns goes out as JSON.
    assert move({"x": 1}, opts={"mode": "fast"}, item={"name": "n"}) == {"x": 3, "y": 0.0}
    events = list(lazygrpc.connect(f"{url}/words", timeout=10).stream("a b c d", n=2))
    assert (events[-1].kind, events[-1].value) == ("result", "ab")  # deltas may coalesce


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    proc, address = start_cli("serve", *(f"{FIXTURE}:{n}" for n in NAMES))
    try:
        yield f"grpc://{address}"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lazygrpc", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_list_prints_each_module_with_its_signature(served: str) -> None:
    done = cli("list", served)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "add(a: integer, b: integer = 2) -> integer",
        "    Add two integers.",
        "total(xs: array[integer], weights: object[string, number] | null = null) -> number",
        "    Sum of xs, each times its weight by position name.",
        "move(p: Point, opts: Options | null = null, item: Item | null = null) -> Point",
        "    Move a point one step right (two when fast).",
        "words(text: string, n: integer = 3) -> stream of string",
        "    The first n words of text.",
        "squares(xs: array[integer]) -> stream of integer",
        "    Each square, as it is computed.",
        "anything(value: any, **kwargs: integer) -> any",
    ]


def test_list_json_and_one_module(served: str) -> None:
    done = cli("list", f"{served}/move", "--json")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    move = json.loads(line)
    assert move["name"] == "move"
    assert move["params"]["$defs"]["Point"]["properties"]["x"]["type"] == "integer"
    assert move["signature"].startswith("move(p: Point")


def test_list_errors_are_one_line_and_exit_1(served: str) -> None:
    missing = cli("list", f"{served}/nope")
    assert (missing.returncode, missing.stderr.count("\n")) == (1, 1)
    assert "serves no module 'nope'" in missing.stderr
    down = cli("list", "grpc://127.0.0.1:1", "--timeout", "2")
    assert (down.returncode, down.stderr.count("\n")) == (1, 1)
    assert "UNAVAILABLE" in down.stderr or "DEADLINE_EXCEEDED" in down.stderr


@pytest.mark.parametrize(
    ("schema", "text"),
    [
        ({}, "any"),
        ({"type": "string"}, "string"),
        ({"type": ["string", "null"]}, "string | null"),
        (
            {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]},
            "[integer, string]",
        ),
        ({"enum": ["a", 1]}, '"a" | 1'),
        ({"const": "x"}, '"x"'),
        ({"type": "object"}, "object"),
    ],
)
def test_type_text(schema: dict[str, Any], text: str) -> None:
    assert type_text(schema, {}) == text
