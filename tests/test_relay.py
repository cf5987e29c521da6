"""A module that relays another module's stream by yielding its events as they come."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import lazygrpc


def leaf(text: str) -> Iterator[str]:
    """Emit progress, stream the words, return a summary."""
    lazygrpc.emit({"progress": "started"})
    for w in text.split():
        yield w + " "
    return f"{len(text.split())} words"


def numbers(n: int) -> Iterator[int]:
    yield from range(n)


@pytest.fixture
def leaf_url(servers: Any) -> str:
    return servers.modules({"leaf": leaf, "numbers": numbers}, name="leafsrv")


def _relays(leaf_url: str) -> dict[str, Any]:
    async def arelay(text: str) -> AsyncIterator[Any]:
        async for ev in lazygrpc.connect(f"{leaf_url}/leaf").astream(text):
            yield ev

    def relay(text: str) -> Iterator[Any]:
        yield from lazygrpc.connect(f"{leaf_url}/leaf").stream(text)

    async def anumbers(n: int) -> AsyncIterator[Any]:
        async for ev in lazygrpc.connect(f"{leaf_url}/numbers").astream(n):
            yield ev

    return {"arelay": arelay, "relay": relay, "anumbers": anumbers}


@pytest.mark.parametrize("module", ["arelay", "relay"])
def test_a_relay_of_events_streams_them_as_they_are(
    servers: Any, leaf_url: str, module: str
) -> None:
    url = servers.modules(_relays(leaf_url), name="gw")
    events = list(lazygrpc.connect(f"{url}/{module}").stream("a b c"))
    kinds = [e.kind for e in events]
    assert kinds[-1] == "result" and kinds.count("result") == 1
    deltas = [e for e in events if e.kind == "delta"]
    assert "".join(e.value for e in deltas) == "a b c "
    assert {e.source for e in deltas} == {module}  # the relay's own output
    intermediates = [e for e in events if e.kind == "intermediate"]
    assert [(e.source, e.value) for e in intermediates] == [("leaf", {"progress": "started"})]
    # The relayed stream's result is the relay's result.
    assert events[-1].value == "3 words"
    assert [e.seq for e in events] == list(range(len(events)))


def test_a_relay_of_events_works_called_unary_and_from_asyncio(servers: Any, leaf_url: str) -> None:
    url = servers.modules(_relays(leaf_url), name="gw")
    assert lazygrpc.connect(f"{url}/arelay")("x y") == "2 words"

    async def go() -> list[Any]:
        try:
            return [e async for e in lazygrpc.connect(f"{url}/anumbers").astream(3)]
        finally:
            await lazygrpc.client.channels.aclose_all()

    events = asyncio.run(go())
    assert [e.value for e in events if e.kind == "delta"] == [0, 1, 2]
    assert events[-1].kind == "result" and events[-1].value == [0, 1, 2]
