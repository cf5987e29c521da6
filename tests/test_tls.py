"""TLS and mTLS between real servers and clients on 127.0.0.1, with CAs made per test."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import Servers, run_cli, start_cli
from tlscerts import CA

import lazygrpc
from lazygrpc.client import channels
from lazygrpc.client.tls import ClientTLS, set_client_tls
from lazygrpc.core.errors import RemoteError
from lazygrpc.server.security import TLSConfig

FIXTURE = "tests/fixtures/cli_modules.py"


@pytest.fixture
def cas(tmp_path: Path) -> tuple[CA, CA]:
    return CA(tmp_path, "good"), CA(tmp_path, "other")


@pytest.fixture(autouse=True)
def _client_tls_from_test() -> Iterator[None]:
    yield
    set_client_tls(None)
    channels.close_all()


def tls_url(servers: Servers, ca: CA, *, mtls: bool = False, **options: object) -> str:
    cert = ca.issue("server")
    tls = TLSConfig(cert.cert_file, cert.key_file, ca.cert_file if mtls else None)
    url = servers.modules({"echo": lambda x: x}, tls=tls, **options)
    return url.replace("grpc://", "grpcs://") + "/echo"


def test_parse_url_keeps_the_tls_scheme_in_the_target() -> None:
    assert channels.parse_url("grpcs://127.0.0.1:9/m") == ("grpcs://127.0.0.1:9", "m")
    assert channels.parse_url("grpc://127.0.0.1:9/m") == ("127.0.0.1:9", "m")
    with pytest.raises(ValueError, match="grpcs://HOST:PORT"):
        channels.parse_url("https://127.0.0.1:9/m")


def test_right_ca_works_sync_and_async(servers: Servers, cas: tuple[CA, CA]) -> None:
    url = tls_url(servers, cas[0])
    set_client_tls(ClientTLS(ca_file=cas[0].cert_file))
    assert lazygrpc.connect(url, timeout=10)("hi") == "hi"

    async def call() -> object:
        return await lazygrpc.connect(url, timeout=10).acall("async")

    assert servers.call(call) == "async"


def test_client_tls_from_environment(
    servers: Servers, cas: tuple[CA, CA], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = tls_url(servers, cas[0])
    monkeypatch.setenv("LAZYGRPC_TLS_CA", cas[0].cert_file)
    set_client_tls(None)  # read from the environment at the next channel
    assert lazygrpc.connect(url, timeout=10)("env") == "env"


@pytest.mark.parametrize(
    ("case", "hint"),
    [
        ("wrong CA", "TLS problem: the server's certificate is not trusted"),
        ("plaintext client", "if the server uses TLS, use a grpcs:// URL"),
        ("plaintext server", "TLS problem: the server did not answer in TLS"),
    ],
)
def test_refused_handshakes_are_unavailable_naming_tls(
    servers: Servers, cas: tuple[CA, CA], case: str, hint: str
) -> None:
    good, other = cas
    if case == "plaintext server":
        url = servers.modules({"echo": lambda x: x}).replace("grpc://", "grpcs://") + "/echo"
    else:
        url = tls_url(servers, good)
    if case == "plaintext client":
        url = url.replace("grpcs://", "grpc://")
    set_client_tls(ClientTLS(ca_file=(other if case == "wrong CA" else good).cert_file))
    with pytest.raises(RemoteError) as info:
        lazygrpc.connect(url, timeout=10)("hi")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert hint in str(info.value)


def test_mtls_needs_a_client_certificate(servers: Servers, cas: tuple[CA, CA]) -> None:
    good, other = cas
    url = tls_url(servers, good, mtls=True)
    set_client_tls(ClientTLS(ca_file=good.cert_file))
    with pytest.raises(RemoteError) as info:
        lazygrpc.connect(url, timeout=10)("no cert")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "TLS problem" in str(info.value) and "LAZYGRPC_TLS_CERT" in str(info.value)

    stranger = other.issue("stranger", client=True)
    set_client_tls(ClientTLS(good.cert_file, stranger.cert_file, stranger.key_file))
    channels.close_all()
    with pytest.raises(RemoteError) as info:
        lazygrpc.connect(url, timeout=10)("cert from another CA")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE

    client = good.issue("client", client=True)
    set_client_tls(ClientTLS(good.cert_file, client.cert_file, client.key_file))
    channels.close_all()
    assert lazygrpc.connect(url, timeout=10)("with cert") == "with cert"


def test_every_hop_uses_the_same_client_tls(servers: Servers, cas: tuple[CA, CA]) -> None:
    """A gateway's own call to the leaf below goes over mTLS with the process's config."""
    good = cas[0]
    leaf = tls_url(servers, good, mtls=True)

    async def gateway(x: str) -> object:
        return {"via": await lazygrpc.connect(leaf).acall(x)}

    cert = good.issue("gateway")
    tls = TLSConfig(cert.cert_file, cert.key_file, good.cert_file)
    url = servers.modules({"gateway": gateway}, tls=tls).replace("grpc://", "grpcs://")
    client = good.issue("client", client=True)
    set_client_tls(ClientTLS(good.cert_file, client.cert_file, client.key_file))
    assert lazygrpc.connect(f"{url}/gateway", timeout=10)("up") == {"via": "up"}


def test_health_cli_over_tls(servers: Servers, cas: tuple[CA, CA]) -> None:
    url = tls_url(servers, cas[0]).rsplit("/", 1)[0]
    done = run_cli("health", url, env={"LAZYGRPC_TLS_CA": cas[0].cert_file})
    assert done.returncode == 0, done.stderr
    assert "SERVING" in done.stdout


def _handshakes(address: str, ca_file: str) -> bool:
    """Whether a new connection trusting `ca_file` completes its handshake."""
    creds = grpc.ssl_channel_credentials(Path(ca_file).read_bytes())
    options = [("grpc.use_local_subchannel_pool", 1)]  # a new connection, not a shared one
    with grpc.secure_channel(address, creds, options) as ch:
        try:
            grpc.channel_ready_future(ch).result(timeout=2)
            return True
        except grpc.FutureTimeoutError:
            return False


def test_sighup_reloads_the_certificate(tmp_path: Path, cas: tuple[CA, CA]) -> None:
    old, new = cas
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    first = old.issue("server")
    shutil.copy(first.cert_file, live_cert)
    shutil.copy(first.key_file, live_key)
    proc, address = start_cli(
        "serve", f"{FIXTURE}:whoami", "--tls-cert", str(live_cert), "--tls-key", str(live_key)
    )
    try:
        assert _handshakes(address, old.cert_file)
        assert not _handshakes(address, new.cert_file)
        second = new.issue("server")
        shutil.copy(second.cert_file, live_cert)
        shutil.copy(second.key_file, live_key)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20  # catches a hang only: the reload is at once
        while not _handshakes(address, new.cert_file):
            assert time.monotonic() < deadline, "the new certificate was never served"
        assert not _handshakes(address, old.cert_file)
        assert proc.poll() is None  # SIGHUP reloads, it does not stop the server
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


def test_cli_names_a_missing_tls_file(tmp_path: Path) -> None:
    done = run_cli(
        "serve", f"{FIXTURE}:whoami",
        "--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(tmp_path / "none.key"),
    )  # fmt: skip
    assert done.returncode == 1
    assert "none.key" in done.stderr and done.stderr.count("\n") == 1


def test_a_services_own_unavailable_gets_no_tls_hint(servers: Servers) -> None:
    def down() -> None:
        raise lazygrpc.Unavailable("certificate store is down")

    url = servers.modules({"down": down}) + "/down"
    with pytest.raises(RemoteError) as info:
        lazygrpc.connect(url, timeout=10)()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert info.value.message == "certificate store is down"
