"""`ModuleService`: serve plain Python callables and generators, sync or async alike."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from typing import Any

import grpc

from lazygrpc import broker
from lazygrpc.broker.item import DELTA, INTERMEDIATE, Item
from lazygrpc.broker.topic import Topic
from lazygrpc.core import wire
from lazygrpc.core.context import CallScope, current_call
from lazygrpc.core.errors import Internal, InvalidArgument, NotFound
from lazygrpc.core.events import Event
from lazygrpc.core.values import from_list, from_struct, from_value, to_value
from lazygrpc.server.dispatch import OFF_LOOP_BYTES
from lazygrpc.server.module_spec import Module, as_modules
from lazygrpc.server.streams import Messages, Stream, drain_sync, pump
from lazygrpc.server.threads import THREADS, ModuleThreads
from lazygrpc.v1 import module_pb2, module_pb2_grpc

SERVICE_NAME = "lazygrpc.v1.ModuleService"


def _serialize_event(event: module_pb2.Event | bytes) -> bytes:
    """`Stream`'s response serializer: a relayed event is already bytes (`core.wire`)."""
    return event if isinstance(event, bytes) else event.SerializeToString()


def add_to_server(servicer: module_pb2_grpc.ModuleServiceServicer, server: Any) -> None:
    """`add_ModuleServiceServicer_to_server`, with `Stream` sending relayed events' bytes
    as they are: the same service and messages on the wire."""
    handlers = {
        "Call": grpc.unary_unary_rpc_method_handler(
            servicer.Call,
            request_deserializer=module_pb2.CallRequest.FromString,
            response_serializer=module_pb2.CallResponse.SerializeToString,
        ),
        "Stream": grpc.unary_stream_rpc_method_handler(
            servicer.Stream,
            request_deserializer=module_pb2.CallRequest.FromString,
            response_serializer=_serialize_event,
        ),
        "ListModules": grpc.unary_unary_rpc_method_handler(
            servicer.ListModules,
            request_deserializer=module_pb2.ListModulesRequest.FromString,
            response_serializer=module_pb2.ListModulesResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


#: How much of a stream's deltas is kept to build its `result`; past it the result is null.
AGGREGATE_LIMIT = 8 << 20


class _Live:
    """How many module generators are running in this process (`active_producers`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def enter(self) -> None:
        with self._lock:
            self.count += 1

    def leave(self) -> None:
        with self._lock:
            self.count -= 1


_LIVE = _Live()


def active_producers() -> int:
    """How many module generators are running in this process now."""
    return _LIVE.count


class _Output:
    """What a streaming module sends: each value it yields becomes an item of its stream,
    and its `result` when it returns nothing is its text, or its deltas.

    A module that relays another module's stream may yield that stream's `Event`s as they
    are: a delta goes on as a delta, an intermediate as an intermediate from its source,
    and a result becomes this module's result. Bounded: a stream longer than
    `AGGREGATE_LIMIT` still streams every delta, but its result is null (documented)."""

    __slots__ = ("_items", "_relayed", "_size", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self._items: list[Any] | None = []
        self._size = 0
        self._relayed: Any = _NONE

    def item(self, value: Any) -> Item | None:
        """The stream item for a yielded value (None: nothing to send)."""
        if type(value) is Event:
            if value.kind == "intermediate":
                if value.wire is not None:
                    return Item.relayed(INTERMEDIATE, value.source, value.wire)
                return Item.of(INTERMEDIATE, value.source, value.value)
            if value.kind == "result":
                self._relayed = value
                return None
            if value.wire is not None:  # a relayed delta goes on as the bytes it came in
                self._keep(value, len(value.wire))
                return Item.relayed(DELTA, self.source, value.wire)
            value = value.value
        self._keep(value, len(value) if type(value) is str else 16 + len(str(value)))
        return Item.of(DELTA, self.source, value)

    def _keep(self, delta: Any, size: int) -> None:
        """Keep a delta for the result, within its bound (a relayed one undecoded)."""
        if self._items is not None:
            self._size += size
            if self._size > AGGREGATE_LIMIT:
                self._items = None
            else:
                self._items.append(delta)

    def relayed_result(self) -> bytes | None:
        """The bytes of a relayed `result` event that is the stream's result (None: none,
        or it was made here)."""
        return None if self._relayed is _NONE else self._relayed.wire

    def result(self, returned: Any = None) -> Any:
        if returned is not None:
            return returned
        if self._relayed is not _NONE:
            return self._relayed.value
        if self._items is None:
            return None
        items = [d.value if type(d) is Event else d for d in self._items]
        if all(type(d) is str for d in items):
            return "".join(items)
        return items


_NONE = object()


_NO_SOURCE = ("", wire.source_field(""))


class _Events(Messages):
    """A module stream's items as `Event`s."""

    __slots__ = ("_relayed",)

    def __init__(self, write: Callable[[Any], Awaitable[None]], source: str) -> None:
        super().__init__(write, source)
        self._relayed = _NO_SOURCE  # the last relayed item's source, and its field

    def encode(self, item: Item) -> module_pb2.Event | bytes:
        """The next event: a relayed one is the bytes it came as, with this seq and source."""
        payload = item.payload
        seq = self.count
        self.count = seq + 1
        if isinstance(payload, bytes):
            if item.source != self._relayed[0]:
                self._relayed = (item.source, wire.source_field(item.source))
            return wire.event(payload, seq, self._relayed[1])
        event = module_pb2.Event(seq=seq, source=item.source)
        if isinstance(payload, str):
            event.delta.string_value = payload  # text is only ever a delta
        elif item.kind == DELTA:
            event.delta.CopyFrom(payload)
        else:
            event.intermediate.CopyFrom(payload)
        return event


class ModuleServicer(module_pb2_grpc.ModuleServiceServicer):
    """Implementation of `lazygrpc.v1.ModuleService` over a set of callables."""

    def __init__(
        self,
        modules: Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]],
        *,
        topic_options: Mapping[str, Any] | None = None,
        threads: ModuleThreads = THREADS,
    ) -> None:
        self.modules = as_modules(modules)
        self.topic_options = dict(topic_options or {})
        #: Where `def` modules run (`lazygrpc.server.threads`).
        self.threads = threads

    def default_name(self) -> str:
        return next(iter(self.modules)) if len(self.modules) == 1 else "modules"

    async def _arguments_of(
        self, request: module_pb2.CallRequest
    ) -> tuple[Module, tuple[Any, ...], dict[str, Any], CallScope | None]:
        """`_arguments`, on a worker thread for a request over `OFF_LOOP_BYTES`: turning a
        large request into Python values must not stall the event loop's other calls."""
        if request.ByteSize() > OFF_LOOP_BYTES:
            return await asyncio.to_thread(self._arguments, request)
        return self._arguments(request)

    def _arguments(
        self, request: module_pb2.CallRequest
    ) -> tuple[Module, tuple[Any, ...], dict[str, Any], CallScope | None]:
        """The module a request names, its checked arguments (`InvalidArgument`, `NotFound`
        otherwise) and the call's scope, which learns the module's name."""
        module = self.modules.get(request.module)
        if module is None:
            known = ", ".join(sorted(self.modules))
            raise NotFound(f"module {request.module!r} not found (this server has: {known})")
        scope = current_call()
        if scope is not None:
            scope.method = module.name
        if request.HasField("input"):
            if request.HasField("args"):
                raise InvalidArgument("a request sets input or args, not both")
            args: tuple[Any, ...] = (from_value(request.input, where="input"),)
        elif request.HasField("args"):
            args = tuple(from_list(request.args, where="args"))
        else:
            args = ()
        kwargs = from_struct(request.kwargs, where="kwargs") if request.HasField("kwargs") else {}
        if module.arg_types:
            module.check_types(args, kwargs)
        if module.deep:
            args, kwargs = module.check_deep(args, kwargs)
        return module, args, kwargs, scope

    async def Call(
        self, request: module_pb2.CallRequest, context: grpc.aio.ServicerContext
    ) -> module_pb2.CallResponse:
        module, args, kwargs, _ = await self._arguments_of(request)
        if module.streaming:
            result = await self._run(module, args, kwargs, None)
        elif module.is_async:
            result = await module.start(args, kwargs)
        else:  # `start` tells arguments that do not fit from the body's own TypeError
            result = await self.threads.run(module.start, args, kwargs)
        return module_pb2.CallResponse(output=_encode(module, result))

    async def Stream(
        self, request: module_pb2.CallRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        module, args, kwargs, scope = await self._arguments_of(request)
        topic = broker.BROKER.open(**self.topic_options)
        if scope is not None:
            scope.topic = topic
        events = _Events(context.write, module.name)
        if module.is_asyncgen:
            # Primed up to its first item on this task; the rest runs as the producer.
            output = _Output(module.name)
            try:
                gen = module.start(args, kwargs)
            except BaseException:
                topic.cancel()
                raise
            _LIVE.enter()

            # The producer is `pump` itself (one frame less to resume at every token that
            # waits); the result is the output's, once the stream ended.
            rest = partial(pump, gen, make=output.item)
            stream = Stream(topic, rest, gen=gen, make=output.item, sink=events.write)
        else:
            stream = Stream(topic, partial(self._run, module, args, kwargs), sink=events.write)
        try:
            item = await stream.first()
            while item is not None:
                yield events.encode(item)
                item = await stream.next()
            result = await stream.result()
            if module.is_asyncgen and (relayed := output.relayed_result()) is not None:
                # The result of the stream it relayed: sent on as it came, never decoded.
                yield wire.event(relayed, events.count, wire.source_field(module.name))
                return
            if module.is_asyncgen:
                result = output.result()
            yield module_pb2.Event(
                seq=events.count, source=module.name, result=_encode(module, result)
            )
        finally:
            try:
                await stream.close()
            finally:
                if module.is_asyncgen:
                    _LIVE.leave()

    async def _run(
        self, module: Module, args: tuple[Any, ...], kwargs: dict[str, Any], topic: Topic | None
    ) -> Any:
        """Run a module to completion, its deltas put into `topic` (None: none); its result."""
        if module.is_asyncgen:
            output = _Output(module.name)
            gen = module.start(args, kwargs)
            _LIVE.enter()
            try:
                await pump(gen, topic, output.item)
            finally:
                _LIVE.leave()
            return output.result()
        if module.streaming:
            return await self.threads.run(_drain_module, module, args, kwargs, topic)
        if module.is_async:
            return await module.start(args, kwargs)
        return await self.threads.run(module.start, args, kwargs)

    async def ListModules(
        self, request: module_pb2.ListModulesRequest, context: grpc.aio.ServicerContext
    ) -> module_pb2.ListModulesResponse:
        return module_pb2.ListModulesResponse(modules=[_info(m) for m in self.modules.values()])


def _info(module: Module) -> module_pb2.ModuleInfo:
    params, result, delta = module.schemas
    return module_pb2.ModuleInfo(
        name=module.name,
        streaming=module.streaming,
        doc=module.doc,
        params_schema=params,
        result_schema=result,
        delta_schema=delta,
    )


def _drain_module(
    module: Module, args: tuple[Any, ...], kwargs: dict[str, Any], topic: Topic | None
) -> Any:
    """A sync generator module, run to its end on a module thread."""
    output = _Output(module.name)
    gen = module.start(args, kwargs)
    _LIVE.enter()
    try:
        return output.result(drain_sync(gen, topic, output.item))
    finally:
        _LIVE.leave()


def _encode(module: Module, value: Any) -> Any:
    where = f"output of module {module.name!r}"
    try:
        return to_value(value, where=where)
    except TypeError as exc:
        if module.deep:  # a module that takes dataclasses or models may return them too
            from pydantic_core import to_jsonable_python

            try:
                return to_value(to_jsonable_python(value), where=where)
            except (TypeError, ValueError):
                pass
        raise Internal(str(exc)) from None
