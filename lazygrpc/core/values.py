"""Python values ⇄ `google.protobuf.Value`: JSON-like data only, never pickle."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import struct_pb2

from lazygrpc.core.errors import InvalidArgument

#: Integers beyond this lose precision as a double, so they are refused instead.
MAX_SAFE_INT = 2**53

JSON = None | bool | int | float | str | list["JSON"] | dict[str, "JSON"]


def to_value(obj: Any, *, where: str = "value") -> struct_pb2.Value:
    """Convert JSON-like Python data to a `Value`; `TypeError` names what cannot be converted."""
    v = struct_pb2.Value()
    _fill(v, obj, where)
    return v


def fill_value(v: struct_pb2.Value, obj: Any, *, where: str = "value") -> None:
    """`to_value` into an existing `Value` (a message's field: no copy)."""
    _fill(v, obj, where)


def fill_struct(s: struct_pb2.Struct, obj: Mapping[str, Any], *, where: str = "kwargs") -> None:
    """A str-keyed mapping into an existing `Struct`."""
    for key, item in obj.items():
        _fill(s.fields[key], item, f"{where}[{key!r}]")


def fill_list(values: struct_pb2.ListValue, obj: Sequence[Any], *, where: str = "args") -> None:
    """A sequence into an existing `ListValue`."""
    for i, item in enumerate(obj):
        _fill(values.values.add(), item, f"{where}[{i}]")
    if not obj:
        values.SetInParent()


def _fill(v: struct_pb2.Value, obj: Any, where: str) -> None:
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
        fields = v.struct_value.fields
        for key, item in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: dict key {key!r} is not a string")
            _fill(fields[key], item, f"{where}[{key!r}]")
        if not obj:
            v.struct_value.SetInParent()
    elif isinstance(obj, list | tuple):
        fill_list(v.list_value, obj, where=where)
    else:
        raise TypeError(f"{where}: {type(obj).__name__} is not JSON-like (got {obj!r:.60})")


def from_value(v: struct_pb2.Value, *, where: str = "value") -> Any:
    """Convert a `Value` to Python. Integral numbers come back as `int`, like JSON in JS.

    A `Value` with no kind set is malformed: `InvalidArgument` names where it is.
    """
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        return v.string_value
    if kind == "number_value":
        n = v.number_value
        return int(n) if n.is_integer() and abs(n) <= MAX_SAFE_INT else n
    if kind == "bool_value":
        return v.bool_value
    if kind == "null_value":
        return None
    if kind == "struct_value":
        return from_struct(v.struct_value, where=where)
    if kind == "list_value":
        return from_list(v.list_value, where=where)
    raise InvalidArgument(f"{where}: google.protobuf.Value has no kind set")


def from_list(values: struct_pb2.ListValue, *, where: str = "args") -> list[Any]:
    """Convert a `ListValue` to a list."""
    return [from_value(x, where=f"{where}[{i}]") for i, x in enumerate(values.values)]


def from_struct(s: struct_pb2.Struct, *, where: str = "kwargs") -> dict[str, Any]:
    """Convert a `Struct` to a dict."""
    return {k: from_value(x, where=f"{where}[{k!r}]") for k, x in s.fields.items()}
