"""The `lazygrpc` command: serve-model, serve, call, list, health, stats, up, protos, edge."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import grpc

from lazygrpc import logs
from lazygrpc.backends import KINDS
from lazygrpc.client import channels
from lazygrpc.commands import call, options, serving, up
from lazygrpc.commands.common import EXIT_CODES, FAILED, USAGE, Failed, UsageError
from lazygrpc.commands.common import key_values as _key_values
from lazygrpc.edge import command as edge_command
from lazygrpc.version import __version__


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    p.add_argument("--name", help="service name used in call chains")
    p.add_argument(
        "--grace", type=float, default=5.0, help="seconds in-flight calls get on shutdown"
    )
    for flag, kind, what in (
        ("--max-calls", int, "calls in flight past which new ones get RESOURCE_EXHAUSTED"),
        ("--max-streams", int, "streams in flight past which new ones get RESOURCE_EXHAUSTED"),
        ("--default-deadline", float, "seconds: the deadline of a call that came without one"),
        ("--max-deadline", float, "seconds: the longest deadline the calls below a call get"),
    ):
        p.add_argument(flag, type=kind, default=None, help=f"{what} (default: none)")
    p.add_argument(
        "--drain-notice",
        type=float,
        default=None,
        help="seconds a draining server still admits calls after NOT_SERVING (default 0.2)",
    )
    p.add_argument(
        "--expose-tracebacks",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send tracebacks, hosts and exception text in error chains "
        "(default: only to callers on loopback)",
    )
    p.add_argument(
        "--redact",
        choices=("short", "drop"),
        default="short",
        help="what callers not trusted see of messages from below (default: short)",
    )
    p.add_argument(
        "--otel",
        action="store_true",
        help="export OpenTelemetry spans (extra `otel`): OTLP/gRPC to "
        "OTEL_EXPORTER_OTLP_ENDPOINT, or as OTEL_TRACES_EXPORTER says (otlp, console, none); "
        "a set OTEL_TRACES_EXPORTER turns it on too",
    )
    p.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus /metrics (0: a free port)"
    )
    p.add_argument("--topic-events", type=int, default=None, help="events per stream topic")
    p.add_argument("--topic-bytes", type=int, default=None, help="bytes per stream topic")
    logs.add_arguments(p)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port (SO_REUSEPORT), under a supervisor (default 1)",
    )
    p.add_argument(
        "--broker",
        metavar="redis://HOST:PORT/DB",
        help="BrokerService topics in Redis Streams, shared across hosts (default: in-process)",
    )
    p.add_argument(
        "--also-listen",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="another address to serve on, e.g. unix:/run/lazygrpc.sock (repeatable)",
    )
    p.add_argument("--worker-socket", help=argparse.SUPPRESS)  # set by the supervisor
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate file")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key file")
    p.add_argument("--tls-client-ca", metavar="PEM", help="require client certs from this CA")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--auth-token-env", metavar="NAME", help="bearer token from env var NAME")
    auth.add_argument("--auth-token-file", metavar="PATH", help="bearer token from a file")


def _build_server(args: argparse.Namespace) -> Any:
    from lazygrpc.server.builder import Server

    topic = {
        k: v
        for k, v in (
            ("topic_events", args.topic_events),
            ("topic_bytes", args.topic_bytes),
            ("drain_notice", args.drain_notice),
        )
        if v is not None
    }
    security = options.security(args)
    try:
        return Server(
            name=args.name,
            host=args.host,
            port=args.port,
            grace=args.grace,
            expose_tracebacks=args.expose_tracebacks,
            redact=args.redact,
            telemetry=args.otel or _traces_asked_by_env(),
            reuse_port=args.worker_socket is not None,
            also_listen=[*args.also_listen, *([args.worker_socket] if args.worker_socket else [])],
            broker_url=args.broker,
            limits=options.limits(args),
            metrics_port=args.metrics_port,
            **topic,
            **security,
        )
    except ValueError as exc:  # an unreadable TLS file, named
        raise Failed(str(exc)) from None


def _traces_asked_by_env() -> bool:
    """`OTEL_TRACES_EXPORTER` set to an exporter turns tracing on without `--otel`."""
    return os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower() not in ("", "none")


def _as_workers(args: argparse.Namespace) -> int | None:
    """With `--workers N` (N > 1): this command run as N workers, its exit code."""
    if args.workers < 1:
        raise SystemExit("lazygrpc: --workers must be 1 or more")
    if args.workers == 1:
        return None
    from lazygrpc.workers import run_workers

    try:
        return run_workers(args.argv, args.workers, args.host, args.port, args.grace)
    except OSError as exc:
        raise SystemExit(f"lazygrpc: {exc}") from None


def cmd_serve_model(args: argparse.Namespace) -> int:
    if (code := _as_workers(args)) is not None:
        return code
    from lazygrpc.backends import make_backend
    from lazygrpc.server.model import KNOWN_PARAMS, ModelConfig, presets_from

    backend_options = options.backend_options(args)
    try:
        backend = make_backend(args.backend, name=args.model_name, **backend_options)
    except ImportError as exc:
        raise SystemExit(
            f"lazygrpc: --backend {args.backend} needs pip install 'lazygrpc[{args.backend}]' ({exc})"
        ) from None
    presets = presets_from(_key_values(args.preset, "--preset"))
    kwargs: dict[str, Any] = {"presets": presets}
    if args.settable is not None:
        names = [n for n in args.settable.split(",") if n]
        unknown = [n for n in names if n not in KNOWN_PARAMS]
        if unknown:
            raise UsageError(
                f"--settable: unknown params {unknown!r} (known: {list(KNOWN_PARAMS)})"
            )
        kwargs["settable"] = {n: KNOWN_PARAMS[n] for n in names}

    return serving.run_server(
        lambda: _build_server(args), lambda server: server.add_model(ModelConfig(backend, **kwargs))
    )


def cmd_serve(args: argparse.Namespace) -> int:
    if (code := _as_workers(args)) is not None:
        return code
    modules = serving.load_modules(args.targets)
    return serving.run_server(lambda: _build_server(args), lambda s: s.add_modules(modules))


def cmd_list(args: argparse.Namespace) -> int:
    from lazygrpc.client.listing import as_json, list_modules, signature

    try:
        infos = list_modules(args.url, timeout=args.timeout)
    except grpc.RpcError as err:
        print(f"lazygrpc: {args.url}: {err.code().name} {err.details()}", file=sys.stderr)
        return 1
    except LookupError as exc:
        print(f"lazygrpc: {exc}", file=sys.stderr)
        return 1
    for info in infos:
        if args.json:
            print(json.dumps(as_json(info), ensure_ascii=False))
            continue
        print(signature(info))
        if info.doc:
            print(f"    {info.doc.splitlines()[0]}")
    return 0


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
            return FAILED
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
            return FAILED
    for field in stats.DESCRIPTOR.fields:
        print(f"{field.name}: {getattr(stats, field.name)}")
    return 0


def cmd_protos(args: argparse.Namespace) -> int:
    from lazygrpc.commands.protos import proto_dir

    print(proto_dir())
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="lazygrpc",
        description=__doc__,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"lazygrpc {__version__}")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve-model", help="serve a model backend through ModelService")
    _server_args(p)
    p.add_argument("--backend", default="markov", choices=KINDS)
    p.add_argument("--model-name", help="model name (default: the backend's)")
    p.add_argument("--model", help="openai: the upstream's model name; transformers: a local dir")
    p.add_argument("--upstream", help="openai: base URL of an OpenAI-compatible server")
    p.add_argument("--upstream-api", default="chat", choices=["chat", "completions"])
    p.add_argument("--api-key-env", help="openai: env var holding the key (OPENAI_API_KEY)")
    p.add_argument("--connect-timeout", type=float, default=5.0, help="openai: seconds")
    p.add_argument("--read-timeout", type=float, default=60.0, help="openai: seconds between data")
    p.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    p.add_argument("--preset", action="append", default=[], help="server preset KEY=VALUE")
    p.add_argument("--settable", help="comma-separated params callers may set")
    p.set_defaults(fn=cmd_serve_model)

    p = sub.add_parser("serve", help="serve Python callables through ModuleService")
    _server_args(p)
    p.add_argument("targets", nargs="+", metavar="FILE.py:NAME|pkg.module:NAME")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser(
        "call",
        help="call a module (grpc://H:P/MODULE) or a model (grpc://H:P)",
        description=call.__doc__,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    call.add_arguments(p)
    p.set_defaults(fn=call.run)

    p = sub.add_parser("list", help="a server's modules with their signatures (ListModules)")
    p.add_argument("url", help="grpc://HOST:PORT, or grpc://HOST:PORT/MODULE for one")
    p.add_argument("--json", action="store_true", help="one JSON object per module, schemas too")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("health", help="check a server's health (exit 0 when SERVING)")
    p.add_argument("url")
    p.add_argument("--service", default="", help="service name (default: the whole server)")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(fn=cmd_health)

    p = sub.add_parser("stats", help="print a server's broker stats")
    p.add_argument("url")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(fn=cmd_stats)

    p = sub.add_parser("up", help="start a mesh: yours (-f FILE) or the demo (Ctrl-C stops it)")
    up.add_arguments(p)
    p.set_defaults(fn=up.run)

    p = sub.add_parser("protos", help="print the folder of the installed .proto files")
    p.set_defaults(fn=cmd_protos)
    p = sub.add_parser("edge", help="serve OpenAI's HTTP API and a chat page in front of servers")
    edge_command.add_arguments(p)
    p.set_defaults(fn=edge_command.run)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if hasattr(args, "log_level"):
        logs.configure(args.log_level, args.log_format)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what workers run again
    try:
        return int(args.fn(args))
    except UsageError as exc:
        print(f"lazygrpc: {exc}", file=sys.stderr)
        return USAGE
    except Failed as exc:
        print(f"lazygrpc: {exc}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `lazygrpc call … | head`: the reader left; stop quietly like other CLI tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ValueError as exc:  # a bad URL or value given on the command line
        print(f"lazygrpc: {exc}", file=sys.stderr)
        return USAGE
