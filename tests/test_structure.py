"""The package's structure, read from its source: the layers of docs/architecture.md hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "lazygrpc"
MAX_LINES = 420
GRPC_PRIVATE = ("._cython_call", "._method_handlers", "._interceptors_task", "._metadata")

#: layer -> the layers it may import (besides itself and the generated `v1`).
ALLOWED = {
    "core": set(),
    "broker": {"core"},
    "client": {"core", "broker"},
    "server": {"core", "broker", "backends", "telemetry", "metrics"},
    "telemetry": {"core", "server", "version"},
    "metrics": {"core", "broker", "server"},
    "backends": set(),
    "version": set(),
    "edge": {"core", "client"},  # an HTTP front that is a lazygrpc client: never the server
    "demo": {"", "core", "client", "server", "broker", "backends", "version"},
    "logs": {"server"},  # the CLI's logging configuration: formats the server's records
    "commands": {
        "",
        "core",
        "client",
        "server",
        "backends",
        "demo",
        "commands",
        "logs",
        "meshfile",
        "supervisor",
    },
    "cli": {
        "core",
        "client",
        "server",
        "backends",
        "demo",
        "commands",
        "logs",
        "version",
        "edge",
        "supervisor",
        "workers",
        "meshfile",
    },
    "supervisor": set(),  # child processes: argv, env, a health target; nothing of ours
    "workers": {"supervisor"},
    "meshfile": {"supervisor"},  # `up -f`: a mesh file's services as the supervisor's children
    "__main__": {"cli"},
    "": {"core", "client", "server", "broker", "backends", "edge", "version"},  # the public API
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        name = ".".join(("lazygrpc", *path.relative_to(PKG).with_suffix("").parts))
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(name: str) -> set[str]:
    """The lazygrpc modules `name` imports, function-level imports included, `if
    TYPE_CHECKING:` blocks left out."""
    tree = ast.parse(MODULES[name].read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {t for t in map(_resolve, targets) if t and t != name}
    return out


def _layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


GRAPH = {name: _imports(name) for name in MODULES}


def test_there_are_no_import_cycles() -> None:
    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in GRAPH[todo.pop()] - seen:
                if nxt == goal:
                    return True
                seen.add(nxt)
                todo.append(nxt)
        return False

    cycles = sorted(
        name
        for name in MODULES
        # a package re-exporting its own modules is not a cycle
        if any(reaches(dep, name) for dep in GRAPH[name] if not dep.startswith(f"{name}."))
        and not name.endswith(".v1")
    )
    assert cycles == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if ".v1" not in n))
def test_each_layer_imports_only_the_layers_below_it(name: str) -> None:
    layer = _layer(name)
    wrong = {
        dep
        for dep in GRAPH[name]
        if _layer(dep) not in {layer, "v1", *ALLOWED[layer]} and dep != "lazygrpc.v1"
    }
    assert wrong == set()


def test_modules_are_small() -> None:
    sizes = {n: p.read_text().count("\n") for n, p in MODULES.items() if ".v1" not in n}
    assert {n: size for n, size in sizes.items() if size > MAX_LINES} == {}


def test_no_module_touches_another_modules_private_names() -> None:
    found = []
    for name, path in MODULES.items():
        if ".v1" in name:
            continue
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("lazygrpc")
            ):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    if full in MODULES:
                        aliases[a.asname or a.name] = full
                    elif a.name.startswith("_") and not a.name.startswith("__"):
                        found.append(f"{name} imports {full}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(f"{name}:{node.lineno} {aliases[node.value.id]}.{node.attr}")
    assert found == []


def test_grpc_internals_are_read_only_behind_the_named_seams() -> None:
    readers = {
        name
        for name, path in MODULES.items()
        if ".v1" not in name and any(p in path.read_text() for p in GRPC_PRIVATE)
    }
    assert readers == {"lazygrpc.client.seams"}
