"""`lazygrpc up -f mesh.yaml`: your own services, one process each, under the supervisor.

    services:
      leaf:
        serve: [leaf.py:upper]          # module specs, as for `lazygrpc serve`
        port: 50100
      mid:
        serve: [mid.py:shout]
        port: 50101
        env: {LEAF_URL: "grpc://127.0.0.1:50100/upper"}
        after: [leaf]                   # started once leaf is SERVING (default: the ones above)

A service runs `lazygrpc serve SPECS` (`serve:`) or `lazygrpc serve-model ARGS`
(`serve-model: [--backend, markov]`), on `host` (default 127.0.0.1) and `port`, with `args:`
added to its command line (`[--workers, "2"]`, `[--max-calls, "64"]`). Each starts once the
services it comes `after` say SERVING; a child that exits is logged with its code and started
again with a backoff, and given up after a limit (`lazygrpc.supervisor`); SIGTERM or Ctrl-C
drains them all and exits 0 (docs/mesh-file.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lazygrpc.supervisor import Child, Supervisor, python_argv

_KEYS = {"serve", "serve-model", "port", "host", "env", "after", "args"}


class MeshFileError(ValueError):
    """A mesh file that cannot run: the message names the file, the service and the key."""


def load(path: str | Path, log_args: Sequence[str] = ()) -> list[Child]:
    """The children a mesh file describes, in the order they start."""
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
    children: list[Child] = []
    for name, spec in services.items():
        children.append(_child(f"{where}: service {name!r}", str(name), spec, children, log_args))
    _check_order(where, children)
    return children


def _child(where: str, name: str, spec: Any, before: list[Child], log_args: Sequence[str]) -> Child:
    if not isinstance(spec, dict):
        raise MeshFileError(f"{where}: must be a mapping (serve:, port:, ...)")
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise MeshFileError(f"{where}: unknown key {unknown[0]!r} (known: {sorted(_KEYS)})")
    if ("serve" in spec) == ("serve-model" in spec):
        raise MeshFileError(f"{where}: give one of `serve: [SPECS]` or `serve-model: [ARGS]`")
    command = "serve" if "serve" in spec else "serve-model"
    words = _strings(where, command, spec[command])
    port = spec.get("port")
    if type(port) is not int or not 0 < port < 65536:
        raise MeshFileError(f"{where}: `port:` must be a port number, got {port!r}")
    host = spec.get("host", "127.0.0.1")
    env = spec.get("env", {})
    if not isinstance(env, Mapping) or not all(isinstance(k, str) for k in env):
        raise MeshFileError(f"{where}: `env:` must map names to values")
    after = _strings(where, "after", spec.get("after", [c.name for c in before]))
    argv = python_argv(
        command, *words, "--name", name, "--host", str(host), "--port", str(port),
        *_strings(where, "args", spec.get("args", [])), *log_args,
    )  # fmt: skip
    return Child(
        name,
        argv,
        {str(k): str(v) for k, v in env.items()},
        health_target=f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}",
        after=after,
    )


def _strings(where: str, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise MeshFileError(f"{where}: `{key}:` must be a list of strings, got {value!r}")
    return [str(v) for v in value]


def _check_order(where: str, children: list[Child]) -> None:
    names = [c.name for c in children]
    ports = [str(c.health_target) for c in children]
    if len(set(ports)) != len(ports):
        raise MeshFileError(f"{where}: two services on one address: {sorted(ports)!r}")
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


def run(path: str | Path, log_args: Sequence[str] = ()) -> int:
    """Run the mesh until SIGTERM or Ctrl-C (0), or until a child keeps dying (1)."""
    import asyncio

    children = load(path, log_args)
    supervisor = Supervisor(children)

    def table() -> None:
        pids = supervisor.pids()
        print(f"{'service':<16} {'pid':>7}  address", flush=True)
        for c in children:
            print(f"{c.name:<16} {pids.get(c.name, 0):>7}  grpc://{c.health_target}", flush=True)
        print("mesh is up (SERVING); Ctrl-C or SIGTERM stops it.", flush=True)

    return asyncio.run(supervisor.arun(on_ready=table))
