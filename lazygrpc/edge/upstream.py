"""What the edge calls: the catalog of models and modules behind it, and the calls themselves.

Every call goes through lazygrpc's client lifecycle (`lazygrpc.client.call`, `connect()`),
so it carries the request's session, globals and deadline like any hop's call, and is
cancelled with the request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from lazygrpc.client import call, channels
from lazygrpc.client.remote import RemoteModule
from lazygrpc.core import chain
from lazygrpc.core.errors import RemoteError
from lazygrpc.core.events import Event
from lazygrpc.v1 import model_pb2, model_pb2_grpc, module_pb2, module_pb2_grpc

log = logging.getLogger("lazygrpc.edge")

#: Seconds one catalog look-up may take, and the least time between two refreshes.
CATALOG_TIMEOUT = 5.0
REFRESH_INTERVAL = 1.0
#: Codes that mean "this upstream serves no such service", not a failure.
_ABSENT = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND)


@dataclass(frozen=True)
class Entry:
    """A name the edge answers to: a model (ModelService) or a module (ModuleService)."""

    name: str
    kind: str  # "model" or "module"
    target: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def streaming(self) -> bool:
        return self.kind == "model" or bool(self.details.get("streaming"))


def upstream_target(url: str) -> str:
    """`grpc://host:port` or `dns:///name:port` → the channel target; `ValueError` names a
    URL with a module path (the edge serves every module of an upstream)."""
    target, module = channels.parse_url(url)
    if module:
        raise ValueError(
            f"edge upstream {url!r}: give the server's URL without a module "
            f"(grpc://HOST:PORT); every module it serves is reachable"
        )
    return target


def _error(service: str, method: str) -> Any:
    def build(err: grpc.RpcError) -> Exception:
        return chain.remote_error_from_rpc(err, service=service, method=method)

    return build


class Catalog:
    """The models and modules of the upstreams, asked for when first needed and again (at
    most once per `REFRESH_INTERVAL`) when a name is not found. Earlier upstreams win a
    name both serve."""

    def __init__(self, upstreams: Sequence[str]) -> None:
        if not upstreams:
            raise ValueError("the edge needs at least one upstream URL (grpc://HOST:PORT)")
        self.targets = [upstream_target(u) for u in upstreams]
        self.entries: dict[str, Entry] = {}
        self._refreshed = -REFRESH_INTERVAL
        self._lock = asyncio.Lock()

    async def lookup(self, name: str) -> Entry | None:
        """The entry called `name`, or None once a fresh look shows none."""
        entry = self.entries.get(name)
        if entry is None and time.monotonic() - self._refreshed >= REFRESH_INTERVAL:
            await self.refresh()
            entry = self.entries.get(name)
        return entry

    async def all(self) -> list[Entry]:
        """Every entry, asked afresh (rate-limited like `lookup`)."""
        if time.monotonic() - self._refreshed >= REFRESH_INTERVAL:
            await self.refresh()
        return list(self.entries.values())

    async def refresh(self) -> None:
        """Ask every upstream what it serves; `RemoteError` when none answers."""
        async with self._lock:
            found: dict[str, Entry] = {}
            failures: list[RemoteError] = []
            for target in self.targets:
                try:
                    for entry in await self._ask(target):
                        found.setdefault(entry.name, entry)
                except RemoteError as exc:
                    log.warning("edge: upstream %s did not answer: %s", target, exc)
                    failures.append(exc)
            if failures and len(failures) == len(self.targets):
                raise failures[0]
            self.entries = found
            self._refreshed = time.monotonic()

    async def _ask(self, target: str) -> list[Entry]:
        out: list[Entry] = []
        model = channels.astub(model_pb2_grpc.ModelServiceStub, target).GetModelInfo
        info = await _if_served(model, model_pb2.GetModelInfoRequest(), target, "GetModelInfo")
        if info is not None:
            params = {p.name: {"min": p.min, "max": p.max} for p in info.settable_params}
            details = {"kind": "model", "backend": info.backend, "settable_params": params}
            out.append(Entry(info.name, "model", target, details))
        modules = channels.astub(module_pb2_grpc.ModuleServiceStub, target).ListModules
        listed = await _if_served(modules, module_pb2.ListModulesRequest(), target, "ListModules")
        for m in listed.modules if listed is not None else ():
            details = {"kind": "module", "streaming": m.streaming, "doc": m.doc}
            out.append(Entry(m.name, "module", target, details))
        return out


async def _if_served(method: Any, request: Any, target: str, name: str) -> Any:
    """The answer of a catalog call, or None when the upstream serves no such service."""
    try:
        return await call.aunary(method, request, CATALOG_TIMEOUT, _error(target, name))
    except RemoteError as exc:
        if exc.code in _ABSENT:
            return None
        raise


# -- the calls ---------------------------------------------------------------------------


def generate(entry: Entry, request: model_pb2.GenerateRequest) -> AsyncIterator[Any]:
    """A model's `GenerateChunk`s as they come."""
    stub = channels.astub(model_pb2_grpc.ModelServiceStub, entry.target)
    return call.astream(stub.Generate, request, None, _error(entry.target, "Generate"))


async def complete(entry: Entry, request: model_pb2.GenerateRequest) -> Any:
    """A model's whole `GenerateResponse`."""
    stub = channels.astub(model_pb2_grpc.ModelServiceStub, entry.target)
    return await call.aunary(stub.Complete, request, None, _error(entry.target, "Complete"))


def module(entry: Entry) -> RemoteModule:
    base = entry.target if entry.target.startswith("dns:///") else f"grpc://{entry.target}"
    return RemoteModule(f"{base}/{entry.name}")


def module_stream(
    entry: Entry, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> AsyncIterator[Event]:
    """A module's events as they come (intermediates from any depth included)."""
    return module(entry).astream(*args, **kwargs)


async def module_call(entry: Entry, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A module's result."""
    return await module(entry).acall(*args, **kwargs)
