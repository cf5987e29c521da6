"""The demo pipeline: client → gateway → retriever → model, usage flowing back, failures chained."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import grpc
import pytest

import lazygrpc
from lazygrpc.demo import modules as demo
from tests.conftest import ROOT


@pytest.fixture
def gateway(servers: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    model = servers.model("echo", server_name="model")
    monkeypatch.setenv(demo.MODEL_URL_ENV, model)
    retriever = servers.modules({"rag": demo.rag}, name="retriever")
    monkeypatch.setenv(demo.RETRIEVER_URL_ENV, retriever)
    return servers.modules({"ask": demo.ask}, name="gateway")


def test_three_hops_bring_the_models_usage_back_to_the_client(gateway: str) -> None:
    with lazygrpc.session() as s:
        events = list(lazygrpc.connect(f"{gateway}/ask").stream("What is a session?"))
        usage = s.get("usage")
    kinds = [(e.kind, e.source) for e in events]
    assert kinds[0] == ("intermediate", "ask")
    assert events[1].kind == "intermediate" and events[1].source == "rag"
    assert [p["source"] for p in events[1].value["passages"]]
    assert ("intermediate", "rag") in kinds[:4] and events[2].value == "generating…"
    answer = "".join(e.value for e in events if e.kind == "delta")
    assert events[-1].kind == "result" and events[-1].value == answer
    # The echo model streams its prompt back: the instructions and the retrieved notes,
    # cut at the pipeline's max_tokens=60.
    assert answer.startswith("Answer the question from these notes.")
    assert usage is not None and usage["calls"] == 1
    assert usage["completion_tokens"] == 60
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert s.get("question") == "What is a session?"


def test_a_question_that_explodes_shows_the_chain(gateway: str) -> None:
    with pytest.raises(lazygrpc.RemoteError) as info:
        list(lazygrpc.connect(f"{gateway}/ask").stream("please explode"))
    err = info.value
    assert err.code == grpc.StatusCode.UNKNOWN
    assert err.remote_type == "RetrievalError"
    assert [(f.service, f.method) for f in err.chain] == [("gateway", "ask"), ("retriever", "rag")]
    assert str(err).startswith("gateway.ask → retriever.rag: RetrievalError: ")


def test_cli_call_prints_the_chain(gateway: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lazygrpc", "call", f"{gateway}/ask", "please explode", "--stream"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 1
    assert "gateway.ask → retriever.rag: RetrievalError" in result.stderr
    assert "1. gateway.ask" in result.stderr and "2. retriever.rag" in result.stderr
    assert "raise RetrievalError" in result.stderr  # loopback servers expose tracebacks


def test_lazygrpc_up_demo_streams_an_answer_and_stops_cleanly() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lazygrpc",
            "up",
            "--demo",
            "How do deadlines work?",
            "--token-delay",
            "0",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # The mesh is gone when the demo ends: no commands for its ports, a pointer to `up`.
    # (Only the lines before the answer: the markov answer is drawn from the docs and may
    # itself say "grpcurl".)
    before_answer = out.split("\nQ: ", 1)[0]
    assert "\ntry:" not in before_answer and " call grpc://" not in before_answer
    assert "Ctrl-C or SIGTERM" not in out
    assert out.rstrip().endswith("prints commands to try on it.")
    assert "[rag] retrieved:" in out and "A: " in out
    assert '"completion_tokens"' in out and "mesh stopped." in out


def _up_demo() -> tuple[subprocess.Popen[str], list[str]]:
    """`lazygrpc up` (the bundled demo mesh file) and its stdout up to the Ctrl-C line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lazygrpc", "up", "--token-delay", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Ctrl-C or SIGTERM stops the mesh"):
            return proc, lines
    proc.kill()
    raise AssertionError(f"`up` ended early: {proc.communicate()}")


def _url(lines: list[str], name: str) -> str:
    return next(line.split()[1] for line in lines if line.strip().startswith(name))


def test_lazygrpc_up_stops_every_service_on_ctrl_c() -> None:
    import signal

    import psutil

    proc, lines = _up_demo()
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) == 4  # model, retriever, gateway, edge
    gateway = _url(lines, "gateway")
    assert gateway.endswith("/ask") and _url(lines, "edge").startswith("http://")
    # While the mesh runs it offers commands for its own live ports.
    assert any(f"call {gateway} 'What is a session?'" in line for line in lines)
    assert any("grpcurl -plaintext" in line for line in lines)
    assert lazygrpc.connect(gateway)("What is a session?", max_tokens=5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "mesh stopped." in out
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive


def test_lazygrpc_up_restarts_a_demo_service_that_was_killed() -> None:
    """The demo runs through the mesh-file supervisor: a SIGKILLed child is reported on
    stderr, started again on its port, and the mesh answers again (issue 17)."""
    import signal

    import psutil

    proc, lines = _up_demo()
    assert proc.stderr is not None
    try:
        gateway = _url(lines, "gateway")
        retriever = _url(lines, "retriever")
        port = retriever.rsplit(":", 1)[1].split("/")[0]
        victim = next(
            c for c in psutil.Process(proc.pid).children() if port in " ".join(c.cmdline())
        )
        victim.kill()
        died = f"retriever (pid {victim.pid}) exited with -9; restarting"
        for wanted in (died, "retriever is ready"):  # the report, then health says SERVING
            while wanted not in (line := proc.stderr.readline()):
                assert line, f"`up` ended before {wanted!r}"
        with lazygrpc.session():
            events = list(lazygrpc.connect(gateway, timeout=30).stream("What is a session?"))
        assert events[-1].kind == "result" and events[-1].value
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            for p in [*psutil.Process(proc.pid).children(recursive=True), proc]:
                p.kill()
        proc.communicate(timeout=30)
