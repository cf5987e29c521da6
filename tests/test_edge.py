"""The HTTP/SSE edge with the official OpenAI SDK and raw HTTP: answers, sessions, errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

import lazygrpc
from tests.edges import Edges, demo_mesh, running_edges


@pytest.fixture
def edges(servers: Any) -> Iterator[Edges]:
    with running_edges(servers) as e:
        yield e


@pytest.fixture
def model_edge(servers: Any, edges: Edges) -> tuple[str, lazygrpc.Edge]:
    url = servers.model("markov")
    return url, edges.start(url)


def sdk(edge: lazygrpc.Edge) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{edge.url}/v1", api_key="unused", max_retries=0)


def sse(text: str) -> list[tuple[str, str]]:
    """(event, data) of each SSE message in `text`."""
    out = []
    for block in text.strip().split("\n\n"):
        event, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        out.append((event, "\n".join(data)))
    return out


HELLO = [{"role": "user", "content": "How does lazygrpc stream tokens?"}]


def test_sdk_sync_chat_whole_and_streamed_give_the_same_answer(
    model_edge: tuple[str, lazygrpc.Edge],
) -> None:
    _, edge = model_edge
    client = sdk(edge)
    whole = client.chat.completions.create(model="markov", messages=HELLO, max_tokens=12, seed=7)
    assert whole.object == "chat.completion"
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 12
    text = whole.choices[0].message.content
    assert text
    chunks = list(
        client.chat.completions.create(
            model="markov",
            messages=HELLO,
            max_tokens=12,
            seed=7,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


async def test_sdk_async_chat_and_completions(model_edge: tuple[str, lazygrpc.Edge]) -> None:
    url, edge = model_edge
    client = openai.AsyncOpenAI(base_url=f"{edge.url}/v1", api_key="unused", max_retries=0)
    async with client:
        whole = await client.completions.create(
            model="markov", prompt="Sessions carry", max_tokens=9, seed=3
        )
        stream = await client.chat.completions.create(
            model="markov", messages=HELLO, max_tokens=5, seed=3, stream=True
        )
        deltas = [c.choices[0].delta.content or "" async for c in stream]
        pieces = [
            c.choices[0].text
            async for c in await client.completions.create(
                model="markov", prompt="Sessions carry", max_tokens=9, seed=3, stream=True
            )
        ]
    # The same request straight over gRPC gives the same text.
    direct = await lazygrpc.LLM(url).acall("Sessions carry", max_tokens=9, seed=3)
    assert whole.object == "text_completion" and whole.choices[0].text == direct
    assert "".join(pieces) == direct
    assert "".join(deltas)


def test_a_dns_upstream_works_like_a_grpc_one(servers: Any, edges: Edges) -> None:
    leaf = servers.modules({"flaky": _two_then_fail}, name="leaf")
    model = servers.model("echo")
    edge = edges.start(*(u.replace("grpc://", "dns:///") for u in (model, leaf)))
    whole = sdk(edge).completions.create(model="echo", prompt="over dns", max_tokens=2)
    assert whole.choices[0].text == "over dns"
    r = httpx.post(f"{edge.url}/v1/modules/flaky/stream", json={"input": "x"})
    assert r.status_code == 200 and '"delta":"one "' in r.text


def test_sdk_lists_models_and_modules(servers: Any, edges: Edges, monkeypatch: Any) -> None:
    edge = edges.start(*demo_mesh(servers, monkeypatch))
    models = {m.id: m for m in sdk(edge).models.list()}
    assert set(models) == {"ask", "rag", "echo"}
    assert models["echo"].owned_by == "lazygrpc model"
    assert models["ask"].model_extra is not None
    assert models["ask"].model_extra["lazygrpc"]["streaming"] is True


def test_through_three_hops_sse_sees_intermediates_tokens_usage_globals_done(
    servers: Any, edges: Edges, monkeypatch: Any
) -> None:
    edge = edges.start(*demo_mesh(servers, monkeypatch))
    body = {
        "model": "ask",
        "messages": [{"role": "user", "content": "What is a session?"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"x-lazy-events": "intermediate,globals", "lazy-session-id": "chat-1"}
    r = httpx.post(f"{edge.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    messages = sse(r.text)
    inter = [json.loads(d) for e, d in messages if e == "intermediate"]
    assert {i["source"] for i in inter} == {"ask", "rag"}
    assert any("passages" in str(i["value"]) for i in inter)
    chunks = [json.loads(d) for e, d in messages if e == "message" and d != "[DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.startswith("Answer the question from these notes.")
    assert chunks[-1]["usage"]["completion_tokens"] == 60
    (changed,) = [json.loads(d) for e, d in messages if e == "globals"]
    assert changed["session_id"] == "chat-1"
    assert changed["globals"]["usage"]["calls"] == 1
    assert changed["globals"]["question"] == "What is a session?"
    assert messages[-1] == ("message", "[DONE]")
    # The intermediates came before the first token, the globals after the last.
    kinds = [e for e, _ in messages]
    assert kinds.index("intermediate") < kinds.index("message") < kinds.index("globals")


def test_the_sdk_streams_from_a_module_chain_without_the_named_events(
    servers: Any, edges: Edges, monkeypatch: Any
) -> None:
    edge = edges.start(*demo_mesh(servers, monkeypatch))
    stream = sdk(edge).chat.completions.create(
        model="ask", messages=[{"role": "user", "content": "What is a deadline?"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("Answer the question from these notes.")


def test_globals_come_in_as_baggage_and_go_back_changed(
    servers: Any, edges: Edges, monkeypatch: Any
) -> None:
    edge = edges.start(*demo_mesh(servers, monkeypatch))
    usage = json.dumps({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "calls": 4})
    headers = {
        "x-session-id": "sess-42",
        "baggage": "lazy.usage=" + usage.replace('"', "%22").replace(",", "%2C") + ",vendor=x",
    }
    r = httpx.post(
        f"{edge.url}/v1/modules/ask", json={"input": "What is a session?"}, headers=headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["output"].startswith("Answer the question")
    assert r.headers["lazy-session-id"] == "sess-42"
    update = r.headers["lazy-globals-update"]
    from lazygrpc.core.baggage import parse_baggage

    changed = parse_baggage(update).values
    # What goes back is what this request added, for the client to add to its own usage;
    # the usage that came in is never a count a server adds to (docs/sessions.md).
    assert changed["usage"]["calls"] == 1
    assert changed["usage"]["completion_tokens"] == 60


def test_module_stream_route_sends_events_in_their_json_form(
    servers: Any, edges: Edges, monkeypatch: Any
) -> None:
    edge = edges.start(*demo_mesh(servers, monkeypatch))
    r = httpx.post(
        f"{edge.url}/v1/modules/ask/stream",
        json={"input": "What is a session?", "kwargs": {"max_tokens": 4}},
        timeout=30,
    )
    assert r.status_code == 200
    messages = sse(r.text)
    events = [(e, json.loads(d)) for e, d in messages]
    deltas = [ev["delta"] for e, ev in events if "delta" in ev]
    assert len(deltas) >= 1 and all(ev["seq"].isdigit() for _, ev in events if "seq" in ev)
    results = [ev for _, ev in events if "result" in ev]
    assert results == [results[0]] and results[0]["result"] == "".join(deltas)
    assert (
        events[-1][0] == "globals" and events[-1][1]["globals"]["usage"]["completion_tokens"] == 4
    )


def test_an_error_three_hops_down_is_the_right_status_with_the_chain(
    servers: Any, edges: Edges, monkeypatch: Any
) -> None:
    edge = edges.start(*demo_mesh(servers, monkeypatch))
    ask = {"model": "ask", "messages": HELLO, "max_tokens": 5000}  # over the model's 4096
    for stream in (False, True):
        r = httpx.post(f"{edge.url}/v1/chat/completions", json={**ask, "stream": stream})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["status"] == "INVALID_ARGUMENT" and "max_tokens" in error["message"]
        hops = [(f["service"], f["method"]) for f in error["chain"]]
        assert hops == [
            ("edge", "/v1/chat/completions"),
            ("gateway", "ask"),
            ("retriever", "rag"),
            ("model", "Generate"),
        ]
    with pytest.raises(openai.BadRequestError) as info:
        sdk(edge).chat.completions.create(**ask)
    assert isinstance(info.value.body, dict) and len(info.value.body["chain"]) == 4


def test_tracebacks_reach_http_clients_only_where_the_edge_allows(
    servers: Any, edges: Edges, monkeypatch: Any
) -> None:
    mesh = demo_mesh(servers, monkeypatch)
    public, trusted = edges.start(*mesh), edges.start(*mesh, expose_tracebacks=True)
    for edge, shown in ((public, False), (trusted, True)):
        r = httpx.post(f"{edge.url}/v1/modules/ask", json={"input": "please explode"})
        assert r.status_code == 500
        error = r.json()["error"]
        assert error["code"] == "RetrievalError"
        assert [f["service"] for f in error["chain"]] == ["edge", "gateway", "retriever"]
        assert ("traceback" in error["chain"][-1]) is shown


async def _two_then_fail(x: str) -> Any:
    yield "one "
    yield "two "
    raise ValueError(f"failed after two tokens of {x!r}")


def test_an_error_after_the_first_token_ends_the_stream_with_an_error_event(
    servers: Any, edges: Edges
) -> None:
    edge = edges.start(servers.modules({"flaky": _two_then_fail}, name="leaf"))
    r = httpx.post(f"{edge.url}/v1/modules/flaky/stream", json={"input": "x"})
    assert r.status_code == 200
    messages = sse(r.text)
    assert [json.loads(d).get("delta") for e, d in messages[:2]] == ["one ", "two "]
    event, data = messages[-1]
    assert event == "error"
    error = json.loads(data)["error"]
    assert error["code"] == "ValueError" and "after two tokens" in error["message"]
    with pytest.raises(openai.APIError, match="after two tokens"):
        for _ in sdk(edge).chat.completions.create(model="flaky", messages=HELLO, stream=True):
            pass


async def _sleepy(x: str) -> str:
    await asyncio.sleep(30)
    return x


def test_x_request_timeout_is_the_calls_deadline(servers: Any, edges: Edges) -> None:
    edge = edges.start(servers.modules({"sleepy": _sleepy}, name="leaf"))
    r = httpx.post(
        f"{edge.url}/v1/modules/sleepy",
        json={"input": "x"},
        headers={"x-request-timeout": "0.2"},
        timeout=10,
    )
    assert r.status_code == 504
    assert r.json()["error"]["status"] == "DEADLINE_EXCEEDED"
    r = httpx.post(
        f"{edge.url}/v1/modules/sleepy", json={"input": "x"}, headers={"x-request-timeout": "soon"}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-request-timeout"


BAD_BODIES = [
    (b'{"model": "markov", "messages": [', 400, "not valid JSON"),
    (b'["model"]', 400, "JSON object"),
    (b'{"model": "markov", "messages": "hi"}', 400, "messages"),
    (b'{"model": 7, "messages": []}', 400, "model"),
    (b'{"model": "markov", "messages": [{"role": "user", "content": 1}]}', 400, "content"),
    (b'{"model": "markov", "messages": [{"role": "robot", "content": "x"}]}', 400, "role"),
    (
        b'{"model": "markov", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
        400,
        "max_tokens",
    ),
    (
        b'{"model": "markov", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
        400,
        "temperature",
    ),
    (
        b'{"model": "markov", "messages": [{"role": "user", "content": "x"}], "logit_bias": {}}',
        400,
        "logit_bias",
    ),
    (
        b'{"model": "markov", "messages": [{"role": "user", "content": "x"}], "top_k": 5}',
        400,
        "top_k",
    ),
    (
        b'{"model": "markov", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
        400,
        "temperature",
    ),
    (b'{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}', 404, "gpt-9"),
    (b'{"model": "markov", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "UTF-8"),
    (b"x" * (10 << 20), 413, "limit"),
]


def test_bad_input_gets_a_4xx_naming_the_problem_and_the_edge_keeps_serving(
    model_edge: tuple[str, lazygrpc.Edge],
) -> None:
    _, edge = model_edge
    with httpx.Client(base_url=edge.url, timeout=30) as client:
        for body, status, named in BAD_BODIES:
            r = client.post("/v1/chat/completions", content=body)
            assert r.status_code == status, (body[:80], r.text)
            error = r.json()["error"]
            assert named in error["message"], (body[:80], error)
            assert set(error) >= {"message", "type", "param", "code"}
        r = client.get("/v1/nothing")
        assert r.status_code == 404 and "/v1/nothing" in r.json()["error"]["message"]
        r = client.post("/v1/chat/completions", json={"model": "markov", "messages": HELLO})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


def test_bad_session_headers_and_unknown_modules_are_refused(
    model_edge: tuple[str, lazygrpc.Edge],
) -> None:
    _, edge = model_edge
    ok = {"model": "markov", "messages": HELLO}
    r = httpx.post(f"{edge.url}/v1/chat/completions", json=ok, headers={"lazy-session-id": "a b"})
    assert r.status_code == 400 and "lazy-session-id" in r.json()["error"]["message"]
    r = httpx.post(f"{edge.url}/v1/chat/completions", json=ok, headers={"baggage": "lazy.x=%7B"})
    assert r.status_code == 400 and "baggage" in r.json()["error"]["message"]
    r = httpx.post(f"{edge.url}/v1/modules/nope", json={"input": 1})
    assert r.status_code == 404 and "'nope'" in r.json()["error"]["message"]
    r = httpx.post(f"{edge.url}/v1/modules/nope", json={"inputs": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "inputs"


def test_an_upstream_that_is_down_is_a_503(edges: Edges) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    edge = edges.start(f"grpc://127.0.0.1:{port}")
    r = httpx.get(f"{edge.url}/v1/models", timeout=30)
    assert r.status_code == 503 and r.json()["error"]["status"] == "UNAVAILABLE"


async def _refuses(kind: str) -> str:
    errors = {
        "exhausted": lazygrpc.ResourceExhausted("the pool is full"),
        "denied": lazygrpc.PermissionDenied("not for you"),
        "missing": lazygrpc.NotFound("no such document"),
        "unavailable": lazygrpc.Unavailable("warming up"),
        "bug": KeyError("oops"),
    }
    raise errors[kind]


@pytest.mark.parametrize(
    ("kind", "status", "retry_after"),
    [
        ("exhausted", 429, "1"),
        ("denied", 403, None),
        ("missing", 404, None),
        ("unavailable", 503, None),
        ("bug", 500, None),
    ],
)
def test_grpc_codes_map_to_http_statuses(
    servers: Any, edges: Edges, kind: str, status: int, retry_after: str | None
) -> None:
    edge = edges.start(servers.modules({"refuses": _refuses}, name="leaf"))
    r = httpx.post(f"{edge.url}/v1/modules/refuses", json={"input": kind})
    assert r.status_code == status, r.text
    assert r.headers.get("retry-after") == retry_after
    assert [f["service"] for f in r.json()["error"]["chain"]] == ["edge", "leaf"]


def test_the_edges_default_timeout_is_the_deadline_without_a_header(
    servers: Any, edges: Edges
) -> None:
    edge = edges.start(servers.modules({"sleepy": _sleepy}, name="leaf"), request_timeout=0.2)
    r = httpx.post(f"{edge.url}/v1/modules/sleepy", json={"input": "x"}, timeout=10)
    assert r.status_code == 504


def test_completions_and_options_are_checked_by_name(
    model_edge: tuple[str, lazygrpc.Edge],
) -> None:
    _, edge = model_edge
    cases = [
        ("/v1/completions", {"model": "markov", "prompt": 5}, {}, "prompt"),
        ("/v1/completions", {"model": "markov", "prompt": "x", "n": 3}, {}, "n"),
        (
            "/v1/chat/completions",
            {"model": "markov", "messages": HELLO, "stream_options": {"include_usage": True}},
            {},
            "stream_options",
        ),
        (
            "/v1/chat/completions",
            {"model": "markov", "messages": HELLO, "stream": True},
            {"x-lazy-events": "everything"},
            "x-lazy-events",
        ),
    ]
    for path, body, headers, param in cases:
        r = httpx.post(f"{edge.url}{path}", json=body, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
