"""`lazygrpc edge`: the command's arguments and body (the edge's imports wait for the run)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import signal
import sys

MISSING = "lazygrpc: the edge needs starlette and uvicorn: pip install 'lazygrpc[edge]'"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--upstream",
        action="append",
        required=True,
        metavar="URL",
        help="a server to front: grpc://HOST:PORT or dns:///NAME:PORT (repeatable)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    p.add_argument("--name", default="edge", help="the edge's name in call chains")
    p.add_argument("--max-body", type=int, default=1 << 20, help="request body limit in bytes")
    p.add_argument("--max-streams", type=int, default=256, help="upstream calls in flight")
    p.add_argument(
        "--request-timeout", type=float, default=600.0, help="default deadline in seconds"
    )
    p.add_argument(
        "--expose-tracebacks",
        action="store_true",
        help="pass the tracebacks services sent on to HTTP clients (default: redacted)",
    )
    p.add_argument("--grace", type=float, default=5.0, help="seconds streams get on shutdown")
    p.add_argument(
        "--http",
        default="auto",
        help="uvicorn's HTTP/1.1 parser: httptools (C), h11 (pure Python) or auto (default: "
        "httptools when installed)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT / SIGTERM; prints `listening on HOST:PORT` once it accepts."""
    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        print(MISSING, file=sys.stderr)
        return 1
    from lazygrpc.edge.app import Edge

    edge = Edge(
        args.upstream,
        host=args.host,
        port=args.port,
        name=args.name,
        max_body_bytes=args.max_body,
        max_streams=args.max_streams,
        request_timeout=args.request_timeout,
        expose_tracebacks=args.expose_tracebacks,
        grace=args.grace,
        http=args.http,
    )

    async def serve() -> int:
        try:
            port = await edge.start()
        except OSError as exc:
            print(
                f"lazygrpc: cannot listen on {args.host}:{args.port}: {exc.strerror}",
                file=sys.stderr,
            )
            return 1
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, edge.close)
        print(f"listening on {args.host}:{port}", flush=True)
        await edge.wait()
        return 0

    return asyncio.run(serve())
