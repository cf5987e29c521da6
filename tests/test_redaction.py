"""Redaction by the caller's trust (docs/errors.md "Redaction by trust"); the trailer budget.

A caller outside this host is a real one: a client process in a network namespace of the
test's own, reaching the server over a veth pair (10.233.x.0/24, inside that namespace only).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

import lazygrpc
from lazygrpc.core import chain, redaction
from lazygrpc.core.values import to_value
from lazygrpc.v1 import chain_pb2, module_pb2, module_pb2_grpc
from tests.conftest import ROOT

SECRET = "secret detail token=abc123"

#: Runs in the namespace: calls MODULE at ADDRESS and prints what the caller learnt.
_OUTSIDE_CLIENT = """
import json, sys
import lazygrpc
address, module = sys.argv[1:3]
try:
    lazygrpc.connect(f"grpc://{address}/{module}")("x")
    print(json.dumps({"ok": True}))
except lazygrpc.RemoteError as err:
    frames = [
        {"host": f.host, "pid": f.pid, "traceback": f.traceback, "message": f.message,
         "error_type": f.error_type, "service": f.service}
        for f in err.chain
    ]
    print(json.dumps({"code": err.code.name, "message": err.message, "frames": frames,
                      "report": err.report()}))
"""


class Outside:
    """A network namespace joined to this one by a veth pair: `call` runs a client there."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.ns = f"lzr{tag}"
        self.host_if, self.ns_if = f"lzr{tag}h", f"lzr{tag}n"
        net = 20 + os.getpid() % 200
        self.host_ip, self.peer_ip = f"10.233.{net}.1", f"10.233.{net}.2"
        steps = [
            ["ip", "netns", "add", self.ns],
            ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if],
            ["ip", "link", "set", self.ns_if, "netns", self.ns],
            ["ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if],
            ["ip", "link", "set", self.host_if, "up"],
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                "ip",
                "addr",
                "add",
                f"{self.peer_ip}/24",
                "dev",
                self.ns_if,
            ],
            ["ip", "netns", "exec", self.ns, "ip", "link", "set", self.ns_if, "up"],
            ["ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up"],
        ]
        try:
            for step in steps:
                subprocess.run(step, check=True, capture_output=True, timeout=20)
        except BaseException:
            self.close()
            raise

    def call(self, port: int, module: str) -> dict[str, Any]:
        out = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                sys.executable,
                "-c",
                _OUTSIDE_CLIENT,
                f"{self.host_ip}:{port}",
                module,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert out.returncode == 0, out.stderr
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=20)


@pytest.fixture(scope="module")
def outside() -> Iterator[Outside]:
    # Making a namespace and a veth pair needs root (CAP_NET_ADMIN), as the test machines have.
    o = Outside()
    yield o
    o.close()


def _leaf_modules() -> dict[str, Any]:
    def leak(x: str) -> str:
        raise ValueError(f"{SECRET}\nsecond line of the leaf's message")

    return {"leak": leak}


def _gateway(servers: Any, **options: Any) -> int:
    """A gateway on every address: `leak` fails here, `relay` relays a loopback leaf's
    failure (the leaf trusts the gateway and sends it everything), `deliberate` answers
    INVALID_ARGUMENT on purpose."""
    leaf = lazygrpc.connect(f"{servers.modules(_leaf_modules(), name='leaf')}/leak")

    def leak(x: str) -> str:
        raise ValueError(SECRET)

    async def relay(x: str) -> Any:
        return await leaf.acall(x)

    def deliberate(x: str) -> str:
        raise lazygrpc.InvalidArgument("x must be a number")

    url = servers.modules(
        {"leak": leak, "relay": relay, "deliberate": deliberate},
        name="gw",
        host="0.0.0.0",
        **options,
    )
    return int(url.rpartition(":")[2])


def _assert_nothing_leaks(seen: dict[str, Any]) -> None:
    text = json.dumps(seen)
    assert "abc123" not in text and "Traceback" not in text and ".py" not in text
    assert socket.gethostname() not in seen["report"]
    assert all(f["host"] == "" and f["pid"] == 0 and f["traceback"] == "" for f in seen["frames"])


def test_a_caller_outside_this_host_sees_no_traceback_host_pid_or_exception_text(
    servers: Any, outside: Outside
) -> None:
    port = _gateway(servers)
    seen = outside.call(port, "leak")
    _assert_nothing_leaks(seen)
    assert seen["code"] == "INTERNAL" and seen["message"] == redaction.PLAIN_INTERNAL
    assert [(f["service"], f["error_type"]) for f in seen["frames"]] == [("gw", "ValueError")]

    # A loopback leaf trusts the gateway and sends it everything; the gateway relays its
    # frame with no traceback, host or pid, and (redact="short") the message's first line.
    relayed = outside.call(port, "relay")
    assert [f["service"] for f in relayed["frames"]] == ["gw", "leaf"]
    assert "Traceback" not in json.dumps(relayed) and ".py" not in json.dumps(relayed)
    assert all(f["host"] == "" and f["pid"] == 0 for f in relayed["frames"])
    assert [f["message"] for f in relayed["frames"]] == [SECRET, SECRET]
    assert relayed["code"] == "UNKNOWN" and relayed["message"] == SECRET
    deliberate = outside.call(port, "deliberate")
    assert deliberate["code"] == "INVALID_ARGUMENT"
    assert deliberate["message"] == "x must be a number"


def test_redact_drop_keeps_no_message_from_below(servers: Any, outside: Outside) -> None:
    relayed = outside.call(_gateway(servers, redact="drop"), "relay")
    assert [(f["service"], f["error_type"], f["message"]) for f in relayed["frames"]] == [
        ("gw", "ValueError", ""),
        ("leaf", "ValueError", ""),
    ]
    assert relayed["message"] == "ValueError (details withheld)"
    assert "abc123" not in json.dumps(relayed)


def test_a_loopback_caller_sees_traceback_host_and_pid(servers: Any) -> None:
    port = _gateway(servers)
    with pytest.raises(lazygrpc.RemoteError) as info:
        lazygrpc.connect(f"grpc://127.0.0.1:{port}/leak")("x")
    err = info.value
    assert err.code == grpc.StatusCode.UNKNOWN and SECRET in err.message
    frame = err.chain[0]
    assert (frame.host, frame.pid) == (socket.gethostname(), os.getpid())
    assert "raise ValueError(SECRET)" in frame.traceback


def test_explicit_expose_tracebacks_overrides_the_peer(servers: Any, outside: Outside) -> None:
    seen = outside.call(_gateway(servers, expose_tracebacks=True), "leak")
    assert "abc123" in seen["message"] and "Traceback" in seen["frames"][0]["traceback"]
    port = _gateway(servers, expose_tracebacks=False)
    with pytest.raises(lazygrpc.RemoteError) as info:
        lazygrpc.connect(f"grpc://127.0.0.1:{port}/leak")("x")
    assert info.value.message == redaction.PLAIN_INTERNAL and info.value.chain[0].host == ""


def _liar_status(case: str) -> bytes:
    """A peer's `grpc-status-details-bin`: an 18 KB ErrorInfo reason, or 4 KB in every
    field it can fill (each kept under what the relaying hop's own channel accepts)."""
    big = "x" * 4096
    if case == "reason":
        info = error_details_pb2.ErrorInfo(reason="R" * 18000, domain="lazygrpc")
        frame = chain_pb2.CallFrame(service="liar", method="m", error_type="E", message="m")
    else:
        info = error_details_pb2.ErrorInfo(reason=big, domain=big[:2000], metadata={"k": big})
        frame = chain_pb2.CallFrame(
            service=big[:1000],
            method=big[:500],
            host=big[:500],
            error_type=big,
            message=big,
            traceback=big[:2000],
            session_id=big[:200],
            trace_id=big[:200],
        )
    status = status_pb2.Status(code=grpc.StatusCode.FAILED_PRECONDITION.value[0], message="no")
    for message in (info, chain_pb2.CallChain(frames=[frame])):
        detail = any_pb2.Any()
        detail.Pack(message)
        status.details.append(detail)
    return status.SerializeToString()


@pytest.mark.parametrize("case", ["reason", "fields"])
def test_a_peers_oversize_error_reaches_default_clients_with_its_code(
    servers: Any, case: str
) -> None:
    details = _liar_status(case)

    class Liar(module_pb2_grpc.ModuleServiceServicer):
        def Call(self, request: Any, context: Any) -> Any:
            context.abort_with_status(rpc_status.to_status(status_pb2.Status.FromString(details)))

    liar = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.so_reuseport", 0)])
    module_pb2_grpc.add_ModuleServiceServicer_to_server(Liar(), liar)
    liar_port = liar.add_insecure_port("127.0.0.1:0")
    liar.start()
    try:
        inner = lazygrpc.connect(f"grpc://127.0.0.1:{liar_port}/m")

        async def relay(x: str) -> Any:
            return await inner.acall(x)

        url = servers.modules({"relay": relay}, name="gw")
        codes = []
        # A default grpcio client: 8 KiB soft / 16 KiB hard metadata limits.
        with grpc.insecure_channel(url.removeprefix("grpc://")) as ch:
            stub = module_pb2_grpc.ModuleServiceStub(ch)
            for _ in range(40):
                with pytest.raises(grpc.RpcError) as info:
                    stub.Call(
                        module_pb2.CallRequest(module="relay", input=to_value("x")), timeout=20
                    )
                codes.append(info.value.code())
                trailing = info.value.trailing_metadata()
        assert codes == [grpc.StatusCode.FAILED_PRECONDITION] * 40
        assert chain.fits_trailer_budget(trailing)
        status = rpc_status.from_call(info.value)
        assert status is not None and len(status.details) == 2
    finally:
        liar.stop(0)


def test_a_failing_call_leaves_out_a_globals_update_past_the_budget(servers: Any) -> None:
    def fail_after_setting(size: int) -> None:
        lazygrpc.globals["big"] = "g" * size
        raise lazygrpc.InvalidArgument("no")

    url = servers.modules({"f": fail_after_setting}, name="gw")
    with grpc.insecure_channel(url.removeprefix("grpc://")) as ch:
        stub = module_pb2_grpc.ModuleServiceStub(ch)
        for size, sent in ((100, True), (5800, False)):
            request = module_pb2.CallRequest(module="f", input=to_value(size))
            with pytest.raises(grpc.RpcError) as info:
                stub.Call(request, timeout=20)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            keys = [k for k, _ in info.value.trailing_metadata()]
            assert ("lazy-globals-update" in keys) is sent


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("ipv4:127.0.0.1:5000", True),
        ("ipv4:127.0.0.2:5000", True),
        ("ipv6:[::1]:5000", True),
        ("ipv6:%5B::1%5D:5000", True),
        ("ipv6:[::ffff:127.0.0.1]:5000", True),
        ("unix:/tmp/lazygrpc.sock", True),
        ("unix-abstract:lazygrpc", True),
        ("ipv4:10.233.1.2:5000", False),
        ("ipv4:0.0.0.0:5000", False),
        ("ipv6:[2001:db8::1]:5000", False),
        ("ipv6:%5B2001:db8::1%5D:5000", False),
        ("ipv6:[::ffff:10.0.0.1]:5000", False),
        ("ipv4:localhost:5000", False),
        ("", False),
        ("garbage", False),
    ],
)
def test_which_peers_are_on_loopback(peer: str, trusted: bool) -> None:
    assert redaction.is_loopback_peer(peer) is trusted


@pytest.mark.parametrize("host", ["[::1]", "127.0.0.2"])
def test_every_loopback_address_is_trusted_whatever_the_server_binds(
    servers: Any, host: str
) -> None:
    def leak(x: str) -> str:
        raise ValueError(SECRET)

    url = servers.modules({"leak": leak}, name="lo", host=host)
    port = url.rpartition(":")[2]
    with pytest.raises(lazygrpc.RemoteError) as info:
        lazygrpc.connect(f"grpc://{host}:{port}/leak")("x")
    assert SECRET in info.value.message and "Traceback" in info.value.chain[0].traceback


def _status_for(exc: BaseException, redact: Any) -> tuple[grpc.StatusCode, str, Any]:
    c = chain.failure_chain(exc, service="s", method="m", expose_traceback=redact is None)
    status = chain.to_grpc_status(exc, c, service="s", method="m", session_id="", redact=redact)
    return status.code, status.details, c


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (ValueError(SECRET), grpc.StatusCode.INTERNAL, "internal error"),
        (TimeoutError(SECRET), grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"),
        (lazygrpc.NotFound("no model 'x'"), grpc.StatusCode.NOT_FOUND, "no model 'x'"),
    ],
)
def test_the_status_an_untrusted_caller_gets(
    exc: BaseException, code: grpc.StatusCode, message: str
) -> None:
    got_code, got_message, c = _status_for(exc, "short")
    assert (got_code, got_message) == (code, message)
    assert all(f.host == "" and f.pid == 0 and f.traceback == "" for f in c.frames)


def test_a_relayed_peer_error_is_clipped_whatever_its_size() -> None:
    huge = "é" * 20000
    frame = chain_pb2.CallFrame(
        service=huge, method=huge, host=huge, error_type=huge, message=huge, traceback=huge
    )
    below = lazygrpc.RemoteError(
        grpc.StatusCode.ABORTED, huge, remote_type=huge, chain=[frame] * 40, session_id=huge
    )
    for redact in (None, "short", "drop"):
        code, message, _ = _status_for(below, redact)
        status = chain.to_grpc_status(
            below,
            chain.failure_chain(below, service="s", method="m"),
            service="s",
            method="m",
            session_id=huge,
            redact=redact,
        )
        assert code == grpc.StatusCode.ABORTED
        assert chain.fits_trailer_budget(status.trailing_metadata)
        assert len(message.encode()) <= chain.MAX_STATUS_MESSAGE_BYTES
