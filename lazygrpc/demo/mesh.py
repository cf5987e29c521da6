"""`lazygrpc up`: a local demo mesh (model, retriever, gateway, and the HTTP edge in front)
as subprocesses."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lazygrpc.demo.modules import MODEL_URL_ENV, RETRIEVER_URL_ENV

READY_TIMEOUT = 30.0


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[str]
    address: str
    metrics: str = ""  # the /metrics URL when it serves one


def _spawn(name: str, args: Sequence[str], env: dict[str, str]) -> Child:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lazygrpc", *args],
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{name} did not start (printed {line!r})")
    metrics = ""
    if "--metrics-port" in args:  # its second line names the endpoint
        metrics = proc.stdout.readline().split()[-1]
    # Keep draining stdout so the child never blocks on a full pipe.
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return Child(name, proc, line.split()[-1], metrics)


def _wait_serving(child: Child) -> None:
    with grpc.insecure_channel(child.address) as ch:
        grpc.channel_ready_future(ch).result(READY_TIMEOUT)
        resp = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=READY_TIMEOUT
        )
    if resp.status != health_pb2.HealthCheckResponse.SERVING:
        raise RuntimeError(f"{child.name} at {child.address} is not SERVING")


def _stop(children: Sequence[Child], grace: float = 5.0) -> None:
    for c in children:
        if c.proc.poll() is None:
            c.proc.send_signal(signal.SIGTERM)
    for c in children:
        try:
            c.proc.wait(grace + 2)
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()


def start_mesh(
    token_delay: float,
    base_port: int = 0,
    otel: bool = False,
    log_args: Sequence[str] = (),
    metrics_port: int | None = None,
) -> list[Child]:
    """Start model → retriever → gateway, each waiting for the one it calls; with
    `metrics_port`, each serves /metrics on it plus its index (0: free ports)."""

    def port(i: int) -> str:
        return str(base_port + i if base_port else 0)

    def metrics(i: int) -> list[str]:
        if metrics_port is None:
            return []
        return ["--metrics-port", str(metrics_port + i if metrics_port else 0)]

    extra = ["--expose-tracebacks", *(["--otel"] if otel else []), *log_args]
    children: list[Child] = []
    try:
        children.append(
            _spawn(
                "model",
                [
                    "serve-model",
                    "--backend",
                    "markov",
                    "--name",
                    "model",
                    "--port",
                    port(0),
                    "--token-delay",
                    str(token_delay),
                    "--preset",
                    "temperature=0.8",
                    *extra,
                    *metrics(0),
                ],
                {},
            )
        )
        model_url = f"grpc://{children[0].address}"
        children.append(
            _spawn(
                "retriever",
                [
                    "serve",
                    "lazygrpc.demo.modules:rag",
                    "--name",
                    "retriever",
                    "--port",
                    port(1),
                    *extra,
                    *metrics(1),
                ],
                {MODEL_URL_ENV: model_url},
            )
        )
        children.append(
            _spawn(
                "gateway",
                [
                    "serve",
                    "lazygrpc.demo.modules:ask",
                    "--name",
                    "gateway",
                    "--port",
                    port(2),
                    *extra,
                    *metrics(2),
                ],
                {RETRIEVER_URL_ENV: f"grpc://{children[1].address}"},
            )
        )
        for c in children:
            _wait_serving(c)
        if edge_available():
            # The edge prints `listening on` once it accepts: ready like the others.
            upstreams = [f"--upstream=grpc://{c.address}" for c in reversed(children)]
            args = ["edge", *upstreams, "--port", port(3), "--expose-tracebacks"]
            children.append(_spawn("edge", args, {}))
    except BaseException:
        _stop(children)
        raise
    return children


def edge_available() -> bool:
    """Whether the `edge` extra (starlette, uvicorn) is installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("starlette", "uvicorn"))


def ask(gateway: str, question: str) -> int:
    """Stream one answer through the mesh to the terminal; 0 on success."""
    import lazygrpc

    ask_module = lazygrpc.connect(f"grpc://{gateway}/ask", timeout=60)
    print(f"\nQ: {question}")
    with lazygrpc.session() as s:
        started = False
        try:
            for ev in ask_module.stream(question):
                if ev.kind == "intermediate":
                    print(f"  [{ev.source}] {_describe(ev.value)}", flush=True)
                elif ev.kind == "delta":
                    if not started:
                        print("A: ", end="")
                        started = True
                    print(ev.value, end="", flush=True)
            print()
        except lazygrpc.RemoteError as exc:
            print()
            print(exc.report(), file=sys.stderr)
            return 1
        print(f"session {s.id} usage: {json.dumps(s.get('usage'))}")
    return 0


def _command(name: str) -> str:
    """`name` as the user can paste it: bare when on PATH, else next to this Python."""
    if shutil.which(name):
        return name
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside.relative_to(Path.cwd()) if beside.is_relative_to(Path.cwd()) else beside)
    return f"{sys.executable} -m lazygrpc" if name == "lazygrpc" else name


def _describe(value: object) -> str:
    if isinstance(value, dict) and "passages" in value:
        return "retrieved: " + "; ".join(f"{p['source']} ({p['score']})" for p in value["passages"])
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def run_mesh(
    question: str | None,
    token_delay: float,
    base_port: int = 0,
    otel: bool = False,
    log_args: Sequence[str] = (),
    metrics_port: int | None = None,
) -> int:
    children = start_mesh(token_delay, base_port, otel, log_args, metrics_port)
    model, retriever, gateway = (c.address for c in children[:3])
    print("lazygrpc demo mesh is up:")
    print(f"  model      grpc://{model}        (ModelService, markov backend)")
    print(f"  retriever  grpc://{retriever}/rag")
    print(f"  gateway    grpc://{gateway}/ask")
    edge = f"http://{children[3].address}" if len(children) > 3 else None
    if edge:
        print(f"  edge       {edge}/v1   (OpenAI's API; models: ask, rag, model)")
        print(f"  chat page  {edge}/")
    else:
        print("  (no HTTP edge: pip install 'lazygrpc[edge]' adds it and the chat page)")
    for c in children:
        if c.metrics:
            print(f"  metrics    {c.name}: {c.metrics}")
    lazy = _command("lazygrpc")
    code = 0
    try:
        if question is not None:
            code = ask(gateway, question)
        else:
            # Commands to try only for a mesh that stays up: the ports are live until Ctrl-C.
            _print_try(lazy, _command("grpcurl"), gateway, edge)
            print("Ctrl-C stops the mesh.", flush=True)
            signal.sigwait({signal.SIGINT, signal.SIGTERM}) if _block_signals() else None
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping the mesh…", flush=True)
        _stop(children)
    print("mesh stopped.")
    if question is not None:
        print(f"`{lazy} up` keeps a mesh up until Ctrl-C and prints commands to try on it.")
    return code


def _print_try(lazy: str, grpcurl: str, gateway: str, edge: str | None = None) -> None:
    print("try:")
    print(f"  {lazy} call grpc://{gateway}/ask 'What is a session?' --stream")
    print(f"  {lazy} call grpc://{gateway}/ask 'please explode' --stream   # an exception chain")
    print(
        f"  {grpcurl} -plaintext -d "
        f"""'{{"module": "ask", "input": "How do deadlines work?"}}' """
        f"{gateway} lazygrpc.v1.ModuleService/Stream"
    )
    if edge:
        print(
            f"  curl -N {edge}/v1/chat/completions -H 'content-type: application/json' "
            """-d '{"model": "ask", "stream": true, """
            """"messages": [{"role": "user", "content": "What is a session?"}]}'"""
        )


def _block_signals() -> bool:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    return True
