"""`ModelService`: serve a model backend with server-side presets and checked overrides."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import grpc

from lazygrpc import broker
from lazygrpc.backends.base import Backend, Finish, Message, Prompt, SamplingParams, UpstreamError
from lazygrpc.broker.item import DELTA, Item
from lazygrpc.core.context import current, current_call
from lazygrpc.core.errors import InvalidArgument, RemoteError
from lazygrpc.server.streams import Messages, Stream, pump
from lazygrpc.v1 import chain_pb2, model_pb2, model_pb2_grpc

SERVICE_NAME = "lazygrpc.v1.ModelService"
add_to_server = model_pb2_grpc.add_ModelServiceServicer_to_server


@dataclass(frozen=True)
class ParamRange:
    """A caller-settable param and the closed range the server accepts."""

    min: float
    max: float
    description: str = ""


#: Every param a deployment may open to callers, with the widest range it may allow.
KNOWN_PARAMS: dict[str, ParamRange] = {
    "max_tokens": ParamRange(1, 4096, "most tokens to generate"),
    "temperature": ParamRange(0.0, 2.0, "sampling temperature; 0 is greedy"),
    "top_p": ParamRange(0.0, 1.0, "nucleus sampling mass"),
    "top_k": ParamRange(0, 1000, "sample among the k likeliest; 0 is off"),
    "stop": ParamRange(0, 4, "up to 4 stop strings of at most 64 characters"),
    "seed": ParamRange(0, 2**63 - 1, "makes sampling deterministic"),
}
MAX_STOP_CHARS = 64
MAX_PROMPT_CHARS = 1 << 20


@dataclass(frozen=True)
class ModelConfig:
    """A deployment: the backend, preset params (never exposed) and what callers may set."""

    backend: Backend
    name: str = ""
    presets: SamplingParams = field(default_factory=SamplingParams)
    settable: Mapping[str, ParamRange] = field(
        default_factory=lambda: {
            k: KNOWN_PARAMS[k] for k in ("max_tokens", "temperature", "top_p", "stop", "seed")
        }
    )

    def __post_init__(self) -> None:
        unknown = set(self.settable) - set(KNOWN_PARAMS)
        if unknown:
            raise ValueError(f"unknown settable params: {sorted(unknown)!r}")
        if not self.name:
            object.__setattr__(self, "name", self.backend.name)


def effective_params(config: ModelConfig, params: model_pb2.GenerationParams) -> SamplingParams:
    """Presets overlaid with the caller's params; `InvalidArgument` names a bad param."""
    if not params.ByteSize():
        return config.presets
    changes: dict[str, Any] = {}
    for name in ("max_tokens", "temperature", "top_p", "top_k", "seed"):
        if not params.HasField(name):
            continue
        value = getattr(params, name)
        _check(config, name, value)
        changes[name] = value
    if params.stop:
        if "stop" not in config.settable:
            _check(config, "stop", 0)  # raises: not settable
        if len(params.stop) > config.settable["stop"].max:
            raise InvalidArgument(
                f"param 'stop': {len(params.stop)} stop strings, at most "
                f"{config.settable['stop'].max:g} allowed"
            )
        for s in params.stop:
            if not s or len(s) > MAX_STOP_CHARS:
                raise InvalidArgument(
                    f"param 'stop': each stop string must be 1-{MAX_STOP_CHARS} characters, got {s!r:.80}"
                )
        changes["stop"] = tuple(params.stop)
    return replace(config.presets, **changes) if changes else config.presets


def _check(config: ModelConfig, name: str, value: float) -> None:
    allowed = config.settable.get(name)
    if allowed is None:
        settable = ", ".join(sorted(config.settable)) or "none"
        raise InvalidArgument(
            f"param {name!r} is not settable on model {config.name!r} (settable: {settable})"
        )
    if not (math.isfinite(value) and allowed.min <= value <= allowed.max):
        raise InvalidArgument(
            f"param {name!r}={value!r} is out of range [{allowed.min:g}, {allowed.max:g}]"
        )


def prompt_of(request: model_pb2.GenerateRequest) -> Prompt:
    """The prompt: chat messages as `role: content` lines, then `input` (the chat itself,
    `input` as a last user message, in `Prompt.messages`)."""
    if not request.messages:
        prompt = request.input
        if prompt and len(prompt) <= MAX_PROMPT_CHARS and not prompt.isspace():
            return Prompt(prompt)
    parts = [f"{m.role}: {m.content}" if m.role else m.content for m in request.messages]
    if request.input:
        parts.append(request.input)
    prompt = "\n".join(parts)
    if not prompt.strip():
        raise InvalidArgument("input: the request has neither input nor messages")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidArgument(
            f"input: {len(prompt)} characters, over the limit of {MAX_PROMPT_CHARS}"
        )
    messages = [Message(m.role or "user", m.content) for m in request.messages]
    if request.input:
        messages.append(Message("user", request.input))
    return Prompt(prompt, tuple(messages))


@dataclass(slots=True)
class _Run:
    """Bookkeeping of one generation: text so far, finish reason, usage.

    The prompt's tokens are counted at the end (`_account`), off the first token's path.
    """

    prompt: Prompt
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: model_pb2.FinishReason.ValueType = model_pb2.FINISH_REASON_LENGTH
    reported: Finish | None = None  # the backend's own account, when it gave one

    def usage(self) -> model_pb2.Usage:
        return model_pb2.Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
        )


async def _tokens(
    config: ModelConfig, prompt: Prompt, params: SamplingParams, run: _Run
) -> AsyncGenerator[str, None]:
    """The backend's deltas with `max_tokens` and `stop` enforced by the server."""
    text = ""
    gen = config.backend.generate(prompt, params)
    try:
        async for delta in gen:
            if isinstance(delta, Finish):  # the backend's last word
                run.reported = delta
                continue
            if params.stop:
                candidate = text + delta
                start = max(0, len(text) - MAX_STOP_CHARS)
                hits = [i for stop in params.stop if (i := candidate.find(stop, start)) >= 0]
                if hits:
                    # A stop string that began in text already sent ends the stream here.
                    head = candidate[len(text) : min(hits)]
                    if head:
                        run.completion_tokens += 1
                        yield head
                    run.finish_reason = model_pb2.FINISH_REASON_STOP
                    return
            text += delta
            run.completion_tokens += 1
            yield delta
            if run.completion_tokens >= params.max_tokens:
                run.finish_reason = model_pb2.FINISH_REASON_LENGTH
                # A backend that honours max_tokens ends here, perhaps with its Finish
                # (an upstream's usage arrives after the last token): take that, cut the rest.
                async for extra in gen:
                    if isinstance(extra, Finish):
                        run.reported = extra
                    break
                return
        run.finish_reason = model_pb2.FINISH_REASON_STOP
    except UpstreamError as exc:
        raise upstream_failure(exc) from exc
    finally:
        await gen.aclose()  # type: ignore[attr-defined]


def upstream_failure(exc: UpstreamError) -> RemoteError:
    """The `RemoteError` a backend's failed upstream becomes: its code, and a chain whose one
    frame is the upstream, so the caller's chain reads `ModelService.Generate → upstream`."""
    frame = chain_pb2.CallFrame(
        service=exc.upstream, method=exc.method, error_type=exc.error_type, message=exc.message
    )
    return RemoteError(exc.code, exc.message, remote_type="UpstreamError", chain=[frame])


_FINISH = {"stop": model_pb2.FINISH_REASON_STOP, "length": model_pb2.FINISH_REASON_LENGTH}


def _account(run: _Run, backend: Backend) -> None:
    """Count the prompt, and add this call's token counts to the session's `usage` global;
    what this call added flows back upstream (`lazygrpc.core.usage`)."""
    reported = run.reported or Finish()
    if reported.reason is not None:
        run.finish_reason = _FINISH[reported.reason]
    if reported.completion_tokens is not None:
        run.completion_tokens = reported.completion_tokens
    run.prompt_tokens = (
        backend.count_tokens(run.prompt)
        if reported.prompt_tokens is None
        else reported.prompt_tokens
    )
    current().add_usage(
        {
            "prompt_tokens": run.prompt_tokens,
            "completion_tokens": run.completion_tokens,
            "total_tokens": run.prompt_tokens + run.completion_tokens,
            "calls": 1,
        }
    )


class _Chunks(Messages):
    """A model stream's items (text deltas only) as `GenerateChunk`s."""

    __slots__ = ()

    def encode(self, item: Item) -> model_pb2.GenerateChunk:
        text = item.payload
        assert isinstance(text, str)  # this topic only ever holds text deltas
        index = self.count
        self.count = index + 1
        return model_pb2.GenerateChunk(text=text, index=index, source=self.source)


class ModelServicer(model_pb2_grpc.ModelServiceServicer):
    """Implementation of `lazygrpc.v1.ModelService` over a `ModelConfig`."""

    def __init__(
        self, config: ModelConfig, *, topic_options: Mapping[str, Any] | None = None
    ) -> None:
        self.config = config
        self.topic_options = dict(topic_options or {})

    def _topic(self) -> broker.Topic:
        """The topic of a `Generate` call, once its first token is out (`Stream`)."""
        topic = broker.BROKER.open(accepts_intermediate=False, **self.topic_options)
        scope = current_call()
        if scope is not None:
            scope.topic = topic
        return topic

    def _run(self, request: model_pb2.GenerateRequest) -> tuple[_Run, Any]:
        """The run of one request (its checked prompt and params) and its token stream."""
        prompt = prompt_of(request)
        params = effective_params(self.config, request.params)
        run = _Run(prompt)
        return run, _tokens(self.config, prompt, params, run)

    async def Generate(
        self, request: model_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        run, tokens = self._run(request)
        name = self.config.name
        make = partial(Item.of, DELTA, name)
        # The producer is `pump` itself, not a coroutine around it: one frame less to resume
        # at every token that waits for the backend.
        chunks = _Chunks(context.write, name)
        stream = Stream(
            None,
            partial(pump, tokens, make=make),
            gen=tokens,
            make=make,
            open_topic=self._topic,
            sink=chunks.write,
        )
        try:
            item = await stream.first()
            while item is not None:
                yield chunks.encode(item)
                item = await stream.next()
            await stream.result()
            _account(run, self.config.backend)
            yield model_pb2.GenerateChunk(
                index=chunks.count, source=name, finish_reason=run.finish_reason, usage=run.usage()
            )
        finally:
            await stream.close()

    async def Complete(
        self, request: model_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.GenerateResponse:
        run, tokens = self._run(request)
        text = "".join([d async for d in tokens])
        _account(run, self.config.backend)
        return model_pb2.GenerateResponse(
            text=text, finish_reason=run.finish_reason, usage=run.usage()
        )

    async def GetModelInfo(
        self, request: model_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.ModelInfo:
        return model_pb2.ModelInfo(
            name=self.config.name,
            backend=type(self.config.backend).__name__,
            settable_params=[
                model_pb2.ParamSpec(
                    name=name,
                    type="repeated string"
                    if name == "stop"
                    else ("double" if isinstance(r.min, float) else "integer"),
                    min=r.min,
                    max=r.max,
                    description=r.description,
                )
                for name, r in sorted(self.config.settable.items())
            ],
        )


def presets_from(values: Mapping[str, Any], base: SamplingParams | None = None) -> SamplingParams:
    """Presets from a config mapping (`--preset key=value`); `ValueError` names a bad key."""
    base = base or SamplingParams()
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in KNOWN_PARAMS:
            raise ValueError(f"unknown preset {key!r} (known: {', '.join(KNOWN_PARAMS)})")
        if key == "stop":
            changes[key] = (
                tuple(value)
                if isinstance(value, Sequence) and not isinstance(value, str)
                else (str(value),)
            )
        elif key in ("temperature", "top_p"):
            changes[key] = float(value)
        else:
            changes[key] = int(value)
    return replace(base, **changes)
