"""The `lazygrpc` command: serve-model, serve, call, health, stats, up."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import grpc

from lazygrpc.client import channels
from lazygrpc.core.errors import RemoteError


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _key_values(pairs: Sequence[str], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise SystemExit(f"lazygrpc: {what} {pair!r} must look like KEY=VALUE")
        out[key] = _json_or_text(value)
    return out


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    p.add_argument("--name", help="service name used in call chains")
    p.add_argument(
        "--grace", type=float, default=5.0, help="seconds in-flight calls get on shutdown"
    )
    p.add_argument(
        "--expose-tracebacks",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send tracebacks in error chains (default: only when bound to loopback)",
    )
    p.add_argument("--otel", action="store_true", help="OpenTelemetry spans (extra `otel`)")
    p.add_argument("--topic-events", type=int, default=None, help="events per stream topic")
    p.add_argument("--topic-bytes", type=int, default=None, help="bytes per stream topic")
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate file")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key file")
    p.add_argument("--tls-client-ca", metavar="PEM", help="require client certs from this CA")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--auth-token-env", metavar="NAME", help="bearer token from env var NAME")
    auth.add_argument("--auth-token-file", metavar="PATH", help="bearer token from a file")


def _security(args: argparse.Namespace) -> dict[str, Any]:
    """`Server`'s tls and auth from the flags (secrets only from env vars or files)."""
    from lazygrpc.server.security import BearerToken, TLSConfig

    out: dict[str, Any] = {}
    if args.tls_cert or args.tls_key or args.tls_client_ca:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("lazygrpc: TLS needs both --tls-cert and --tls-key")
        out["tls"] = TLSConfig(args.tls_cert, args.tls_key, args.tls_client_ca)
    try:
        if args.auth_token_env:
            out["auth"] = BearerToken.from_env(args.auth_token_env)
        elif args.auth_token_file:
            out["auth"] = BearerToken.from_file(args.auth_token_file)
    except ValueError as exc:
        raise SystemExit(f"lazygrpc: {exc}") from None
    return out


def _build_server(args: argparse.Namespace) -> Any:
    from lazygrpc.server.builder import Server

    topic = {
        k: v
        for k, v in (("topic_events", args.topic_events), ("topic_bytes", args.topic_bytes))
        if v is not None
    }
    security = _security(args)
    try:
        return Server(
            name=args.name,
            host=args.host,
            port=args.port,
            grace=args.grace,
            expose_tracebacks=args.expose_tracebacks,
            telemetry=args.otel,
            **topic,
            **security,
        )
    except ValueError as exc:  # an unreadable TLS file, named
        raise SystemExit(f"lazygrpc: {exc}") from None


async def _serve(server: Any) -> int:
    port = await server.start()
    print(f"listening on {server.host}:{port}", flush=True)
    await server.wait()
    return 0


def cmd_serve_model(args: argparse.Namespace) -> int:
    from lazygrpc.backends import make_backend
    from lazygrpc.server.model import KNOWN_PARAMS, ModelConfig, presets_from

    backend = make_backend(args.backend, token_delay=args.token_delay, name=args.model_name)
    presets = presets_from(_key_values(args.preset, "--preset"))
    kwargs: dict[str, Any] = {"presets": presets}
    if args.settable is not None:
        names = [n for n in args.settable.split(",") if n]
        unknown = [n for n in names if n not in KNOWN_PARAMS]
        if unknown:
            raise SystemExit(f"lazygrpc: unknown settable params {unknown!r}")
        kwargs["settable"] = {n: KNOWN_PARAMS[n] for n in names}

    async def run() -> int:
        server = _build_server(args)
        server.add_model(ModelConfig(backend, **kwargs))
        return await _serve(server)

    return asyncio.run(run())


def cmd_serve(args: argparse.Namespace) -> int:
    from lazygrpc.server.module_spec import load_target

    sys.path.insert(0, ".")
    try:
        modules = dict(load_target(spec) for spec in args.targets)
    except ValueError as exc:
        raise SystemExit(f"lazygrpc: {exc}") from None

    async def run() -> int:
        server = _build_server(args)
        server.add_modules(modules)
        return await _serve(server)

    return asyncio.run(run())


def cmd_call(args: argparse.Namespace) -> int:
    from lazygrpc.client.llm import LLM
    from lazygrpc.client.remote import RemoteModule
    from lazygrpc.core.context import session

    _, module = channels.parse_url(args.url)
    with session(args.session, **_key_values(args.set_global, "--global")) as s:
        try:
            if module:
                remote = RemoteModule(args.url, timeout=args.timeout)
                value = _json_or_text(args.input)
                if args.stream:
                    for ev in remote.stream(value):
                        if ev.kind == "delta":
                            text = ev.value if isinstance(ev.value, str) else json.dumps(ev.value)
                            print(text, end="", flush=True)
                        elif ev.kind == "intermediate":
                            print(f"[{ev.source}] {_show(ev.value)}", file=sys.stderr, flush=True)
                        else:
                            print() if isinstance(ev.value, str) else print(json.dumps(ev.value))
                else:
                    print(_show(remote(value)))
            else:
                llm = LLM(args.url, timeout=args.timeout)
                if args.stream:
                    for delta in llm.stream(args.input):
                        print(delta, end="", flush=True)
                    print()
                else:
                    print(llm(args.input))
        except RemoteError as exc:
            print(exc.report(), file=sys.stderr)
            return 1
        if s.values():
            print(f"globals: {json.dumps(s.values(), ensure_ascii=False)}", file=sys.stderr)
    return 0


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def cmd_health(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target, _ = channels.parse_url(args.url)
    with channels.open_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            resp = stub.Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as err:
            print(f"{target}: {err.code().name} {err.details()}", file=sys.stderr)
            return 2
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(f"{target}: {status}")
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1


def cmd_stats(args: argparse.Namespace) -> int:
    from lazygrpc.client.credentials import metadata_source
    from lazygrpc.v1 import broker_pb2, broker_pb2_grpc

    target, _ = channels.parse_url(args.url)
    with channels.open_channel(target) as ch:
        try:
            stats = broker_pb2_grpc.BrokerServiceStub(ch).GetBrokerStats(
                broker_pb2.GetBrokerStatsRequest(),
                timeout=args.timeout,
                metadata=metadata_source(target, None, None)(),
            )
        except grpc.RpcError as err:
            print(f"{target}: {err.code().name} {err.details()}", file=sys.stderr)
            return 2
    for field in stats.DESCRIPTOR.fields:
        print(f"{field.name}: {getattr(stats, field.name)}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from lazygrpc.demo.mesh import run_mesh

    return run_mesh(
        question=args.demo, token_delay=args.token_delay, base_port=args.port, otel=args.otel
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="lazygrpc", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve-model", help="serve a model backend through ModelService")
    _server_args(p)
    p.add_argument("--backend", default="markov", choices=["markov", "echo"])
    p.add_argument("--model-name", help="model name (default: the backend's)")
    p.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    p.add_argument("--preset", action="append", default=[], help="server preset KEY=VALUE")
    p.add_argument("--settable", help="comma-separated params callers may set")
    p.set_defaults(fn=cmd_serve_model)

    p = sub.add_parser("serve", help="serve Python callables through ModuleService")
    _server_args(p)
    p.add_argument("targets", nargs="+", metavar="FILE.py:NAME|pkg.module:NAME")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("call", help="call a module (grpc://H:P/MODULE) or a model (grpc://H:P)")
    p.add_argument("url")
    p.add_argument("input", help="input; JSON for modules when it parses, else text")
    p.add_argument("--stream", action="store_true", help="print output as it arrives")
    p.add_argument("--session", help="session id to use")
    p.add_argument("--global", dest="set_global", action="append", default=[], help="KEY=VALUE")
    p.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    p.set_defaults(fn=cmd_call)

    p = sub.add_parser("health", help="check a server's health (exit 0 when SERVING)")
    p.add_argument("url")
    p.add_argument("--service", default="", help="service name (default: the whole server)")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(fn=cmd_health)

    p = sub.add_parser("stats", help="print a server's broker stats")
    p.add_argument("url")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(fn=cmd_stats)

    p = sub.add_parser("up", help="start the local demo mesh (Ctrl-C stops it)")
    p.add_argument("--demo", metavar="QUESTION", help="ask one question, print the answer, stop")
    p.add_argument("--token-delay", type=float, default=0.02, help="model's seconds per token")
    p.add_argument("--port", type=int, default=0, help="first port (default: free ports)")
    p.add_argument("--otel", action="store_true", help="OpenTelemetry spans to stderr")
    p.set_defaults(fn=cmd_up)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `lazygrpc call … | head`: the reader left; stop quietly like other CLI tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ValueError as exc:
        print(f"lazygrpc: {exc}", file=sys.stderr)
        return 2
