"""OpenAI's request and response JSON ⇄ lazygrpc calls. Pure functions, no I/O.

`chat_request` and `completion_request` check a body the way OpenAI's API documents it and
turn it into an `Ask`; every refusal is an `HTTPProblem` whose message and `param` name
the offending field. The builders below make the response objects, chunk by chunk.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from lazygrpc.edge.errors import HTTPProblem
from lazygrpc.v1 import model_pb2

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
#: OpenAI's params with no lazygrpc meaning that a client may send at their neutral value.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logprobs": (False,),
    "echo": (False,),
    "parallel_tool_calls": (True, False),
}
#: Accepted and ignored (they change nothing a model service does).
_IGNORED = frozenset({"user", "metadata", "store", "service_tier"})
_STREAM_OPTIONS = frozenset({"include_usage", "include_obfuscation"})
_FINISH: dict[int, str] = {
    int(model_pb2.FINISH_REASON_STOP): "stop",
    int(model_pb2.FINISH_REASON_LENGTH): "length",
}


@dataclass
class Ask:
    """One OpenAI request, checked: which model, what to say, how, and how to answer."""

    model: str
    kind: str  # "chat" or "completion"
    messages: list[tuple[str, str]] = field(default_factory=list)
    prompt: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False

    @property
    def text(self) -> str:
        """What a module gets as its input: the prompt, or the last user message."""
        if self.kind == "completion":
            return self.prompt
        users = [content for role, content in self.messages if role == "user"]
        return users[-1] if users else self.messages[-1][1]

    def generate_request(self) -> model_pb2.GenerateRequest:
        """The `GenerateRequest` for a model service."""
        request = model_pb2.GenerateRequest(input=self.prompt)
        for role, content in self.messages:
            request.messages.add(role=role, content=content)
        if self.params:
            p = request.params
            for key, value in self.params.items():
                if key == "stop":
                    p.stop.extend(value)
                else:
                    setattr(p, key, value)
        return request


def _problem(param: str, message: str) -> HTTPProblem:
    return HTTPProblem(400, f"{param}: {message}", param=param, code="invalid_value")


def _int(body: dict[str, Any], key: str, low: int, high: int) -> int:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _problem(key, f"expected an integer, got {json.dumps(value)[:40]}")
    if not low <= value <= high:
        raise _problem(key, f"must be between {low} and {high}, got {value}")
    return value


def _number(body: dict[str, Any], key: str) -> float:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _problem(key, f"expected a number, got {json.dumps(value)[:40]}")
    return float(value)


def _stop(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _problem("stop", "expected a string or a list of strings")
    return list(items)


def _params(body: dict[str, Any]) -> dict[str, Any]:
    """The generation params of a request body (the model service checks what it allows)."""
    params: dict[str, Any] = {}
    for key in ("max_tokens", "max_completion_tokens"):
        if key in body:
            params["max_tokens"] = _int(body, key, 1, 2**32 - 1)
    for key in ("temperature", "top_p"):
        if key in body:
            params[key] = _number(body, key)
    if "top_k" in body:  # vLLM's extension
        params["top_k"] = _int(body, "top_k", 0, 2**32 - 1)
    if "seed" in body:
        params["seed"] = _int(body, "seed", 0, 2**64 - 1)
    if "stop" in body:
        params["stop"] = _stop(body["stop"])
    return params


_PARAMS = frozenset(
    {"max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "stop"}
)


def _common(body: Any, kind: str, own: frozenset[str]) -> Ask:
    if not isinstance(body, dict):
        raise HTTPProblem(400, "request body must be a JSON object", code="invalid_json")
    body = {k: v for k, v in body.items() if v is not None}  # null means "not given"
    for key, value in body.items():
        if key in own or key in _PARAMS or key in _IGNORED or key in ("stream", "stream_options"):
            continue
        if key in _NEUTRAL and value in _NEUTRAL[key]:
            continue
        raise HTTPProblem(
            400,
            f"unsupported parameter {key!r}: lazygrpc's edge does not set it on a model",
            param=key,
            code="unsupported_parameter",
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _problem("model", "expected a non-empty string (GET /v1/models lists them)")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _problem("stream", "expected true or false")
    options = body.get("stream_options", {})
    if not isinstance(options, dict) or not set(options) <= _STREAM_OPTIONS:
        raise _problem("stream_options", "expected an object with include_usage")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise _problem("stream_options.include_usage", "expected true or false")
    if options and not stream:
        raise _problem("stream_options", "only allowed when stream is true")
    return Ask(model, kind, params=_params(body), stream=stream, include_usage=include_usage)


def _content(i: int, content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: text only
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _problem(f"messages[{i}].content", "only text content parts are supported")
            text = part.get("text")
            if not isinstance(text, str):
                raise _problem(f"messages[{i}].content", "a text part needs a string 'text'")
            texts.append(text)
        return "".join(texts)
    raise _problem(f"messages[{i}].content", "expected a string or a list of text parts")


def chat_request(body: Any) -> Ask:
    """A checked `POST /v1/chat/completions` body."""
    ask = _common(body, "chat", frozenset({"model", "messages"}))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _problem("messages", "expected a non-empty list of messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _problem(f"messages[{i}]", "expected an object with role and content")
        role = msg.get("role")
        if role not in ROLES:
            raise _problem(f"messages[{i}].role", f"expected one of {', '.join(sorted(ROLES))}")
        ask.messages.append((role, _content(i, msg.get("content", ""))))
    return ask


def completion_request(body: Any) -> Ask:
    """A checked `POST /v1/completions` body."""
    ask = _common(body, "completion", frozenset({"model", "prompt"}))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _problem("prompt", "expected a string")
    ask.prompt = prompt
    return ask


# -- responses ---------------------------------------------------------------------------


def finish_reason(reason: int) -> str | None:
    return _FINISH.get(int(reason))


def usage_json(usage: Any) -> dict[str, int] | None:
    """OpenAI's `usage` from a `Usage` message or the `usage` global (None without one)."""
    if isinstance(usage, model_pb2.Usage):
        return {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }
    if isinstance(usage, dict):
        keys = ("prompt_tokens", "completion_tokens", "total_tokens")
        if all(isinstance(usage.get(k), int) for k in keys):
            return {k: usage[k] for k in keys}
    return None


class Reply:
    """The ids and the object names of one answer, and the JSON of each of its pieces."""

    def __init__(self, ask: Ask, request_id: str) -> None:
        self.ask = ask
        self.id = ("chatcmpl-" if ask.kind == "chat" else "cmpl-") + request_id
        self.created = int(time.time())
        self.chat = ask.kind == "chat"

    def _wrap(self, choices: list[dict[str, Any]], obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.ask.model,
            "choices": choices,
        }

    def chunk(self, text: str, finish: str | None = None, *, first: bool = False) -> dict[str, Any]:
        """One streamed piece (`chat.completion.chunk` or `text_completion`)."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {}
            if text and not first:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return self._wrap([choice], "chat.completion.chunk")
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return self._wrap([choice], "text_completion")

    def usage_chunk(self, usage: dict[str, int] | None) -> dict[str, Any]:
        """The last chunk of `stream_options.include_usage`: no choices, the usage."""
        out = self._wrap([], "chat.completion.chunk" if self.chat else "text_completion")
        out["usage"] = usage
        return out

    def whole(self, text: str, finish: str | None, usage: dict[str, int] | None) -> dict[str, Any]:
        """The whole answer (`chat.completion` or `text_completion`)."""
        if self.chat:
            message = {"role": "assistant", "content": text, "refusal": None}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            out = self._wrap([choice], "chat.completion")
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            out = self._wrap([choice], "text_completion")
        out["usage"] = usage
        return out


def model_json(name: str, owned_by: str, details: dict[str, Any]) -> dict[str, Any]:
    """One entry of `GET /v1/models`; `lazygrpc` says what serves it."""
    return {"id": name, "object": "model", "created": 0, "owned_by": owned_by, "lazygrpc": details}
