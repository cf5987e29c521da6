"""Server flags that become `Server` and backend arguments: security, admission, backends."""

from __future__ import annotations

import argparse
import os
from typing import Any

from lazygrpc.commands.common import Failed, UsageError


def security(args: argparse.Namespace) -> dict[str, Any]:
    """`Server`'s tls and auth from the flags (secrets only from env vars or files)."""
    from lazygrpc.server.security import BearerToken, TLSConfig

    out: dict[str, Any] = {}
    if args.tls_cert or args.tls_key or args.tls_client_ca:
        if not (args.tls_cert and args.tls_key):
            raise UsageError("TLS needs both --tls-cert and --tls-key")
        out["tls"] = TLSConfig(args.tls_cert, args.tls_key, args.tls_client_ca)
    try:
        if args.auth_token_env:
            out["auth"] = BearerToken.from_env(args.auth_token_env)
        elif args.auth_token_file:
            out["auth"] = BearerToken.from_file(args.auth_token_file)
    except ValueError as exc:
        raise Failed(str(exc)) from None
    return out


def limits(args: argparse.Namespace) -> Any:
    """`Server(limits=...)` from the admission flags (None: none given)."""
    from lazygrpc.server.admission import Limits

    given = {
        name: getattr(args, name)
        for name in ("max_calls", "max_streams", "default_deadline", "max_deadline")
        if getattr(args, name) is not None
    }
    if not given:
        return None
    try:
        return Limits(**given)
    except ValueError as exc:
        raise UsageError(str(exc).replace("Limits.", "--").replace("_", "-")) from None


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """`make_backend` options from serve-model's flags (`ValueError`: a missing one); the API
    key only from the environment, never argv."""
    if args.backend in ("markov", "echo"):
        return {"token_delay": args.token_delay}
    if not args.model:
        raise ValueError(f"--backend {args.backend} needs --model")
    if args.backend == "transformers":
        return {"model": args.model}
    if not args.upstream:
        raise ValueError("--backend openai needs --upstream URL (e.g. http://127.0.0.1:8000/v1)")
    key = os.environ.get(args.api_key_env or "OPENAI_API_KEY")
    if args.api_key_env and not key:
        raise SystemExit(
            f"lazygrpc: set the environment variable {args.api_key_env} (--api-key-env)"
        )
    return {
        "upstream": args.upstream,
        "model": args.model,
        "api_key": key,
        "api": args.upstream_api,
        "connect_timeout": args.connect_timeout,
        "read_timeout": args.read_timeout,
    }
