"""ModelService: streaming chunks, presets, overrides, share() isolation, bad input."""

from __future__ import annotations

import asyncio
from concurrent import futures
from typing import Any

import grpc
import pytest

import lazygrpc
from lazygrpc.backends.base import SamplingParams
from lazygrpc.server.model import KNOWN_PARAMS
from lazygrpc.v1 import model_pb2, model_pb2_grpc


def test_generate_streams_contiguous_indexes_and_final_usage(servers: Any) -> None:
    url = servers.model("echo", token_delay=0.002)
    chunks = list(lazygrpc.LLM(url).chunks("one two three four five six"))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert len(chunks) >= 2
    assert "".join(c.text for c in chunks) == "one two three four five six"
    last = chunks[-1]
    assert last.finish_reason == model_pb2.FINISH_REASON_STOP
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (6, 6)
    assert last.usage.total_tokens == 12
    assert all(not c.HasField("usage") for c in chunks[:-1])


def test_complete_returns_the_aggregate_and_usage_flows_back(servers: Any) -> None:
    url = servers.model("echo")
    with lazygrpc.session() as s:
        assert lazygrpc.LLM(url)("a b c") == "a b c"
        assert lazygrpc.LLM(url)("d e") == "d e"
        assert s.get("usage") == {
            "prompt_tokens": 5,
            "completion_tokens": 5,
            "total_tokens": 10,
            "calls": 2,
        }


def test_presets_stay_hidden_and_only_settable_params_are_listed(servers: Any) -> None:
    url = servers.model(
        "echo",
        presets=SamplingParams(max_tokens=3, temperature=0.1),
        settable={"temperature": KNOWN_PARAMS["temperature"]},
    )
    info = lazygrpc.LLM(url).info()
    assert info["settable_params"] == {"temperature": (0.0, 2.0)}
    assert "max_tokens" not in str(info)
    # The preset max_tokens applies, and the caller cannot lift it.
    assert lazygrpc.LLM(url)("a b c d e f") == "a b c"
    with pytest.raises(lazygrpc.RemoteError) as info_err:
        lazygrpc.LLM(url)("a b c d", max_tokens=10)
    assert info_err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'max_tokens' is not settable" in info_err.value.message


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"temperature": 2.5}, "'temperature'"),
        ({"top_p": -0.1}, "'top_p'"),
        ({"max_tokens": 5000}, "'max_tokens'"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "'stop'"),
        ({"stop": ["x" * 65]}, "'stop'"),
        ({"top_k": 5}, "'top_k'"),
    ],
)
def test_bad_params_get_invalid_argument_naming_the_param(
    servers: Any, params: dict[str, Any], named: str
) -> None:
    url = servers.model("echo")
    llm = lazygrpc.LLM(url)
    with pytest.raises(lazygrpc.RemoteError) as info:
        llm("hello", **params)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert named in info.value.message
    assert llm("still serving") == "still serving"


def test_stop_strings_end_the_answer(servers: Any) -> None:
    url = servers.model("echo")
    llm = lazygrpc.LLM(url)
    assert llm("alpha beta. gamma delta", stop=["."]) == "alpha beta"
    chunks = list(llm.chunks("alpha beta gamma", stop=["gamma"]))
    assert chunks[-1].finish_reason == model_pb2.FINISH_REASON_STOP
    assert "".join(c.text for c in chunks).strip() == "alpha beta"


def test_empty_prompt_is_invalid(servers: Any) -> None:
    with pytest.raises(lazygrpc.RemoteError) as info:
        lazygrpc.LLM(servers.model("echo"))("")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.message.startswith("input:")


def test_shares_keep_their_own_prompt_and_params_under_concurrency(servers: Any) -> None:
    url = servers.model("echo", token_delay=0.001)
    base = lazygrpc.LLM(url)
    french = base.share(prompt="FR {input} FIN", max_tokens=50)
    shout = base.share(prompt="LOUD {input} END", max_tokens=3)
    assert french.target == shout.target == base.target

    def run(i: int) -> tuple[str, str]:
        llm = french if i % 2 else shout
        return ("fr" if i % 2 else "loud"), llm(f"q{i} x y z")

    with futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(run, range(50)))
    for i, (which, out) in enumerate(results):
        if which == "fr":
            assert out == f"FR q{i} x y z FIN"
        else:
            assert out == f"LOUD q{i} x"  # its own max_tokens=3
    assert base.prompt is None and base.params == {}

    async def both() -> list[str]:
        try:
            return await asyncio.gather(
                *(french.acall(f"a{i}") if i % 2 else shout.acall(f"b{i} c d e") for i in range(50))
            )
        finally:
            await lazygrpc.client.channels.aclose_all()

    outs = asyncio.run(both())
    for i, out in enumerate(outs):
        assert out == (f"FR a{i} FIN" if i % 2 else f"LOUD b{i} c")


def test_instances_for_one_target_share_one_channel(servers: Any) -> None:
    from lazygrpc.client import channels

    url = servers.model("echo")
    a, b = lazygrpc.LLM(url), lazygrpc.LLM(url).share(prompt="{input}!")
    assert channels.sync_channel(a.target) is channels.sync_channel(b.target)
    a("x"), b("y")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1",
        "grpc://127.0.0.1",
        "grpc://:50051",
        "grpc://h:notaport",
        "grpc://h:99999",
        42,
    ],
)
def test_bad_urls_raise_value_error_naming_the_url(url: Any) -> None:
    with pytest.raises(ValueError, match="invalid lazygrpc URL"):
        lazygrpc.LLM(url)
    with pytest.raises(ValueError, match="invalid lazygrpc URL"):
        lazygrpc.connect(url)


def test_markov_backend_streams_deterministically_with_a_seed(servers: Any) -> None:
    url = servers.model("markov")
    llm = lazygrpc.LLM(url)
    a = llm("How does backpressure work?", seed=7, max_tokens=20)
    b = llm("How does backpressure work?", seed=7, max_tokens=20)
    assert a == b and len(a.split()) >= 5


def test_raw_grpc_stub_sees_the_contract(servers: Any) -> None:
    url = servers.model("echo")
    with grpc.insecure_channel(url.removeprefix("grpc://")) as ch:
        stub = model_pb2_grpc.ModelServiceStub(ch)
        resp = stub.Complete(
            model_pb2.GenerateRequest(
                messages=[model_pb2.ChatMessage(role="user", content="hi there")],
                params=model_pb2.GenerationParams(max_tokens=2),
            ),
            timeout=10,
        )
    assert resp.text == "user: hi"
    assert resp.finish_reason == model_pb2.FINISH_REASON_LENGTH


@pytest.mark.parametrize("method", ["stream", "astream"])
def test_an_llm_stream_serves_as_a_streaming_module(servers: Any, method: str) -> None:
    """`add_modules({"chat": llm.stream})`: a model behind a module keeps streaming."""
    llm = lazygrpc.LLM(servers.model("echo"))
    url = servers.modules({"chat": getattr(llm.share(), method)}, name="chat")
    remote = lazygrpc.connect(f"{url}/chat")
    events = list(remote.stream("one two three"))
    assert [e.kind for e in events[:-1]] == ["delta"] * (len(events) - 1)  # maybe coalesced
    assert events[-1].kind == "result"
    assert "".join(e.value for e in events[:-1]) == events[-1].value == "one two three"
    assert remote("four five") == "four five"


def test_a_partial_of_llm_astream_still_serves_as_a_streaming_module(servers: Any) -> None:
    """`LLM.astream` returns its stream (no generator of its own); bound with
    `functools.partial` it is still served as a stream, as an async generator function is."""
    import functools

    llm = lazygrpc.LLM(servers.model("echo"))
    url = servers.modules({"chat": functools.partial(llm.astream, max_tokens=2)}, name="chat")
    remote = lazygrpc.connect(f"{url}/chat")
    events = list(remote.stream("one two three"))
    assert events[-1].kind == "result" and events[-1].value == "one two"
    assert all(e.kind == "delta" for e in events[:-1])
