"""The model backend interface: an async generator of text deltas."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

import grpc


@dataclass(frozen=True)
class SamplingParams:
    """Effective generation parameters after server presets and caller overrides."""

    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None


@dataclass(frozen=True)
class Message:
    """One chat message as a backend sees it."""

    role: str
    content: str


class Prompt(str):
    """The prompt as text (chat messages as `role: content` lines, then the input) that also
    carries the chat it was built from, for backends that format chats themselves (a chat
    template, an upstream chat API). It is a `str`, so a text backend needs nothing else.

    >>> p = Prompt("user: hi", (Message("user", "hi"),))
    >>> p, p.messages[0].content
    ('user: hi', 'hi')
    """

    chat: tuple[Message, ...]  # as given: empty for a plain input

    def __new__(cls, text: str, messages: tuple[Message, ...] = ()) -> Prompt:
        self = super().__new__(cls, text)
        self.chat = messages
        return self

    @property
    def messages(self) -> tuple[Message, ...]:
        """The conversation; a plain input is one user message (built when asked for: the
        first token's path makes no message objects for text backends)."""
        return self.chat or (Message("user", str(self)),)


@dataclass(frozen=True)
class Finish:
    """What a backend may yield last, after its text: why it ended and its real token counts.

    A field left None falls back to the server's own account (`count_tokens` for the
    prompt, one token per delta for the completion, `length` when `max_tokens` was reached).
    """

    reason: Literal["stop", "length"] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class UpstreamError(Exception):
    """What a backend's upstream (an HTTP service, a local model) refused or failed at: the
    call ends with `code`, and its chain gets one frame for the upstream (`upstream`,
    `method`, `error_type`, this message) below the model service's own."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        upstream: str,
        method: str = "",
        error_type: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.upstream = upstream
        self.method = method
        self.error_type = error_type or code.name


class Backend(Protocol):
    """What `ModelService` drives. One instance serves many concurrent calls."""

    name: str

    def count_tokens(self, text: str) -> int:
        """Tokens `text` costs as a prompt (for `Usage.prompt_tokens`)."""
        ...

    def generate(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[str | Finish]:
        """Yield text deltas (one token each) until done or `params.max_tokens`, then
        optionally one `Finish`.

        The server enforces `max_tokens` and `stop`; a backend may stop earlier. A call that
        ends early (its client left, a stop string) closes the generator: its `finally` is
        where a backend stops its work (closes an upstream stream, stops a worker thread).
        Failures of an upstream service are raised as `UpstreamError`.
        """
        ...
