"""A server's TLS (files, reloaded on SIGHUP) and its authenticator hook (docs/security.md).

    TLSConfig      certificate, key and (for mTLS) the client CA, as PEM files
    ServerTLS      grpc's dynamic server credentials over a `TLSConfig`: `reload()` re-reads
                   the files and new handshakes use them (connections already open keep theirs)
    BearerToken    an authenticator: `authorization: Bearer <token>` against a secret from an
                   env var or a file, compared in constant time
    authorize      runs a server's authenticator for one call; the lifecycle's `start` calls it

An authenticator is any callable `auth(metadata, method)`: `metadata` is the call's
headers as a dict (lower-case keys, the last value of a repeated key), `method` the full
method name. It raises `Unauthenticated` or `PermissionDenied` (or returns False, which is
PERMISSION_DENIED) to refuse the call; anything else admits it.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from lazygrpc.core.errors import PermissionDenied, StatusError, Unauthenticated

log = logging.getLogger("lazygrpc.server.security")

Authenticator = Callable[[Mapping[str, str], str], Any]


@dataclass(frozen=True)
class TLSConfig:
    """A server's TLS files (PEM). With `client_ca_file`, clients must present a certificate
    signed by one of its CAs (mTLS)."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    def read(self) -> Any:
        """grpc's certificate configuration from the files; `ValueError` names a bad one."""
        key = _read(self.key_file, "key")
        cert = _read(self.cert_file, "certificate")
        ca = _read(self.client_ca_file, "client CA") if self.client_ca_file else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"TLS {what} file {path!r}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"TLS {what} file {path!r}: not PEM")
    return data


class ServerTLS:
    """Server credentials whose certificate files are re-read by `reload()` (SIGHUP).

    grpc asks the fetcher for a new configuration at each handshake
    (`grpc.dynamic_ssl_server_credentials`); it gets one only after a reload, so a handshake
    costs a lock and no file reads."""

    def __init__(self, config: TLSConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._pending: Any = None
        self.reloads = 0
        self.credentials = grpc.dynamic_ssl_server_credentials(
            config.read(),
            self._fetch,
            require_client_authentication=config.client_ca_file is not None,
        )

    def _fetch(self) -> Any:
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def reload(self) -> bool:
        """Re-read the files for the handshakes to come; on a bad file the current ones stay
        (logged, with the file's name). True when the new files were taken."""
        try:
            fresh = self.config.read()
        except ValueError as exc:
            log.error("TLS reload failed, keeping the current certificate: %s", exc)
            return False
        with self._lock:
            self._pending = fresh
            self.reloads += 1
        log.info("TLS certificate files re-read (%s)", self.config.cert_file)
        return True


class BearerToken:
    """An authenticator admitting calls that carry `authorization: Bearer <token>`.

    >>> auth = BearerToken.from_env("MY_TOKEN")  # doctest: +SKIP
    """

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the auth token is empty")
        self._expected = f"Bearer {token}".encode()

    @classmethod
    def from_env(cls, name: str) -> BearerToken:
        token = os.environ.get(name, "")
        if not token:
            raise ValueError(f"auth token env var {name} is unset or empty")
        return cls(token)

    @classmethod
    def from_file(cls, path: str) -> BearerToken:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise ValueError(f"auth token file {path!r}: {exc.strerror}") from None
        if not token:
            raise ValueError(f"auth token file {path!r} is empty")
        return cls(token)

    def __repr__(self) -> str:
        return "BearerToken(<secret>)"

    def __call__(self, metadata: Mapping[str, str], method: str) -> None:
        sent = metadata.get("authorization")
        if sent is None:
            raise Unauthenticated("missing credentials: send 'authorization: Bearer <token>'")
        if not hmac.compare_digest(sent.encode(errors="surrogateescape"), self._expected):
            raise Unauthenticated("invalid bearer token")


def authorize(auth: Authenticator, invocation_metadata: Any, full_method: str) -> None:
    """Run `auth` for one call: returns to admit it, raises the `StatusError` that refuses it
    (an authenticator's own failure is refused as UNAUTHENTICATED, its text logged only)."""
    metadata = {k: v for k, v in invocation_metadata or () if isinstance(v, str)}
    try:
        verdict = auth(metadata, full_method)
    except StatusError:
        raise
    except Exception:
        log.exception("authenticator failed on %s", full_method)
        raise Unauthenticated("authentication failed") from None
    if verdict is False:
        raise PermissionDenied(f"not permitted to call {full_method}")
