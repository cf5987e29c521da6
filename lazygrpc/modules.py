"""`ModuleService`: serve plain Python callables and generators, sync or async alike."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from lazygrpc import broker, invoke
from lazygrpc.calls import current_call
from lazygrpc.errors import Internal, InvalidArgument, NotFound, StreamClosed
from lazygrpc.v1 import module_pb2, module_pb2_grpc
from lazygrpc.values import from_struct, from_value, to_value

if TYPE_CHECKING:
    from lazygrpc.server import Server

SERVICE_NAME = "lazygrpc.v1.ModuleService"
#: Threads for sync modules; a sync producer blocked on a full topic holds one.
#: Callers pass `contextvars.copy_context().run`, so a plain pool (no second copy) is enough.
_EXECUTOR = futures.ThreadPoolExecutor(max_workers=256, thread_name_prefix="lazygrpc-module")


def _in_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """`fn(*args)` on a module thread, in a copy of the caller's context."""
    ctx = contextvars.copy_context()
    return asyncio.get_running_loop().run_in_executor(_EXECUTOR, ctx.run, fn, *args)


#: Seconds a stream's producer gets to end by itself once its client is gone.
CLOSE_GRACE = 0.1


class _Counter:
    """Generator producers running right now, in threads or tasks (for tests and stats).

    A list's `append` and `pop` are each one atomic operation: a count without a lock."""

    __slots__ = ("_marks", "enter")

    def __init__(self) -> None:
        self._marks: list[None] = []
        self.enter: Callable[[None], None] = self._marks.append  # `enter(None)`

    def leave(self) -> None:
        try:
            self._marks.pop()
        except IndexError:  # unbalanced: never raise over the error of the code that left
            pass

    @property
    def value(self) -> int:
        return len(self._marks)


_PRODUCERS = _Counter()


def active_producers() -> int:
    """How many module generators are running in this process now."""
    return _PRODUCERS.value


@dataclass(frozen=True)
class Module:
    """A served callable: its name, whether it streams, and its docstring."""

    name: str
    fn: Callable[..., Any]
    streaming: bool
    is_async: bool
    doc: str
    signature: inspect.Signature | None = None
    is_asyncgen: bool = False
    #: A plain function or method: a call binds `signature` itself before its body runs.
    binds_on_call: bool = False
    #: Parameters annotated with a JSON type (`int`, `float`, `str`, `bool`, `list`, `dict`,
    #: their generics, `X | None`): name -> accepted Python types, checked on arrival.
    arg_types: Mapping[str, tuple[type, ...]] = field(default_factory=dict)
    #: The parameter the one positional input binds to.
    first: str | None = None

    def check_types(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """`InvalidArgument` naming the parameter when a value is not of its annotated type."""
        checks = self.arg_types
        # A value off the wire is of an exact JSON type (`from_value`): the common case is one
        # tuple scan; `_check_type` also knows subclasses and says what is wrong.
        if (
            args
            and (accepted := checks.get(self.first)) is not None  # type: ignore[arg-type]
            and type(args[0]) not in accepted
        ):
            _check_type(self.name, self.first, args[0], accepted)  # type: ignore[arg-type]
        for key, value in kwargs.items():
            accepted = checks.get(key)
            if accepted is not None:
                _check_type(self.name, key, value, accepted)

    def check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """`InvalidArgument` naming the module when the call does not fit its signature."""
        if self.signature is not None:
            try:
                self.signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise InvalidArgument(f"module {self.name!r}: {exc}") from None

    def start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call an `async def` or generator module: its coroutine or generator object.

        Python binds the arguments before any of the body runs, so a call that does not fit
        the signature fails right here, and `check_arguments` (which costs a signature bind
        on every call) only runs to tell that failure from a TypeError of a wrapper's own.
        """
        if not self.binds_on_call:  # a wrapper: its own body would run first
            self.check_arguments(args, kwargs)
            return self.fn(*args, **kwargs)
        try:
            return self.fn(*args, **kwargs)
        except TypeError:
            self.check_arguments(args, kwargs)
            raise

    @classmethod
    def of(cls, name: str, fn: Callable[..., Any]) -> Module:
        if not callable(fn):
            raise TypeError(f"module {name!r}: {fn!r} is not callable")
        agen = inspect.isasyncgenfunction(fn) or invoke.is_async_stream(fn)
        gen = inspect.isgeneratorfunction(fn)
        first, arg_types = _type_checks(fn)
        return cls(
            name=name,
            fn=fn,
            streaming=agen or gen,
            is_async=agen or inspect.iscoroutinefunction(fn),
            doc=inspect.getdoc(fn) or "",
            signature=_signature(fn),
            is_asyncgen=agen,
            binds_on_call=(inspect.isfunction(fn) or inspect.ismethod(fn))
            and not hasattr(fn, "__wrapped__")
            and not hasattr(fn, "__signature__"),
            arg_types=arg_types,
            first=first,
        )


#: What a JSON value arrives as (`lazygrpc.values.from_value`), by annotation.
_JSON_TYPES: dict[Any, tuple[type, ...]] = {
    int: (int,),
    float: (int, float),
    str: (str,),
    bool: (bool,),
    list: (list,),
    dict: (dict,),
}


def _accepted(annotation: Any) -> tuple[type, ...] | None:
    """The Python types a JSON value for `annotation` may arrive as; None: not checked."""
    if annotation in _JSON_TYPES:
        return _JSON_TYPES[annotation]
    origin = typing.get_origin(annotation)
    if origin in (list, dict):
        return _JSON_TYPES[origin]
    if origin in (typing.Union, types.UnionType):
        accepted: tuple[type, ...] = ()
        for member in typing.get_args(annotation):
            one = (type(None),) if member is type(None) else _accepted(member)
            if one is None:
                return None  # a member not checked: the union is not either
            accepted += one
        return accepted
    return None


def _type_checks(fn: Callable[..., Any]) -> tuple[str | None, dict[str, tuple[type, ...]]]:
    """(the parameter a positional input binds to, name -> accepted types) of `fn`."""
    try:
        params = list(inspect.signature(fn, eval_str=True).parameters.values())
    except Exception:  # no signature, or annotations that do not evaluate: nothing checked
        return None, {}
    first = next(
        (p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)), None
    )
    checks: dict[str, tuple[type, ...]] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        accepted = _accepted(p.annotation)
        if accepted is not None:
            if p.default is None and type(None) not in accepted:
                accepted += (type(None),)  # `n: int = None`: None is its default anyway
            checks[p.name] = accepted
    return first, checks


def _check_type(module: str, name: str, value: Any, accepted: tuple[type, ...]) -> None:
    # bool is an int in Python but not in JSON: true is no number.
    if isinstance(value, accepted) and (type(value) is not bool or bool in accepted):
        return
    names = " or ".join("null" if t is type(None) else t.__name__ for t in accepted)
    raise InvalidArgument(
        f"module {module!r}: argument {name!r} must be {names}, got {_json_kind(value)}"
    )


def _json_kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C callables have none
        return None


def _as_modules(
    modules: Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]],
) -> dict[str, Module]:
    items = (
        modules.items() if isinstance(modules, Mapping) else ((fn.__name__, fn) for fn in modules)
    )
    out: dict[str, Module] = {}
    for name, fn in items:
        if name in out:
            raise ValueError(f"module name {name!r} is used twice")
        out[name] = Module.of(name, fn)
    if not out:
        raise ValueError("no modules to serve")
    return out


def _decode(request: module_pb2.CallRequest) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args = (from_value(request.input, where="input"),) if request.HasField("input") else ()
    kwargs = from_struct(request.kwargs, where="kwargs") if request.HasField("kwargs") else {}
    return args, kwargs


def _encode(module: Module, value: Any) -> Any:
    try:
        return to_value(value, where=f"output of module {module.name!r}")
    except TypeError as exc:
        raise Internal(str(exc)) from None


async def _close_async(gen: Any) -> None:
    try:
        await gen.aclose()
    finally:
        _PRODUCERS.leave()


async def _done(result: Any) -> Any:
    return result


async def _failed(exc: BaseException) -> Any:
    raise exc


#: How much of a stream's deltas is kept to build its `result`; past it the result is null.
AGGREGATE_LIMIT = 8 << 20


class _Aggregate:
    """A streaming module's result when it returns nothing: its text, or its deltas.

    Bounded: a stream longer than `AGGREGATE_LIMIT` still streams every delta, but its
    result is null (documented), so an endless generator does not grow memory.
    """

    __slots__ = ("_items", "_size", "source")

    def __init__(self, source: str = "") -> None:
        self._items: list[Any] | None = []
        self._size = 0
        self.source = source

    def item(self, delta: Any) -> broker.Item:
        """Keep `delta` and make it a topic item of this module."""
        self.append(delta)
        return broker.make_item(broker.DELTA, self.source, delta)

    def append(self, delta: Any) -> None:
        if self._items is None:
            return
        self._size += len(delta) if type(delta) is str else 16 + len(str(delta))
        if self._size > AGGREGATE_LIMIT:
            self._items = None
        else:
            self._items.append(delta)

    def value(self) -> Any:
        items = self._items
        if items is None:
            return None
        if all(type(d) is str for d in items):
            return "".join(items)
        return items


class ModuleServicer(module_pb2_grpc.ModuleServiceServicer):
    """Implementation of `lazygrpc.v1.ModuleService` over a set of callables."""

    def __init__(
        self,
        modules: Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]],
        *,
        topic_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.modules = _as_modules(modules)
        self.topic_options = dict(topic_options or {})
        self._topic_args = broker.topic_args(self.topic_options)

    def default_name(self) -> str:
        return next(iter(self.modules)) if len(self.modules) == 1 else "modules"

    def _lookup(self, request: module_pb2.CallRequest) -> Module:
        module = self.modules.get(request.module)
        if module is None:
            known = ", ".join(sorted(self.modules))
            raise NotFound(f"module {request.module!r} not found (this server has: {known})")
        scope = current_call()
        if scope is not None:
            scope.method = module.name
        return module

    async def Call(
        self, request: module_pb2.CallRequest, context: grpc.aio.ServicerContext
    ) -> module_pb2.CallResponse:
        module = self._lookup(request)
        args, kwargs = _decode(request)
        if module.arg_types:
            module.check_types(args, kwargs)
        if module.streaming:
            module.check_arguments(args, kwargs)
            result = await self._run(module, args, kwargs, None)
        elif module.is_async:
            result = await module.start(args, kwargs)
        else:  # `start` tells arguments that do not fit from the body's own TypeError
            result = await _in_thread(module.start, args, kwargs)
        return module_pb2.CallResponse(output=_encode(module, result))

    async def Stream(
        self, request: module_pb2.CallRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        module = self._lookup(request)
        args, kwargs = _decode(request)
        if module.arg_types:
            module.check_types(args, kwargs)
        if not module.is_asyncgen:  # an async generator's call checks them (`_primed`)
            module.check_arguments(args, kwargs)
        scope = current_call()
        topic = (
            broker.BROKER.open_topic(
                broker.Topic(broker.BROKER, asyncio.get_running_loop(), *self._topic_args)
            )
            if self._topic_args is not None
            else broker.BROKER.open(**self.topic_options)
        )
        if scope is not None:
            scope.topic = topic
        producer: asyncio.Future[Any] | None = None
        first = broker.QUEUED
        if module.is_asyncgen:
            # Primed up to its first delta on this task; the rest starts once that is written.
            first, pending = await self._primed(module, args, kwargs, topic)
        else:
            pending = self._run(module, args, kwargs, topic)
            producer = asyncio.ensure_future(pending)

        seq = 0
        try:
            if first is not broker.QUEUED:
                event = module_pb2.Event(seq=0, source=module.name)
                event.delta.string_value = first
                yield event
                seq = 1
                if producer is None:
                    producer = asyncio.ensure_future(pending)
            while (item := await topic.get()) is not None:
                kind, source, payload, _ = item
                event = module_pb2.Event(seq=seq, source=source)
                if isinstance(payload, str):
                    event.delta.string_value = payload  # text is only ever a delta
                elif kind == broker.DELTA:
                    event.delta.CopyFrom(payload)
                else:
                    event.intermediate.CopyFrom(payload)
                yield event
                seq += 1
                if producer is None:
                    producer = asyncio.ensure_future(pending)
            if producer is None:
                producer = asyncio.ensure_future(pending)
            result = await producer
            yield module_pb2.Event(seq=seq, source=module.name, result=_encode(module, result))
        finally:
            broker.BROKER.close(topic)
            if producer is None:  # never started: it still has to wind its generator down
                producer = asyncio.ensure_future(pending)
            task = producer
            if not task.done():
                # Closing the topic woke a producer waiting on it with StreamClosed: let it end
                # by itself, so that it sees StreamClosed (not CancelledError) and its cleanup
                # runs now; only a producer busy elsewhere is cancelled after the grace.
                await asyncio.wait({task}, timeout=CLOSE_GRACE)
            if task.done() and not task.cancelled():
                task.exception()  # already raised through the topic; mark it retrieved
            elif not task.done():
                task.cancel()
                # The producer may be a thread blocked in put(); close() above unblocked it.
                await asyncio.gather(task, return_exceptions=True)

    async def _primed(
        self, module: Module, args: tuple[Any, ...], kwargs: dict[str, Any], topic: broker.Topic
    ) -> Any:
        """Start an async generator module on this task up to its first delta (`prime`).

        Returns that delta when it can go out at once (else `broker.QUEUED`), and the
        coroutine that runs the rest as the producer."""
        try:
            gen = module.start(args, kwargs)
        except BaseException:
            broker.BROKER.close(topic)
            raise
        _PRODUCERS.enter(None)
        deltas = _Aggregate(module.name)
        try:
            first = await broker.prime(topic, gen, deltas.item)
            if first is not broker.QUEUED and first is not broker.ENDED:
                if type(first) is str:
                    deltas.append(first)
                else:  # sent through the topic, which converts (and checks) the value
                    broker.push_front(topic, deltas.item(first))
                    first = broker.QUEUED
        except BaseException as exc:
            topic.finish(exc)
            await _close_async(gen)
            return broker.QUEUED, _failed(exc)
        if first is broker.ENDED:
            topic.finish()
            await _close_async(gen)
            return broker.QUEUED, _done(deltas.value())
        return first, self._run(module, args, kwargs, topic, gen=gen, deltas=deltas)

    async def _run(
        self,
        module: Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        topic: broker.Topic | None,
        *,
        gen: Any = None,
        deltas: _Aggregate | None = None,
    ) -> Any:
        """Run a module to completion, putting its deltas into `topic`; returns the result.

        `gen` and `deltas` continue an async generator `_primed` already started. Errors end
        the topic after what was already queued.
        """
        try:
            if module.is_asyncgen:
                if gen is None:
                    gen = module.fn(*args, **kwargs)
                    _PRODUCERS.enter(None)
                result = await self._drive_async(module, gen, deltas or _Aggregate(), topic)
            elif module.streaming:
                result = await _in_thread(self._drive_sync, module, args, kwargs, topic)
            elif module.is_async:
                result = await module.fn(*args, **kwargs)
            else:
                result = await _in_thread(module.start, args, kwargs)
        except StreamClosed:
            raise
        except BaseException as exc:
            if topic is not None:
                topic.finish(exc)
            raise
        if topic is not None:
            topic.finish()
        return result

    @staticmethod
    async def _drive_async(
        module: Module, gen: Any, deltas: _Aggregate, topic: broker.Topic | None
    ) -> Any:
        """Drive a started async generator (counted in `_PRODUCERS` by the caller)."""
        try:
            async for delta in gen:
                deltas.append(delta)
                if topic is not None:
                    try:
                        await topic.aput(broker.make_item(broker.DELTA, module.name, delta))
                    except StreamClosed as closed:
                        # The generator is the producer: it sees StreamClosed at its `yield`.
                        with contextlib.suppress(StreamClosed, StopAsyncIteration):
                            await gen.athrow(closed)
                        raise
        finally:
            await _close_async(gen)
        return deltas.value()

    @staticmethod
    def _drive_sync(
        module: Module, args: tuple[Any, ...], kwargs: dict[str, Any], topic: broker.Topic | None
    ) -> Any:
        deltas = _Aggregate()
        gen = module.fn(*args, **kwargs)
        _PRODUCERS.enter(None)
        try:
            while True:
                try:
                    delta = next(gen)
                except StopIteration as stop:
                    return stop.value if stop.value is not None else deltas.value()
                deltas.append(delta)
                if topic is not None:
                    try:
                        topic.put(broker.make_item(broker.DELTA, module.name, delta))
                    except StreamClosed as closed:
                        # The generator is the producer: it sees StreamClosed at its `yield`.
                        with contextlib.suppress(StreamClosed, StopIteration):
                            gen.throw(closed)
                        raise
        finally:
            try:
                gen.close()
            finally:
                _PRODUCERS.leave()

    async def ListModules(
        self, request: module_pb2.ListModulesRequest, context: grpc.aio.ServicerContext
    ) -> module_pb2.ListModulesResponse:
        return module_pb2.ListModulesResponse(
            modules=[
                module_pb2.ModuleInfo(name=m.name, streaming=m.streaming, doc=m.doc)
                for m in self.modules.values()
            ]
        )


def add_module_service(server: Server, servicer: ModuleServicer) -> None:
    server.add_service(SERVICE_NAME, module_pb2_grpc.add_ModuleServiceServicer_to_server, servicer)


def load_target(spec: str) -> tuple[str, Callable[..., Any]]:
    """Resolve `path/to/file.py:name` or `pkg.module:name` to (name, callable)."""
    import importlib
    import importlib.util
    from pathlib import Path

    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"module spec {spec!r} must look like FILE.py:NAME or pkg.module:NAME")
    if target.endswith(".py"):
        path = Path(target).resolve()
        if not path.is_file():
            raise ValueError(f"module spec {spec!r}: no such file {str(path)!r}")
        mod_name = f"lazygrpc_user_{path.stem}_{abs(hash(path)) & 0xFFFF:x}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ValueError(f"module spec {spec!r}: cannot load {str(path)!r}")
        mod = importlib.util.module_from_spec(loader_spec)
        import sys

        sys.modules[mod_name] = mod
        loader_spec.loader.exec_module(mod)
    else:
        mod = importlib.import_module(target)
    try:
        fn = getattr(mod, attr)
    except AttributeError:
        raise ValueError(f"module spec {spec!r}: {target!r} has no attribute {attr!r}") from None
    return attr, fn
