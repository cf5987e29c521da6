"""Per-call credentials: the `authorization` metadata a client sends to one target.

A call carries only what this process was configured to send to that target: `connect(url,
token=...)` / `LLM(url, auth=...)`, else `set_token(url, token)`, else the JSON file
`LAZYGRPC_TOKENS_FILE` names (`{"grpcs://host:port": "token", ...}`). Nothing is taken from
the incoming call: a hop forwards none of its caller's credentials (`outgoing_metadata`
copies none), docs/security.md.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc

from lazygrpc.client.channels import parse_url
from lazygrpc.client.tls import TLS_PREFIX
from lazygrpc.core import chain
from lazygrpc.core.errors import RemoteError

AUTHORIZATION = "authorization"
#: An auth callback: called before every call, returns the metadata to send with it.
AuthCallback = Callable[[], Iterable[tuple[str, str]]]
Metadata = tuple[tuple[str, str], ...]

_lock = threading.Lock()
_tokens: dict[str, str] = {}
_tokens_loaded: list[bool] = []


def set_token(url: str, token: str | None) -> None:
    """Send `authorization: Bearer <token>` on every call to `url`'s target (None: stop)."""
    target, _ = parse_url(url)
    with _lock:
        if token is None:
            _tokens.pop(target, None)
        else:
            _tokens[target] = token


def _load_once() -> None:
    """Read `LAZYGRPC_TOKENS_FILE` (once, by the first call that looks for a token)."""
    with _lock:
        if not _tokens_loaded:
            _tokens_loaded.append(True)
            _load_tokens_file()


def _load_tokens_file() -> None:
    path = os.environ.get("LAZYGRPC_TOKENS_FILE")
    if not path:
        return
    try:
        mapping = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"LAZYGRPC_TOKENS_FILE {path!r}: not a readable JSON object ({exc})"
        ) from None
    if not isinstance(mapping, dict):
        raise ValueError(f"LAZYGRPC_TOKENS_FILE {path!r}: expected a JSON object url → token")
    for url, token in mapping.items():
        _tokens.setdefault(parse_url(url)[0], str(token))


def bearer(token: str) -> Metadata:
    """The metadata of a bearer token."""
    if not token or any(c in token for c in "\r\n"):
        raise ValueError("token: must be a non-empty string without line breaks")
    return ((AUTHORIZATION, f"Bearer {token}"),)


def metadata_source(
    target: str, token: str | None, auth: AuthCallback | None
) -> Callable[[], Metadata | None]:
    """What one client object sends per call to `target` (None: nothing): `auth()`'s metadata
    (called before every call), else `token`'s, else the token configured for the target."""
    if auth is not None:
        return lambda: tuple((str(k).lower(), str(v)) for k, v in auth())
    if token is not None:
        fixed = bearer(token)
        return lambda: fixed

    def configured() -> Metadata | None:
        if not _tokens_loaded:
            _load_once()
        found = _tokens.get(target)  # one dict read: `set_token` changes it under the lock
        return bearer(found) if found is not None else None

    return configured


def _transport_hint(target: str, details: str) -> str:
    """What to check when a call never reached the service, or "" when nothing TLS-related.

    Only a call that never connected gets a hint: a service's own UNAVAILABLE, or a peer
    that died mid-call, is left as it is."""
    lowered = details.lower()
    if "failed to connect" not in lowered:
        return ""
    tls = target.startswith(TLS_PREFIX)
    if tls and "wrong_version_number" in lowered:
        return "TLS problem: the server did not answer in TLS (a plaintext server needs grpc://)"
    if tls and any(w in lowered for w in ("certificate_verify_failed", "certificate verify")):
        return (
            "TLS problem: the server's certificate is not trusted: check that it is signed by "
            "a CA in LAZYGRPC_TLS_CA and valid for this host"
        )
    if any(w in lowered for w in ("ssl", "tls", "handshake", "certificate")):
        return (
            "TLS problem: the handshake failed; if the server requires client certificates "
            "(mTLS), set LAZYGRPC_TLS_CERT and LAZYGRPC_TLS_KEY"
            if tls
            else "TLS problem: the server speaks TLS; use a grpcs:// URL"
        )
    if any(w in lowered for w in ("socket closed", "connection reset")):
        return (
            "TLS problem: the server closed the connection in the handshake; if it requires "
            "client certificates (mTLS), set LAZYGRPC_TLS_CERT and LAZYGRPC_TLS_KEY"
            if tls
            else "connection closed before any reply: if the server uses TLS, use a grpcs:// URL"
        )
    return ""


def rpc_error(target: str, method: str) -> Callable[[grpc.RpcError], RemoteError]:
    """The error factory of a client of `target`: `remote_error_from_rpc`, with a TLS hint in
    the message of an UNAVAILABLE that looks like a TLS problem."""

    def error(err: grpc.RpcError) -> RemoteError:
        remote = chain.remote_error_from_rpc(err, service=target, method=method)
        if remote.code == grpc.StatusCode.UNAVAILABLE:
            hint = _transport_hint(target, remote.message)
            if hint:
                remote.message = f"{hint} ({remote.message})"
                remote.args = (remote.message,)
        return remote

    return error
