"""The `lazygrpc` command, run as a subprocess against real servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from conftest import ROOT, start_cli
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lazygrpc.v1 import model_pb2, model_pb2_grpc

FIXTURE = "tests/fixtures/cli_modules.py"
HealthStatus = health_pb2.HealthCheckResponse


def lazygrpc_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lazygrpc", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**os.environ},
    )


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """`lazygrpc serve` of the fixture modules; yields `grpc://127.0.0.1:PORT`."""
    proc, address = start_cli(
        "serve",
        f"{FIXTURE}:whoami",
        f"{FIXTURE}:remember",
        f"{FIXTURE}:count",
        "--port",
        "0",
    )
    try:
        yield f"grpc://{address}"
    finally:
        stop(proc)


def test_serve_prints_listening_line_first() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lazygrpc", "serve", f"{FIXTURE}:whoami", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", first)
        assert match, first
        assert int(match.group(1)) > 0
        with grpc.insecure_channel(f"127.0.0.1:{match.group(1)}") as ch:
            grpc.channel_ready_future(ch).result(timeout=10)
    finally:
        stop(proc)


def test_call_sends_session_and_globals(served: str) -> None:
    result = lazygrpc_cli(
        "call",
        f"{served}/whoami",
        '{"q": [1, 2]}',
        "--session",
        "cli-session.1",
        "--global",
        "user=alice",
        "--global",
        "n=3",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "input": {"q": [1, 2]},
        "session_id": "cli-session.1",
        "globals": {"user": "alice", "n": 3},
    }


def test_call_without_session_gets_a_fresh_one(served: str) -> None:
    result = lazygrpc_cli("call", f"{served}/whoami", "plain text")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["input"] == "plain text"
    assert out["session_id"]
    assert out["globals"] == {}


def test_call_prints_globals_changed_downstream(served: str) -> None:
    result = lazygrpc_cli("call", f"{served}/remember", '{"k": "v"}')
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    assert 'globals: {"seen": {"k": "v"}}' in result.stderr


def test_call_stream_prints_deltas_and_intermediates(served: str) -> None:
    result = lazygrpc_cli("call", f"{served}/count", "6", "--stream")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "0 1 2 3 4 5 \n"
    assert '[count] {"halfway": 3}' in result.stderr


def test_call_unknown_module_fails_with_status(served: str) -> None:
    result = lazygrpc_cli("call", f"{served}/nope", "1")
    assert result.returncode == 1
    assert "NOT_FOUND" in result.stderr
    assert "'nope'" in result.stderr


def test_health_exits_zero_when_serving(served: str) -> None:
    result = lazygrpc_cli("health", served)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": SERVING")


def test_stats_prints_open_topics(served: str) -> None:
    result = lazygrpc_cli("stats", served)
    assert result.returncode == 0, result.stderr
    assert "open_topics: 0" in result.stdout.splitlines()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (f"{FIXTURE}:missing", "has no attribute 'missing'"),
        ("tests/fixtures/no_such_file.py:fn", "no such file"),
        ("not-a-spec", "must look like FILE.py:NAME"),
    ],
)
def test_serve_bad_spec_exits_nonzero_naming_it(spec: str, expected: str) -> None:
    result = lazygrpc_cli("serve", spec, "--port", "0")
    assert result.returncode != 0
    assert "listening on" not in result.stdout
    assert repr(spec) in result.stderr
    assert expected in result.stderr


def test_sigterm_drains_active_stream_then_exits_zero() -> None:
    # No drain notice: the refusal of new work once NOT_SERVING is under test.
    proc, address = start_cli(
        "serve-model", "--backend", "echo", "--token-delay", "0.05", "--grace", "5",
        "--drain-notice", "0",
    )  # fmt: skip
    words = [f"w{i}" for i in range(40)]  # 40 tokens x 50 ms: ~2 s of stream left to drain
    stream_channel = grpc.insecure_channel(address)
    probe_channel = grpc.insecure_channel(address)
    try:
        health = health_pb2_grpc.HealthStub(probe_channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=10)
        assert next(watch).status == HealthStatus.SERVING

        stream = model_pb2_grpc.ModelServiceStub(stream_channel).Generate(
            model_pb2.GenerateRequest(input=" ".join(words)), timeout=20
        )
        chunks = [next(stream)]  # the stream is in flight before the signal

        proc.send_signal(signal.SIGTERM)

        # Health flips while the stream drains, and the server still answers on a new call.
        assert next(watch).status == HealthStatus.NOT_SERVING
        watch.cancel()
        check = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert check.status == HealthStatus.NOT_SERVING

        # New work is refused.
        with pytest.raises(grpc.RpcError) as refused:
            model_pb2_grpc.ModelServiceStub(probe_channel).Complete(
                model_pb2.GenerateRequest(input="too late"), timeout=5
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        # The stream started before the signal finishes completely.
        chunks.extend(stream)
        assert [c.index for c in chunks] == list(range(len(chunks)))
        assert "".join(c.text for c in chunks) == " ".join(words)
        assert chunks[-1].finish_reason == model_pb2.FINISH_REASON_STOP
        assert chunks[-1].usage.completion_tokens == len(words)

        assert proc.wait(timeout=15) == 0
    finally:
        stream_channel.close()
        probe_channel.close()
        stop(proc)
