"""Python values ⇄ `google.protobuf.Value`: JSON-like data only, never pickle."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import struct_pb2

from lazygrpc.core.errors import InvalidArgument

#: Integers beyond this lose precision as a double, so they are refused instead.
MAX_SAFE_INT = 2**53
#: Lists and objects nest at most this deep in any value lazygrpc carries: call input and
#: output, events, session globals (docs/wire-contract.md "Values"). protobuf's decoder stops
#: at 100 message levels, which an object (3 levels) or a list (2) reaches past 33 deep: a
#: value within the limit decodes in every message that holds one.
MAX_DEPTH = 32

JSON = None | bool | int | float | str | list["JSON"] | dict[str, "JSON"]


def to_value(obj: Any, *, where: str = "value") -> struct_pb2.Value:
    """Convert JSON-like Python data to a `Value`; `TypeError` names what cannot be converted."""
    v = struct_pb2.Value()
    fill_value(v, obj, where=where)
    return v


def fill_struct(s: struct_pb2.Struct, obj: Mapping[str, Any], *, where: str = "kwargs") -> None:
    """A str-keyed mapping into an existing `Struct`."""
    for key, item in obj.items():
        fill_value(s.fields[key], item, where=f"{where}[{key!r}]")


def fill_list(values: struct_pb2.ListValue, obj: Sequence[Any], *, where: str = "args") -> None:
    """A sequence into an existing `ListValue` (several positional arguments)."""
    for i, item in enumerate(obj):
        fill_value(values.values.add(), item, where=f"{where}[{i}]")
    if not obj:
        values.SetInParent()


def _too_deep(where: str) -> str:
    return f"{where}: lists and objects nested deeper than {MAX_DEPTH} levels"


def fill_value(v: struct_pb2.Value, obj: Any, *, where: str = "value", depth: int = 0) -> None:
    """`to_value` into an existing `Value` (a message's field: no copy); `depth` is how deep
    `obj` sits in what is being converted (the `MAX_DEPTH` limit counts from the top)."""
    if type(obj) is str:  # the common case first
        v.string_value = obj
    elif obj is None:
        v.null_value = struct_pb2.NULL_VALUE
    elif isinstance(obj, bool):
        v.bool_value = obj
    elif isinstance(obj, int):
        if abs(obj) > MAX_SAFE_INT:
            raise TypeError(f"{where}: integer {obj!r} does not fit a double exactly")
        v.number_value = obj
    elif isinstance(obj, float):
        if not math.isfinite(obj):
            raise TypeError(f"{where}: {obj!r} is not a JSON number")
        v.number_value = obj
    elif isinstance(obj, str):
        v.string_value = obj
    elif isinstance(obj, Mapping):
        if depth == MAX_DEPTH:
            raise TypeError(_too_deep(where))
        fields = v.struct_value.fields
        for key, item in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: dict key {key!r} is not a string")
            fill_value(fields[key], item, where=f"{where}[{key!r}]", depth=depth + 1)
        if not obj:
            v.struct_value.SetInParent()
    elif isinstance(obj, list | tuple):
        if depth == MAX_DEPTH:
            raise TypeError(_too_deep(where))
        values = v.list_value.values
        for i, item in enumerate(obj):
            fill_value(values.add(), item, where=f"{where}[{i}]", depth=depth + 1)
        if not obj:
            v.list_value.SetInParent()
    else:
        raise TypeError(f"{where}: {type(obj).__name__} is not JSON-like (got {obj!r:.60})")


def from_struct(s: struct_pb2.Struct, *, where: str = "kwargs") -> dict[str, Any]:
    """Convert a `Struct` to a dict."""
    return {k: from_value(x, where=f"{where}[{k!r}]") for k, x in s.fields.items()}


def from_list(values: struct_pb2.ListValue, *, where: str = "args") -> list[Any]:
    """Convert a `ListValue` to a list."""
    return [from_value(x, where=f"{where}[{i}]") for i, x in enumerate(values.values)]


def from_value(v: struct_pb2.Value, *, where: str = "value", depth: int = 0) -> Any:
    """Convert a `Value` to Python. Integral numbers come back as `int`, like JSON in JS.

    A malformed `Value` (no kind set, NaN or ±Infinity, nested deeper than `MAX_DEPTH`)
    raises `InvalidArgument` naming where it is; `depth` is how deep `v` sits in what is
    being read (the limit counts from the top).
    """
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        return v.string_value
    if kind == "number_value":
        n = v.number_value
        if n.is_integer():
            return int(n) if abs(n) <= MAX_SAFE_INT else n
        if not math.isfinite(n):  # a double can hold them, JSON cannot
            raise InvalidArgument(f"{where}: {n!r} is not a JSON number")
        return n
    if kind == "bool_value":
        return v.bool_value
    if kind == "null_value":
        return None
    if kind == "struct_value" or kind == "list_value":
        if depth == MAX_DEPTH:
            raise InvalidArgument(_too_deep(where))
        if kind == "list_value":
            values = v.list_value.values
            return [
                from_value(x, where=f"{where}[{i}]", depth=depth + 1) for i, x in enumerate(values)
            ]
        fields = v.struct_value.fields
        return {
            k: from_value(x, where=f"{where}[{k!r}]", depth=depth + 1) for k, x in fields.items()
        }
    raise InvalidArgument(f"{where}: google.protobuf.Value has no kind set")


def check_depth(obj: Any, where: str) -> None:
    """`TypeError` when lists and dicts in `obj` nest deeper than `MAX_DEPTH`."""
    level = [obj]
    for _ in range(MAX_DEPTH + 1):
        level = [
            item
            for x in level
            if isinstance(x, dict | list | tuple)
            for item in (x.values() if isinstance(x, dict) else x)
        ]
        if not level:
            return
    raise TypeError(_too_deep(where))


def check_text(value: Any) -> None:
    """`ValueError` when a string in `value` (a key too) is not valid Unicode text: a lone
    UTF-16 surrogate, which JSON's `\\ud800` escapes can make and UTF-8 cannot carry."""
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) is list or type(v) is dict:
            stack.extend(v)
            stack.extend(v.values() if type(v) is dict else ())
        elif type(v) is str and not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"the JSON holds a lone UTF-16 surrogate ({v[:40]!r}): not valid Unicode text"
                ) from None
