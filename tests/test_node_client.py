"""The Node.js client examples (clients/node, @grpc/grpc-js) against real lazygrpc servers."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Any

import grpc
import pytest
from conftest import ROOT

import lazygrpc
from lazygrpc.backends import make_backend
from lazygrpc.server.model import ModelConfig

NODE_DIR = ROOT / "clients" / "node"
NODE = shutil.which("node")


@pytest.fixture(autouse=True)
def _node_ready() -> None:
    assert NODE is not None, "node not found on PATH (Node.js 18+ runs clients/node)"
    assert (NODE_DIR / "node_modules").is_dir(), "run `make node` to install clients/node"


def node(script: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run(
        [NODE, script, *args], capture_output=True, text=True, cwd=NODE_DIR, timeout=timeout
    )


class MetadataRecorder(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Keeps the invocation metadata of every call the server receives."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        md = {k: v for k, v in handler_call_details.invocation_metadata or () if isinstance(v, str)}
        self.calls.append((handler_call_details.method, md))
        return await continuation(handler_call_details)


def test_generate_prints_chunks_as_they_arrive(servers: Any) -> None:
    recorder = MetadataRecorder()

    async def build() -> lazygrpc.Server:
        s = lazygrpc.Server(interceptors=[recorder])
        s.add_model(ModelConfig(make_backend("echo", token_delay=0.05)))
        await s.start()
        return s

    server = servers.call(build)
    servers.started.append(server)
    words = [f"tok{i}" for i in range(8)]

    assert NODE is not None
    proc = subprocess.Popen(
        [NODE, "generate.js", server.address, " ".join(words), "--session", "node-s1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=NODE_DIR,
    )
    assert proc.stdout is not None
    arrivals: list[float] = []
    chunks: list[dict[str, Any]] = []
    for line in proc.stdout:
        arrivals.append(time.monotonic())
        chunks.append(json.loads(line))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err

    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c["text"] for c in chunks) == " ".join(words)
    *body, last = chunks
    assert all(c["usage"] is None for c in body)
    assert all(c["finish_reason"] == "FINISH_REASON_UNSPECIFIED" for c in body)
    assert last["finish_reason"] == "FINISH_REASON_STOP"
    assert last["usage"] == {
        "prompt_tokens": len(words),
        "completion_tokens": len(words),
        "total_tokens": 2 * len(words),
    }
    # Printed as produced (8 tokens x 50 ms), not all at once when the stream ends.
    assert arrivals[-1] - arrivals[0] > 0.2

    method, md = recorder.calls[-1]
    assert method == "/lazygrpc.v1.ModelService/Generate"
    assert md["lazy-session-id"] == "node-s1"
    assert "lazy.user=%22node%22" in md["baggage"].split(",")


def test_call_sends_session_and_globals(servers: Any) -> None:
    def whoami(value: Any) -> dict[str, Any]:
        return {"input": value, "sid": lazygrpc.session_id(), "globals": dict(lazygrpc.globals)}

    url = servers.modules({"whoami": whoami})
    result = node(
        "call.js",
        f"{url}/whoami",
        '{"a": [1, 2.5, true, null, "x"]}',
        "--session",
        "node-s2",
        "--global",
        "user=ann",
        "--global",
        'tags=["a","b"]',
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "output": {
            "input": {"a": [1, 2.5, True, None, "x"]},
            "sid": "node-s2",
            "globals": {"user": "ann", "tags": ["a", "b"]},
        }
    }


def test_call_stream_prints_events(servers: Any) -> None:
    def count(n: int) -> Any:
        yield from range(int(n))

    url = servers.modules({"count": count})
    result = node("call.js", url, "count", "3", "--stream")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert events[-1] == {
        "seq": len(events) - 1,
        "source": "count",
        "kind": "result",
        "value": [0, 1, 2],
    }
    assert [e["value"] for e in events if e["kind"] == "delta"] == [0, 1, 2]


@pytest.mark.parametrize("stream", [False, True], ids=["Call", "Stream"])
def test_call_error_prints_chain_entry_to_failure(servers: Any, stream: bool) -> None:
    def check(value: Any) -> None:
        raise ValueError(f"bad input {value!r}")

    inner_url = servers.modules({"check": check}, name="validator")

    def answer(value: Any) -> Any:
        return lazygrpc.connect(f"{inner_url}/check")(value)

    outer_url = servers.modules({"answer": answer}, name="gateway")
    args = ["call.js", f"{outer_url}/answer", '"q1"', "--session", "node-err-1"]
    result = node(*args, *(["--stream"] if stream else []))
    assert result.returncode == 1, result.stderr

    error = json.loads(result.stdout)["error"]
    assert error["code"] == "UNKNOWN"
    assert error["reason"] == "ValueError"
    assert error["domain"] == "lazygrpc"
    assert error["metadata"]["session_id"] == "node-err-1"
    entry, failure = error["frames"]
    assert (entry["service"], entry["method"]) == ("gateway", "answer")
    assert (failure["service"], failure["method"]) == ("validator", "check")
    assert entry["error_type"] == failure["error_type"] == "ValueError"
    assert failure["message"] == "bad input 'q1'"
    assert "bad input 'q1'" in entry["message"]
    assert "raise ValueError" in failure["traceback"]  # loopback servers expose tracebacks
    assert entry["session_id"] == failure["session_id"] == "node-err-1"
    assert entry["pid"] == failure["pid"] > 0
    assert entry["time"] >= failure["time"]  # ISO 8601: the failure happened first
    assert error["chain"] == "gateway.answer → validator.check: ValueError: bad input 'q1'"
    assert "gateway.answer → validator.check" in result.stderr
