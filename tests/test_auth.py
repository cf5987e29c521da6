"""Authentication: tokens and auth callbacks on clients, the server's authenticator hook,
what is (not) forwarded downstream, and BrokerService topic ownership. Real servers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import Servers, run_cli, start_cli
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import lazygrpc
from lazygrpc.client import credentials
from lazygrpc.core.errors import PermissionDenied, RemoteError
from lazygrpc.core.values import to_value
from lazygrpc.server.security import BearerToken
from lazygrpc.v1 import broker_pb2, broker_pb2_grpc

SECRET = "s3cret-token-value"
FIXTURE = "tests/fixtures/cli_modules.py"


def address(url: str) -> str:
    return url.removeprefix("grpc://")


def test_token_admits_and_missing_or_bad_is_unauthenticated(servers: Servers) -> None:
    url = servers.modules({"echo": lambda x: x}, auth=BearerToken(SECRET)) + "/echo"
    assert lazygrpc.connect(url, token=SECRET, timeout=10)("in") == "in"
    with pytest.raises(RemoteError) as info:
        lazygrpc.connect(url, timeout=10)("no token")
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in info.value.message
    with pytest.raises(RemoteError) as info:
        lazygrpc.connect(url, token="wrong-" + SECRET, timeout=10)("bad token")
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert SECRET not in info.value.report()
    assert "invalid bearer token" in info.value.message


def test_authorizer_refusal_is_permission_denied(servers: Servers) -> None:
    def auth(metadata: Mapping[str, str], method: str) -> bool:
        return metadata.get("x-role") == "admin" or not method.endswith("/Call")

    url = servers.modules({"echo": lambda x: x}, auth=auth) + "/echo"
    with pytest.raises(RemoteError) as info:
        lazygrpc.connect(url, timeout=10)("user")
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "/lazygrpc.v1.ModuleService/Call" in info.value.message
    admin = lazygrpc.connect(url, auth=lambda: [("x-role", "admin")], timeout=10)
    assert admin("admin") == "admin"

    def raising(metadata: Mapping[str, str], method: str) -> None:
        raise PermissionDenied("tenant 7 may not call echo")

    url = servers.modules({"echo": lambda x: x}, auth=raising) + "/echo"
    with pytest.raises(RemoteError, match="tenant 7 may not call echo") as info:
        lazygrpc.connect(url, timeout=10)("x")
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_auth_callback_is_called_per_call_on_llm(servers: Servers) -> None:
    seen: list[str | None] = []

    def auth(metadata: Mapping[str, str], method: str) -> None:
        seen.append(metadata.get("authorization"))

    url = servers.modules({"echo": lambda x: x}, auth=auth) + "/echo"
    tokens = iter(["Bearer one", "Bearer two"])
    remote = lazygrpc.connect(url, auth=lambda: [("authorization", next(tokens))], timeout=10)
    remote("a")
    remote("b")
    assert seen == ["Bearer one", "Bearer two"]


def test_llm_sends_its_token(servers: Servers) -> None:
    from lazygrpc.backends import make_backend
    from lazygrpc.server.model import ModelConfig

    async def build() -> lazygrpc.Server:
        s = lazygrpc.Server(auth=BearerToken(SECRET))
        s.add_model(ModelConfig(make_backend("echo")))
        return s

    s = servers.start(servers.call(build))
    url = f"grpc://127.0.0.1:{s.port}"
    llm = lazygrpc.LLM(url, token=SECRET, timeout=10)
    assert llm("hello") == "hello"
    assert "".join(llm.share(prompt="{input}!").stream("hi")) == "hi!"
    with pytest.raises(RemoteError) as info:
        lazygrpc.LLM(url, timeout=10)("hello")
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_health_stays_open_and_reflection_follows_auth(servers: Servers) -> None:
    url = servers.modules({"echo": lambda x: x}, auth=BearerToken(SECRET))
    with grpc.insecure_channel(address(url)) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        replies = list(
            stub.ServerReflectionInfo(
                iter([request]), timeout=10, metadata=(("authorization", f"Bearer {SECRET}"),)
            )
        )
        names = {s.name for s in replies[0].list_services_response.service}
        assert "lazygrpc.v1.ModuleService" in names


def test_credentials_are_not_forwarded_downstream(servers: Servers) -> None:
    """The leaf sees the gateway's own per-target credentials, never the caller's."""
    leaf_saw: list[str | None] = []

    def leaf_auth(metadata: Mapping[str, str], method: str) -> None:
        leaf_saw.append(metadata.get("authorization"))

    leaf = servers.modules({"leaf": lambda x: x}, auth=leaf_auth) + "/leaf"

    async def plain(x: str) -> Any:
        return await lazygrpc.connect(leaf).acall(x)

    async def own_token(x: str) -> Any:
        return await lazygrpc.connect(leaf, token="gateway-to-leaf").acall(x)

    gateway = servers.modules({"plain": plain, "own": own_token}, auth=BearerToken(SECRET))
    assert lazygrpc.connect(f"{gateway}/plain", token=SECRET, timeout=10)("a") == "a"
    assert lazygrpc.connect(f"{gateway}/own", token=SECRET, timeout=10)("b") == "b"
    assert leaf_saw == [None, "Bearer gateway-to-leaf"]


def test_tokens_file_configures_a_target(
    servers: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = servers.modules({"echo": lambda x: x}, auth=BearerToken(SECRET))
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({url: SECRET}))
    monkeypatch.setenv("LAZYGRPC_TOKENS_FILE", str(tokens))
    monkeypatch.setattr(credentials, "_tokens", {})
    monkeypatch.setattr(credentials, "_tokens_loaded", [])
    assert lazygrpc.connect(f"{url}/echo", timeout=10)("file") == "file"


def test_cli_serves_with_a_token_from_env_and_file(tmp_path: Path) -> None:
    proc, addr = start_cli(
        "serve", f"{FIXTURE}:whoami", "--auth-token-env", "LAZY_TEST_TOKEN",
        env={"LAZY_TEST_TOKEN": SECRET},
    )  # fmt: skip
    try:
        url = f"grpc://{addr}/whoami"
        assert lazygrpc.connect(url, token=SECRET, timeout=10)() is not None
        with pytest.raises(RemoteError) as info:
            lazygrpc.connect(url, timeout=10)()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        # `lazygrpc call` takes the target's token from LAZYGRPC_TOKENS_FILE, not argv.
        tokens = tmp_path / "tokens.json"
        tokens.write_text(json.dumps({f"grpc://{addr}": SECRET}))
        done = run_cli("call", url, "null", env={"LAZYGRPC_TOKENS_FILE": str(tokens)})
        assert done.returncode == 0, done.stderr
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert SECRET not in err

    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n")
    proc, addr = start_cli("serve", f"{FIXTURE}:whoami", "--auth-token-file", str(token_file))
    try:
        assert lazygrpc.connect(f"grpc://{addr}/whoami", token=SECRET, timeout=10)() is not None
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


def test_cli_refuses_an_unset_token_env() -> None:
    done = run_cli("serve", f"{FIXTURE}:whoami", "--auth-token-env", "LAZY_UNSET_TOKEN")
    assert done.returncode == 1
    assert "LAZY_UNSET_TOKEN" in done.stderr


# -- BrokerService topic ownership ---------------------------------------------------------


def _publish(ch: grpc.Channel, topic: str, metadata: Any = ()) -> int:
    request = broker_pb2.PublishRequest(topic=topic, source="w", value=to_value(1))
    stub = broker_pb2_grpc.BrokerServiceStub(ch)
    return int(stub.Publish(iter([request]), timeout=10, metadata=metadata).accepted)


def test_topic_takes_publishes_from_its_session_or_token_only(servers: Servers) -> None:
    url = servers.modules({"noop": lambda: None})
    with grpc.insecure_channel(address(url)) as ch:
        sub = broker_pb2_grpc.BrokerServiceStub(ch).Subscribe(
            broker_pb2.SubscribeRequest(topic="owned"),
            timeout=20,
            metadata=(("lazy-session-id", "owner-session"),),
        )
        token = dict(sub.initial_metadata())["lazy-topic-token"]
        with pytest.raises(grpc.RpcError) as info:
            _publish(ch, "owned", (("lazy-session-id", "someone-else"),))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "lazy-topic-token" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            _publish(ch, "owned", (("lazy-topic-token", "guess"),))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert _publish(ch, "owned", (("lazy-session-id", "owner-session"),)) == 1
        assert _publish(ch, "owned", (("lazy-topic-token", token),)) == 1
        events = [next(sub), next(sub)]
        assert [ev.source for ev in events] == ["w", "w"]
        sub.cancel()


def test_broker_service_follows_the_servers_auth(servers: Servers) -> None:
    url = servers.modules({"noop": lambda: None}, auth=BearerToken(SECRET))
    with grpc.insecure_channel(address(url)) as ch:
        stub = broker_pb2_grpc.BrokerServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetBrokerStats(broker_pb2.GetBrokerStatsRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        sub = stub.Subscribe(broker_pb2.SubscribeRequest(topic="t"), timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            next(sub)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_own_sync_server_with_interceptors_checks_auth() -> None:
    from concurrent import futures

    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)}
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(2),
        interceptors=lazygrpc.server_interceptors(aio=False, auth=BearerToken(SECRET)),
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            say = ch.unary_unary("/test.Echo/Say")
            with pytest.raises(grpc.RpcError) as info:
                say(b"x", timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert say(b"x", timeout=10, metadata=(("authorization", f"Bearer {SECRET}"),)) == b"x"
    finally:
        server.stop(0)
