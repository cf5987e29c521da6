"""A module's signature as JSON Schema, and deep argument checks from the same annotations.

Both come from pydantic's `TypeAdapter` of each parameter's annotation (`list[int]`,
`dict[str, float]`, `Optional`, `Literal`, dataclasses, TypedDict, pydantic models, ...):
`ListModules` sends the schemas (docs/signatures.md), and a call whose argument
does not fit gets `INVALID_ARGUMENT` naming the path of the bad field before the module runs.

Values arrive as JSON, so they are checked with JSON's rules (pydantic's strict JSON mode):
`"1"` is no integer, `1` is a number, an array may fill a tuple or a set, an object a
dataclass or a model; the module gets the validated value (a dataclass instance for a
dataclass parameter). pydantic is imported only for modules that need it.
"""

from __future__ import annotations

import inspect
import json
import logging
import typing
from collections.abc import Callable, Mapping
from typing import Any

from lazygrpc.core.errors import InvalidArgument

log = logging.getLogger("lazygrpc.server.signatures")

#: The JSON Schema dialect of every schema `ListModules` sends.
DIALECT = "https://json-schema.org/draft/2020-12/schema"

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_EMPTY = inspect.Parameter.empty
_STREAM_ORIGINS = {
    "Iterator",
    "Iterable",
    "Generator",
    "AsyncIterator",
    "AsyncIterable",
    "AsyncGenerator",
}

Check = Callable[[Any], Any]


def adapter(annotation: Any) -> Any:
    """pydantic's `TypeAdapter` of `annotation`, or None when pydantic cannot take it (then
    that parameter is described as anything and checked only as deep as before)."""
    from pydantic import TypeAdapter

    try:
        return TypeAdapter(annotation)
    except Exception as exc:  # an annotation pydantic does not know (a plain class, ...)
        log.debug("no schema for %r: %s", annotation, exc)
        return None


def deep_check(module: str, name: str, annotation: Any) -> Check | None:
    """A function that validates one argument of `module` against `annotation` and returns
    the validated value, raising `InvalidArgument` with the bad field's path; built once,
    when the module is registered."""
    from pydantic import ValidationError

    found = adapter(annotation)
    if found is None:
        return None
    validate = found.validate_json

    def check(value: Any) -> Any:
        try:
            return validate(_ENCODER.encode(value), strict=True)
        except ValidationError as exc:
            raise InvalidArgument(describe(module, name, exc.errors())) from None

    return check


def describe(module: str, name: str, errors: list[Any]) -> str:
    """`module 'f': argument 'xs'[1]: expected a valid integer, got 'a'` for the first of
    pydantic's errors (and how many more there are)."""
    first = errors[0]
    path = "".join(f"[{part!r}]" for part in first["loc"])
    message = str(first["msg"])
    if message.startswith("Input should be "):
        message = "expected " + message.removeprefix("Input should be ")
    else:
        message = message[:1].lower() + message[1:]
    if first["type"] != "missing":
        message += f", got {_short(first['input'])}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"module {module!r}: argument {name!r}{path}: {message}{more}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- schemas -------------------------------------------------------------------------------


def schemas(fn: Callable[..., Any], streaming: bool) -> tuple[str, str, str]:
    """(params, result, delta) JSON Schemas of `fn` as JSON text; delta is "" unless the
    module streams. What cannot be described is `{}`: any JSON value."""
    try:
        sig = inspect.signature(fn, eval_str=True)
    except Exception:  # no signature, or annotations that do not evaluate
        return _text({"$schema": DIALECT, "type": "object"}), "{}", "{}" if streaming else ""
    params = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    extra = next((p for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD), None)
    annotations: dict[str, Any] = {p.name: p.annotation for p in params}
    if extra is not None:
        annotations["**"] = extra.annotation
    result: Any = sig.return_annotation
    delta: Any = _EMPTY
    if streaming:
        delta, result = _stream_types(result)
        annotations["delta"] = delta
    annotations["result"] = result
    described, defs = _describe_all(annotations, {"result", "delta"})
    properties: dict[str, Any] = {}
    for p in params:
        prop = dict(described[p.name])
        if p.default is not _EMPTY and _is_json(p.default):
            prop["default"] = p.default
        properties[p.name] = prop
    params_schema: dict[str, Any] = {"$schema": DIALECT, "type": "object"}
    params_schema["properties"] = properties
    required = [p.name for p in params if p.default is _EMPTY]
    if required:
        params_schema["required"] = required
    params_schema["additionalProperties"] = described["**"] if extra is not None else False
    out = [params_schema, described["result"], described["delta"] if streaming else None]
    texts = []
    for schema in out:
        if schema is None:
            texts.append("")
            continue
        schema = {"$schema": DIALECT, **schema} if schema else {}
        if defs and _uses_defs(schema):
            schema["$defs"] = defs
        texts.append(_text(schema))
    return texts[0], texts[1], texts[2]


def _describe_all(
    annotations: Mapping[str, Any], serialized: set[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each annotation's schema, with one shared `$defs` (models, dataclasses, ...)."""
    from pydantic import TypeAdapter

    out: dict[str, Any] = {}
    inputs: list[Any] = []
    for key, annotation in annotations.items():
        found = None if annotation is _EMPTY or annotation is Any else adapter(annotation)
        if found is None:
            out[key] = {}
        else:
            inputs.append((key, "serialization" if key in serialized else "validation", found))
    if not inputs:
        return out, {}
    try:
        by_key, definitions = TypeAdapter.json_schemas(inputs)
    except Exception as exc:  # a type pydantic validates but cannot describe
        log.debug("no JSON Schema for %r: %s", annotations, exc)
        return {key: {} for key in annotations}, {}
    for (key, _mode), schema in by_key.items():
        out[key] = schema
    return out, dict(definitions.get("$defs", {}))


def _stream_types(annotation: Any) -> tuple[Any, Any]:
    """(each delta's type, the result's type) of a generator's return annotation: a
    `Generator[T, S, R]` returns R when R is not None, else the deltas are aggregated (text
    joined, anything else a list)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is None or getattr(origin, "__name__", "") not in _STREAM_ORIGINS or not args:
        return _EMPTY, _EMPTY
    delta = args[0]
    named = getattr(origin, "__name__", "")
    if named == "Generator" and len(args) == 3 and args[2] is not type(None):
        return delta, args[2]
    return delta, str if delta is str else list[delta]  # type: ignore[valid-type]


def _uses_defs(schema: Any) -> bool:
    return '"$ref"' in json.dumps(schema)


def _is_json(value: Any) -> bool:
    try:
        _ENCODER.encode(value)
    except (TypeError, ValueError):
        return False
    return True


def _text(schema: Any) -> str:
    return json.dumps(schema, ensure_ascii=False, sort_keys=False, separators=(",", ":"))
