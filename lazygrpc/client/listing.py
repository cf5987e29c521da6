"""`lazygrpc list`: a server's modules and their signatures, read from `ListModules`.

The signature is rendered from the JSON Schemas the server sends (docs/signatures.md), so
it reads the same for a server written in any language:

    add(a: integer, b: integer = 2) -> integer
    words(text: string) -> stream of string
"""

from __future__ import annotations

import json
from typing import Any

import grpc

from lazygrpc.client import channels
from lazygrpc.v1 import module_pb2, module_pb2_grpc


def list_modules(url: str, timeout: float | None = 10.0) -> list[module_pb2.ModuleInfo]:
    """The modules a server at `grpc://HOST:PORT` serves (only `/MODULE` when the URL names
    one: `LookupError` when the server has no such module). `grpc.RpcError` as grpc raises."""
    target, module = channels.parse_url(url)
    with grpc.insecure_channel(target) as channel:
        stub = module_pb2_grpc.ModuleServiceStub(channel)
        infos = list(stub.ListModules(module_pb2.ListModulesRequest(), timeout=timeout).modules)
    if module:
        infos = [m for m in infos if m.name == module]
        if not infos:
            raise LookupError(f"{target} serves no module {module!r}")
    return infos


def as_json(info: module_pb2.ModuleInfo) -> dict[str, Any]:
    """One module as a JSON object, its schemas parsed (None where the server sent none)."""
    return {
        "name": info.name,
        "streaming": info.streaming,
        "doc": info.doc,
        "params": _parse(info.params_schema),
        "result": _parse(info.result_schema),
        "delta": _parse(info.delta_schema),
        "signature": signature(info),
    }


def signature(info: module_pb2.ModuleInfo) -> str:
    """`name(param: type = default, ...) -> result` from a module's schemas."""
    params = _parse(info.params_schema)
    if params is None:  # a server that does not send schemas
        return f"{info.name}(...)" + (" -> stream" if info.streaming else "")
    defs = params.get("$defs", {})
    parts = []
    for name, schema in params.get("properties", {}).items():
        text = f"{name}: {type_text(schema, defs)}"
        if "default" in schema:
            text += f" = {json.dumps(schema['default'], ensure_ascii=False)}"
        parts.append(text)
    extra = params.get("additionalProperties", False)
    if extra is not False:
        parts.append(f"**kwargs: {type_text(extra if extra is not True else {}, defs)}")
    result = _parse(info.result_schema) or {}
    if info.streaming:
        delta = _parse(info.delta_schema) or {}
        returns = f"stream of {type_text(delta, delta.get('$defs', {}))}"
    else:
        returns = type_text(result, result.get("$defs", {}))
    return f"{info.name}({', '.join(parts)}) -> {returns}"


def type_text(schema: Any, defs: dict[str, Any]) -> str:
    """A short name for what a JSON Schema accepts: `array[integer]`, `Point | null`."""
    if not isinstance(schema, dict) or not schema or schema.keys() <= {"$schema", "$defs"}:
        return "any"
    if "$ref" in schema:
        return str(schema["$ref"]).rpartition("/")[2]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(type_text(s, defs) for s in schema[key])
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    if "enum" in schema:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(type_text({**schema, "type": k}, defs) for k in kind)
    if kind == "array":
        if "prefixItems" in schema:
            return "[" + ", ".join(type_text(s, defs) for s in schema["prefixItems"]) + "]"
        items = schema.get("items")
        return f"array[{type_text(items, defs)}]" if items else "array"
    if kind == "object":
        if "title" in schema:
            return str(schema["title"])
        values = schema.get("additionalProperties")
        return (
            f"object[string, {type_text(values, defs)}]" if isinstance(values, dict) else "object"
        )
    return str(kind) if kind else "any"


def _parse(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
