"""Mesh files (`lazygrpc up -f mesh.yaml`, and the bundled demo): services as the
supervisor's children (docs/mesh-file.md).

    services:
      leaf:
        serve: [leaf.py:upper]          # module specs, as for `lazygrpc serve`
        port: 50100
      mid:
        serve: [mid.py:shout]
        port: auto                      # a free port, kept across restarts
        env: {LEAF_URL: "grpc://${leaf}/upper"}
        after: [leaf]                   # started once leaf is SERVING (default: the ones above)

A service runs `lazygrpc serve SPECS` (`serve:`), `lazygrpc serve-model ARGS`
(`serve-model: [--backend, markov]`) or `lazygrpc edge ARGS` (`edge: [--upstream=…]`), on
`host` (default 127.0.0.1) and `port`, with `args:` added to its command line. In strings,
`${NAME}` is service NAME's `host:port`, else the environment variable NAME
(`${NAME:-default}` when unset). `requires: [EXTRA]` leaves a service out, said so, when
that lazygrpc extra is not installed; `note:` is shown in the status table; a top-level
`try:` lists commands `up` prints while the mesh runs. Nothing here runs a process:
`load` only builds the `Mesh` (`lazygrpc.commands.up` runs it).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from lazygrpc.supervisor import Child, python_argv

_KINDS = ("serve", "serve-model", "edge")
_KEYS = {*_KINDS, "port", "host", "env", "after", "args", "requires", "note"}
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.-]*)(?::-([^}]*))?\}")


class MeshFileError(ValueError):
    """A mesh file that cannot run: the message names the file, the service and the key."""


@dataclass(frozen=True)
class Options:
    """What `up` adds to every service of a mesh: flags for each grpc server (`--otel`, the
    log flags), the first port of `port: auto` services and of their `/metrics`, and what
    `${NAME}` means when NAME is not a service (the environment, and what `up` adds)."""

    server_flags: Sequence[str] = ()
    base_port: int = 0
    metrics_port: int | None = None
    variables: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


@dataclass(frozen=True)
class Service:
    """One service as the status table shows it."""

    name: str
    kind: str
    url: str
    note: str = ""
    metrics_url: str = ""


@dataclass
class Mesh:
    """A loaded mesh: the children to run, in start order, and what `up` prints of them."""

    children: list[Child]
    services: list[Service]
    try_commands: list[str]
    left_out: list[str]  # one line per service left out (`requires:`)


def load(path: str | Path, options: Options = Options()) -> Mesh:
    """The mesh a file describes; `MeshFileError` naming what is wrong."""
    import yaml

    where = str(path)
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise MeshFileError(f"{where}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise MeshFileError(
            f"{where}:{line} is not YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    services = doc.get("services") if isinstance(doc, dict) else None
    if not isinstance(services, dict) or not services:
        raise MeshFileError(f"{where}: needs a `services:` mapping of names to services")
    specs: dict[str, dict[str, Any]] = {}
    left_out: list[str] = []
    for name, spec in services.items():
        spec = _checked(f"{where}: service {name!r}", spec)
        missing = _missing_extras(f"{where}: service {name!r}", spec.get("requires", []))
        if missing:
            extras = ",".join(missing)
            left_out.append(f"{name}: left out (pip install 'lazygrpc[{extras}]' adds it)")
        else:
            specs[str(name)] = spec
    addresses = _addresses(where, specs, options)
    scope = _Scope(addresses, options.variables, set(map(str, services)) - set(specs))
    mesh = Mesh([], [], [], left_out)
    grpc_index = 0
    for name, spec in specs.items():
        metrics_port = None
        if spec["kind"] != "edge" and options.metrics_port is not None:
            metrics_port = _pick(options.metrics_port, grpc_index)
            grpc_index += 1
        child, service = _child(
            f"{where}: service {name!r}", name, spec, addresses[name], mesh.children, scope,
            options, metrics_port,
        )  # fmt: skip
        mesh.children.append(child)
        mesh.services.append(service)
    _check_order(where, mesh.children)
    for line in _strings(where, "try", doc.get("try", [])):
        try:
            mesh.try_commands.append(scope.expand(f"{where}: `try:`", line))
        except _LeftOut:
            pass  # a command for a service that is not running
    return mesh


def _checked(where: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise MeshFileError(f"{where}: must be a mapping (serve:, port:, ...)")
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise MeshFileError(f"{where}: unknown key {unknown[0]!r} (known: {sorted(_KEYS)})")
    kinds = [k for k in _KINDS if k in spec]
    if len(kinds) != 1:
        raise MeshFileError(
            f"{where}: give one of `serve: [SPECS]`, `serve-model: [ARGS]` or `edge: [ARGS]`"
        )
    port = spec.get("port")
    if port != "auto" and (type(port) is not int or not 0 < port < 65536):
        raise MeshFileError(f"{where}: `port:` must be a port number or auto, got {port!r}")
    return {**spec, "kind": kinds[0]}


def _missing_extras(where: str, extras: Any) -> list[str]:
    """The lazygrpc extras among `extras` with a requirement that is not installed."""
    names = _strings(where, "requires", extras)
    requirements = metadata.requires("lazygrpc") or []
    missing = []
    for extra in names:
        marker = re.compile(rf"""extra\s*==\s*["']{re.escape(extra)}["']""")
        needed = [r for r in requirements if marker.search(r)]
        if not needed:
            raise MeshFileError(f"{where}: `requires:` names {extra!r}, not a lazygrpc extra")
        for requirement in needed:
            dist = re.match(r"[A-Za-z0-9._-]+", requirement)
            try:
                metadata.distribution(dist.group() if dist else requirement)
            except metadata.PackageNotFoundError:
                missing.append(extra)
                break
    return missing


def _pick(base: int, index: int) -> int:
    """Port `base + index`, or a free one when `base` is 0 (kept for the mesh's life)."""
    if base:
        return base + index
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _addresses(where: str, specs: dict[str, dict[str, Any]], options: Options) -> dict[str, str]:
    """Each service's `host:port`, `port: auto` ones numbered from `options.base_port`."""
    out: dict[str, str] = {}
    auto = 0
    for name, spec in specs.items():
        port = spec["port"]
        if port == "auto":
            port, auto = _pick(options.base_port, auto), auto + 1
        host = spec.get("host", "127.0.0.1")
        if not isinstance(host, str):
            raise MeshFileError(f"{where}: service {name!r}: `host:` must be a string")
        address = f"{host}:{port}"
        if address in out.values():
            raise MeshFileError(f"{where}: two services on one address: {address}")
        out[name] = address
    return out


class _LeftOut(LookupError):
    """A string names a service that was left out (`requires:`)."""


@dataclass
class _Scope:
    """What `${NAME}` means: a service's address, else an environment variable."""

    addresses: Mapping[str, str]
    variables: Mapping[str, str]
    left_out: set[str]

    def expand(self, where: str, text: str) -> str:
        def one(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.addresses:
                return _loopback(self.addresses[name])
            if name in self.left_out:
                raise _LeftOut(name)
            value = self.variables.get(name) or default
            if value is None:
                raise MeshFileError(f"{where}: ${{{name}}} is neither a service nor a set variable")
            return value

        return _REFERENCE.sub(one, text)


def _loopback(address: str) -> str:
    """`address` as a client on this host dials it (a wildcard bind is reached on loopback)."""
    host, _, port = address.rpartition(":")
    return f"127.0.0.1:{port}" if host in ("0.0.0.0", "::", "[::]") else address


def _child(
    where: str,
    name: str,
    spec: dict[str, Any],
    address: str,
    before: list[Child],
    scope: _Scope,
    options: Options,
    metrics_port: int | None,
) -> tuple[Child, Service]:
    kind = spec["kind"]

    def strings(key: str, value: Any) -> list[str]:
        try:
            return [scope.expand(f"{where}: `{key}:`", s) for s in _strings(where, key, value)]
        except _LeftOut as exc:
            raise MeshFileError(
                f"{where}: `{key}:` names service {exc}, which is left out"
            ) from None

    words = strings(kind, spec[kind])
    env = spec.get("env", {})
    if not isinstance(env, Mapping) or not all(isinstance(k, str) for k in env):
        raise MeshFileError(f"{where}: `env:` must map names to values")
    host, _, port = address.rpartition(":")
    flags = [] if kind == "edge" else [*options.server_flags]
    if metrics_port is not None:
        flags += ["--metrics-port", str(metrics_port)]
    argv = python_argv(
        kind, *words, "--name", name, "--host", host, "--port", port,
        *strings("args", spec.get("args", [])), *flags,
    )  # fmt: skip
    after = [a for a in _strings(where, "after", spec.get("after", [c.name for c in before]))
             if a not in scope.left_out]  # fmt: skip
    target = _loopback(address)
    child = Child(
        name,
        argv,
        {str(k): strings("env", [v])[0] for k, v in env.items()},
        health_target=f"http://{target}/health" if kind == "edge" else target,
        stdout=False,  # a server's stdout is its address, which the status table shows
        after=after,
    )
    if kind == "serve":
        modules = [w.rpartition(":")[2] for w in words]
        url = f"grpc://{target}/{modules[0]}" if len(modules) == 1 else f"grpc://{target}"
    else:
        url = f"{'http' if kind == 'edge' else 'grpc'}://{target}"
    metrics_url = ""
    if metrics_port is not None:
        metrics_url = f"http://{_loopback(f'{host}:{metrics_port}')}/metrics"
    return child, Service(name, kind, url, str(spec.get("note", "")), metrics_url)


def _strings(where: str, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise MeshFileError(f"{where}: `{key}:` must be a list of strings, got {value!r}")
    return [str(v) for v in value]


def _check_order(where: str, children: list[Child]) -> None:
    names = [c.name for c in children]
    started: set[str] = set()
    pending = list(children)
    while pending:  # every `after` must come first: no cycle, no unknown name
        ready = [c for c in pending if set(c.after) <= started]
        if not ready:
            waiting = {c.name: [a for a in c.after if a not in started] for c in pending}
            unknown = sorted({a for c in pending for a in c.after} - set(names))
            why = f"unknown services {unknown!r}" if unknown else "a cycle"
            raise MeshFileError(f"{where}: `after:` names {why}: {waiting!r}")
        started.update(c.name for c in ready)
        pending = [c for c in pending if c not in ready]
