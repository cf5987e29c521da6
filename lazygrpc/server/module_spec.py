"""Served callables: what a module is (`Module`), its argument checks, and module specs."""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from lazygrpc.core.errors import InvalidArgument
from lazygrpc.core.events import is_async_stream


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
    #: Parameters whose annotation the check above does not cover (`list[int]`, a
    #: dataclass, ...): name -> a validator built once (`lazygrpc.server.signatures`).
    deep: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)

    @cached_property
    def schemas(self) -> tuple[str, str, str]:
        """(params, result, delta) JSON Schemas as JSON text, built at the first ask."""
        from lazygrpc.server import signatures

        return signatures.schemas(self.fn, self.streaming)

    def check_deep(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments validated against their annotations, field by field
        (`InvalidArgument` naming the path of the first bad one)."""
        deep = self.deep
        if args and (check := deep.get(self.first)) is not None:  # type: ignore[arg-type]
            args = (check(args[0]),)
        for key, value in kwargs.items():
            if (check := deep.get(key)) is not None:
                kwargs[key] = check(value)
        return args, kwargs

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
        agen = inspect.isasyncgenfunction(fn) or is_async_stream(fn)
        gen = inspect.isgeneratorfunction(fn)
        first, arg_types, deep = _type_checks(name, fn)
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
            deep=deep,
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


def _covered(annotation: Any) -> bool:
    """Whether the shallow check (`_accepted`) is all there is to check of `annotation`."""
    if annotation in _JSON_TYPES or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (list, dict):
        return all(arg is Any for arg in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return all(m is type(None) or _covered(m) for m in typing.get_args(annotation))
    return False


def _type_checks(
    module: str, fn: Callable[..., Any]
) -> tuple[str | None, dict[str, tuple[type, ...]], dict[str, Callable[[Any], Any]]]:
    """(the parameter a positional input binds to, name -> accepted types, name -> deep
    validator) of `fn`. The shallow check, a tuple scan, is all `int`, `str`, `list`, ...
    need; an annotation it does not cover (`list[int]`, a dataclass) gets the deep one too,
    after it (so a value of the wrong JSON type reads the same either way)."""
    try:
        params = list(inspect.signature(fn, eval_str=True).parameters.values())
    except Exception:  # no signature, or annotations that do not evaluate: nothing checked
        return None, {}, {}
    first = next(
        (p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)), None
    )
    checks: dict[str, tuple[type, ...]] = {}
    deep: dict[str, Callable[[Any], Any]] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.annotation is p.empty:
            continue
        if not _covered(p.annotation):
            from lazygrpc.server.signatures import deep_check

            annotation = p.annotation
            if p.default is None:  # `xs: list[int] = None`: None is its default anyway
                annotation = typing.Optional[annotation]  # noqa: UP045 (any annotation)
            check = deep_check(module, p.name, annotation)
            if check is not None:
                deep[p.name] = check
        accepted = _accepted(p.annotation)
        if accepted is not None:
            if p.default is None and type(None) not in accepted:
                accepted += (type(None),)  # `n: int = None`: None is its default anyway
            checks[p.name] = accepted
    return first, checks, deep


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


def as_modules(
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


def load_targets(specs: Iterable[str]) -> dict[str, Callable[..., Any]]:
    """Resolve module specs to {name: callable}; each file or module is imported once,
    however many of its names are served. `ValueError` (one line naming the fix) for a bad
    spec, a file that is missing or does not import, a name it lacks, a name given twice."""
    loaded: dict[str, types.ModuleType] = {}
    out: dict[str, Callable[..., Any]] = {}
    given: dict[str, str] = {}
    for spec in specs:
        name, fn = load_target(spec, loaded)
        if name in out:
            raise ValueError(
                f"module name {name!r} is served twice ({given[name]} and {spec}): "
                "give each name once"
            )
        out[name], given[name] = fn, spec
    return out


def load_target(
    spec: str, loaded: dict[str, types.ModuleType] | None = None
) -> tuple[str, Callable[..., Any]]:
    """Resolve `path/to/file.py:name` or `pkg.module:name` to (name, callable); `loaded`
    keeps what was imported, by file or module name, so that it is imported once."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"module spec {spec!r} must look like FILE.py:NAME or pkg.module:NAME")
    key = str(Path(target).resolve()) if target.endswith(".py") else target
    mod = (loaded or {}).get(key)
    if mod is None:
        mod = _import(spec, target)
        if loaded is not None:
            loaded[key] = mod
    try:
        fn = getattr(mod, attr)
    except AttributeError:
        names = sorted(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_"))
        raise ValueError(
            f"module spec {spec!r}: {target!r} has no attribute {attr!r}"
            f" (its callables: {', '.join(names) or 'none'})"
        ) from None
    return attr, fn


def _import(spec: str, target: str) -> types.ModuleType:
    """Import a module file or a module by name; what goes wrong as one line."""
    mod_name, load = "", functools.partial(importlib.import_module, target)
    if target.endswith(".py"):
        path = Path(target).resolve()
        if not path.is_file():
            raise ValueError(f"module spec {spec!r}: no such file {str(path)!r}")
        mod_name = f"lazygrpc_user_{path.stem}_{abs(hash(path)) & 0xFFFF:x}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ValueError(f"module spec {spec!r}: cannot load {str(path)!r}")
        load = functools.partial(_exec_file, loader_spec)
    try:
        return load()
    except SyntaxError as exc:
        sys.modules.pop(mod_name, None)
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else target
        raise ValueError(
            f"module spec {spec!r}: {where}: {type(exc).__name__}: {exc.msg}: fix the file"
        ) from None
    except Exception as exc:  # whatever its top level raised, where it raised it
        sys.modules.pop(mod_name, None)
        raise ValueError(
            f"module spec {spec!r}: importing {target} failed: {_one_line(exc)}"
        ) from None


def _exec_file(loader_spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
    mod = sys.modules[loader_spec.name] = importlib.util.module_from_spec(loader_spec)
    assert loader_spec.loader is not None
    loader_spec.loader.exec_module(mod)
    return mod


#: Files whose frames say nothing about where a user's module failed to import.
_MACHINERY = frozenset({__file__, importlib.__file__})


def _one_line(exc: BaseException) -> str:
    """`Type: message` of `exc`, with where it was raised in the user's code."""
    where, tb = "", exc.__traceback__
    while tb is not None:  # the innermost frame that is not the import machinery's
        filename = tb.tb_frame.f_code.co_filename
        if not filename.startswith("<frozen ") and filename not in _MACHINERY:
            where = f" ({filename}:{tb.tb_lineno})"
        tb = tb.tb_next
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}{where}"
