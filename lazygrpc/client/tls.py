"""Client TLS: what every channel lazygrpc opens to a `grpcs://` target uses (docs/security.md).

Every channel lazygrpc opens, between any two hops, gets its security from
`channel_credentials(target)`, the one place it is chosen. The config comes from
`set_client_tls(ClientTLS(...))`, else from the environment:
`LAZYGRPC_TLS_CA` (PEM file of the CAs to trust; unset: the system roots),
`LAZYGRPC_TLS_CERT` and `LAZYGRPC_TLS_KEY` (PEM files of this client's certificate and key,
for servers that require mTLS) and `LAZYGRPC_TLS_SERVER_NAME` (the name to check the
server's certificate for, when it is not the URL's host).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

#: The scheme prefix that marks a TLS target: `parse_url("grpcs://h:p/m")` keeps it.
TLS_PREFIX = "grpcs://"


@dataclass(frozen=True)
class ClientTLS:
    """PEM files a client uses on `grpcs://` targets (None: grpc's default)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    @classmethod
    def from_env(cls) -> ClientTLS:
        env = os.environ.get
        return cls(
            env("LAZYGRPC_TLS_CA") or None,
            env("LAZYGRPC_TLS_CERT") or None,
            env("LAZYGRPC_TLS_KEY") or None,
            env("LAZYGRPC_TLS_SERVER_NAME") or None,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        """grpc's channel credentials from the files; `ValueError` names a missing one."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("client TLS: a client certificate needs its key (and the reverse)")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "CA"),
            private_key=_read(self.key_file, "client key"),
            certificate_chain=_read(self.cert_file, "client certificate"),
        )


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(
            f"client TLS: cannot read the {what} file {path!r}: {exc.strerror}"
        ) from None


_lock = threading.Lock()
_tls: list[ClientTLS] = []  # the configured one, once set or read from the environment


def set_client_tls(config: ClientTLS | None) -> None:
    """Use `config` for the `grpcs://` channels opened from now on (None: the environment's)."""
    with _lock:
        _tls[:] = [config] if config is not None else []


def client_tls() -> ClientTLS:
    """The client TLS config in effect."""
    with _lock:
        if not _tls:
            _tls.append(ClientTLS.from_env())
        return _tls[0]


def channel_credentials(
    target: str,
) -> tuple[str, grpc.ChannelCredentials | None, list[tuple[str, str]]]:
    """For a target from `parse_url`: the address to dial, its channel credentials (None:
    plaintext) and the channel options they need. The one place a channel's security is
    chosen."""
    if not target.startswith(TLS_PREFIX):
        return target, None, []
    tls = client_tls()
    options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return target[len(TLS_PREFIX) :], tls.credentials(), options
