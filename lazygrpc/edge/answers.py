"""The answers: an upstream call's pieces turned into OpenAI's JSON or SSE frames.

Each producer is an async generator of `Frame`s (bytes, commits), so the response writes a
frame before the next is pulled from the gRPC stream: nothing is buffered in between.
Intermediate events (from any depth) and the changed globals are named SSE events
(`event: intermediate`, `event: globals`); on OpenAI's routes they are sent only when the
client asks for them (`x-lazy-events`), since the OpenAI SDKs read every event as a chunk.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from lazygrpc.core import baggage
from lazygrpc.core.context import CallScope
from lazygrpc.core.events import Event
from lazygrpc.edge import openai, upstream
from lazygrpc.edge.errors import HTTPProblem
from lazygrpc.edge.sse import DONE, Frame, frame
from lazygrpc.edge.upstream import Entry

#: The `x-lazy-events` names a client may ask for.
EXTRA_EVENTS = frozenset({"intermediate", "globals"})


@dataclass(frozen=True)
class Extras:
    """The named events a stream sends besides the answer."""

    intermediate: bool = False
    globals: bool = False

    @classmethod
    def parse(cls, header: str | None) -> Extras:
        names = {n.strip() for n in (header or "").split(",") if n.strip()}
        unknown = names - EXTRA_EVENTS
        if unknown:
            raise HTTPProblem(
                400,
                f"x-lazy-events: unknown event {sorted(unknown)[0]!r} "
                f"(known: {', '.join(sorted(EXTRA_EVENTS))})",
                param="x-lazy-events",
            )
        return cls("intermediate" in names, "globals" in names)


ALL_EXTRAS = Extras(True, True)


def changed_globals(scope: CallScope) -> dict[str, Any]:
    """What the call changed in the session: `{"session_id", "globals", "deleted"}`."""
    update = scope.update_trailer()
    parsed = baggage.parse_baggage(update) if update else None
    return {
        "session_id": scope.session.id,
        "globals": parsed.values if parsed else {},
        "deleted": sorted(parsed.deleted) if parsed else [],
    }


def intermediate_json(ev: Event) -> dict[str, Any]:
    return {"source": ev.source, "value": ev.value}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def module_args(entry: Entry, ask: openai.Ask) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A module behind an OpenAI route takes the text as input, and `max_tokens` alone of
    the params (as a keyword); any other param is refused by name."""
    extra = sorted(set(ask.params) - {"max_tokens"})
    if extra:
        raise HTTPProblem(
            400,
            f"param {extra[0]!r} is not settable on module {entry.name!r} (settable: max_tokens)",
            param=extra[0],
        )
    return (ask.text,), dict(ask.params)


# -- OpenAI ------------------------------------------------------------------------------


async def openai_stream(
    entry: Entry, ask: openai.Ask, reply: openai.Reply, scope: CallScope, extras: Extras
) -> AsyncGenerator[Frame, None]:
    """`chat.completion.chunk`s (or `text_completion`s), then usage, globals, `[DONE]`."""
    first = True
    finish: str | None = "stop"
    usage: dict[str, int] | None = None
    if entry.kind == "model":
        async for chunk in upstream.generate(entry, ask.generate_request()):
            if chunk.text:
                yield frame(reply.chunk(chunk.text, first=first)), True
                first = False
            if chunk.finish_reason:
                finish = openai.finish_reason(chunk.finish_reason)
                usage = openai.usage_json(chunk.usage)
    else:
        args, kwargs = module_args(entry, ask)
        streamed = False
        async for ev in upstream.module_stream(entry, args, kwargs):
            if ev.kind == "intermediate":
                if extras.intermediate:
                    yield frame(intermediate_json(ev), "intermediate"), False
                continue
            if ev.kind == "result" and streamed:
                continue  # the deltas were the answer
            text = _text(ev.value)
            if text:
                yield frame(reply.chunk(text, first=first)), True
                first = False
            streamed = streamed or ev.kind == "delta"
        usage = openai.usage_json(scope.session.get("usage"))
    if first and reply.chat:  # an empty answer still has its role
        yield frame(reply.chunk("", first=True)), True
    yield frame(reply.chunk("", finish)), True
    if ask.include_usage:
        yield frame(reply.usage_chunk(usage)), True
    if extras.globals:
        yield frame(changed_globals(scope), "globals"), True
    yield DONE, True


async def openai_whole(entry: Entry, ask: openai.Ask, reply: openai.Reply, scope: CallScope) -> Any:
    """The whole answer's JSON."""
    if entry.kind == "model":
        response = await upstream.complete(entry, ask.generate_request())
        finish = openai.finish_reason(response.finish_reason) or "stop"
        return reply.whole(response.text, finish, openai.usage_json(response.usage))
    args, kwargs = module_args(entry, ask)
    result = await upstream.module_call(entry, args, kwargs)
    usage = openai.usage_json(scope.session.get("usage"))
    return reply.whole(_text(result), "stop", usage)


# -- modules -----------------------------------------------------------------------------


def event_json(ev: Event) -> dict[str, Any]:
    """An `Event` in its proto3 JSON form (`seq` as a string, as for every uint64)."""
    return {"seq": str(ev.seq), "source": ev.source, ev.kind: ev.value}


async def module_events(
    entry: Entry, args: tuple[Any, ...], kwargs: dict[str, Any], scope: CallScope
) -> AsyncGenerator[Frame, None]:
    """A module's events as SSE (`event: intermediate` for intermediates), then the changed
    globals (`event: globals`)."""
    async for ev in upstream.module_stream(entry, args, kwargs):
        if ev.kind == "intermediate":
            yield frame(event_json(ev), "intermediate"), False
        else:
            yield frame(event_json(ev)), True
    yield frame(changed_globals(scope), "globals"), True
