"""Exception chains across three hops: RemoteError, the details trailer, redaction, bad peers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import lazygrpc
from lazygrpc.core.values import to_value
from lazygrpc.v1 import chain_pb2, module_pb2, module_pb2_grpc
from tests.hops import SERVER_KINDS, Mesh, aborting_bare_server


@pytest.fixture(params=SERVER_KINDS)
def mesh(request: pytest.FixtureRequest, servers: Any) -> Iterator[Mesh]:
    m = Mesh(servers, request.param)
    yield m
    m.close()


def _run(mesh: Mesh, client: str, x: str) -> Any:
    if client == "sync":
        return mesh.run(x)

    async def go() -> Any:
        try:
            return await mesh.run.acall(x)
        finally:
            await lazygrpc.client.channels.aclose_all()

    return asyncio.run(go())


@pytest.mark.parametrize("client", ["sync", "aio"])
def test_unary_error_at_hop3_has_three_frames_entry_first(mesh: Mesh, client: str) -> None:
    with lazygrpc.session("err-1"), pytest.raises(lazygrpc.RemoteError) as info:
        _run(mesh, client, "fail-unary")
    err = info.value
    assert isinstance(err, lazygrpc.LazyGrpcError)
    assert err.code == grpc.StatusCode.UNKNOWN
    assert err.remote_type == "ValueError"
    run = mesh.method("run", "Call")
    assert [(f.service, f.method) for f in err.chain] == [
        ("hop1", run),
        ("hop2", run),
        ("hop3", run),
    ]
    assert all(f.error_type == "ValueError" for f in err.chain)
    assert all("hop3 failed on 'fail-unary'" in f.message for f in err.chain)
    assert all(f.session_id == "err-1" for f in err.chain)
    assert err.session_id == "err-1"
    assert "raise ValueError" in err.chain[-1].traceback
    assert str(err) == (
        f"hop1.{run} → hop2.{run} → hop3.{run}: ValueError: hop3 failed on 'fail-unary'"
    )
    assert isinstance(err.__cause__, grpc.RpcError)


def test_status_errors_keep_their_code(mesh: Mesh) -> None:
    with pytest.raises(lazygrpc.RemoteError) as info:
        mesh.run("notfound-x")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert info.value.remote_type == "NotFound"
    assert len(info.value.chain) == 3


@pytest.mark.parametrize("client", ["sync", "aio"])
def test_stream_error_after_five_chunks(mesh: Mesh, client: str) -> None:
    got: list[str] = []
    with pytest.raises(lazygrpc.RemoteError) as info:
        if client == "sync":
            for ev in mesh.stream.stream("fail-stream", n=5):
                got.append(ev.value)
        else:

            async def go() -> None:
                try:
                    async for ev in mesh.stream.astream("fail-stream", n=5):
                        got.append(ev.value)
                finally:
                    await lazygrpc.client.channels.aclose_all()

            asyncio.run(go())
    assert "".join(got) == "c0 c1 c2 c3 c4 "
    err = info.value
    assert [f.service for f in err.chain] == ["hop1", "hop2", "hop3"]
    assert err.chain[-1].message == "hop3 failed after 5 chunks"


def test_details_trailer_decodes_with_plain_grpc_status(mesh: Mesh) -> None:
    target = mesh.entry.removeprefix("grpc://")
    with grpc.insecure_channel(target) as ch:
        stub = module_pb2_grpc.ModuleServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Call(
                module_pb2.CallRequest(module="run", input=to_value("fail-plain")),
                metadata=[("lazy-session-id", "plain-1")],
                timeout=10,
            )
    status = rpc_status.from_call(info.value)
    assert status is not None and status.code == grpc.StatusCode.UNKNOWN.value[0]
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    error_info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(error_info)
    assert (error_info.reason, error_info.domain) == ("ValueError", "lazygrpc")
    assert error_info.metadata["session_id"] == "plain-1"
    assert error_info.metadata["service"] == "hop1"
    chains = [d for d in status.details if d.Is(chain_pb2.CallChain.DESCRIPTOR)]
    chain = chain_pb2.CallChain()
    chains[0].Unpack(chain)
    assert [f.service for f in chain.frames] == ["hop1", "hop2", "hop3"]


def test_redacted_chain_keeps_types_and_path_but_no_exception_text(servers: Any) -> None:
    from tests.hops import Record, make_modules

    record = Record()
    url = None
    for name in ("hop3", "hop2", "hop1"):
        url = servers.modules(make_modules("aio", record, url), name=name, expose_tracebacks=False)
    with pytest.raises(lazygrpc.RemoteError) as info:
        lazygrpc.connect(f"{url}/run")("fail-redacted")
    err = info.value
    assert [f.service for f in err.chain] == ["hop1", "hop2", "hop3"]
    assert all(f.traceback == "" for f in err.chain)
    assert all(f.host == "" and f.pid == 0 for f in err.chain)
    assert err.chain[-1].error_type == "ValueError"
    # The plain internal error of docs/errors.md "Redaction by trust": no exception text.
    assert err.code == grpc.StatusCode.INTERNAL
    assert str(err) == "hop1.run → hop2.run → hop3.run: ValueError: internal error"
    assert "fail-redacted" not in err.report()


async def test_tracebacks_are_decided_per_call_unless_set() -> None:
    assert lazygrpc.Server(host="0.0.0.0").expose_tracebacks is None
    assert lazygrpc.Server(host="127.0.0.1", expose_tracebacks=False).expose_tracebacks is False
    with pytest.raises(ValueError, match="redact='some'"):
        lazygrpc.Server(redact="some")


def test_bare_grpcio_hop_that_raises_still_yields_a_frame(servers: Any) -> None:
    not_ready = grpc.StatusCode.FAILED_PRECONDITION
    with aborting_bare_server(not_ready, "bare hop is not ready") as port:
        inner = lazygrpc.connect(f"grpc://127.0.0.1:{port}/run")

        async def gateway(x: str) -> Any:
            return await inner.acall(x)

        url = servers.modules({"gateway": gateway}, name="gw")
        with pytest.raises(lazygrpc.RemoteError) as info:
            lazygrpc.connect(f"{url}/gateway")("x")
    err = info.value
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert [(f.service, f.method) for f in err.chain] == [
        ("gw", "gateway"),
        (f"127.0.0.1:{port}", "run"),
    ]
    assert err.chain[-1].error_type == "FAILED_PRECONDITION"
    assert err.chain[-1].message == "bare hop is not ready"


@pytest.mark.parametrize("garbage", [b"\xff\x00garbage", b""])
def test_corrupt_details_from_a_peer_give_a_plain_remote_error(garbage: bytes) -> None:
    class Liar(module_pb2_grpc.ModuleServiceServicer):
        def Call(self, request: Any, context: Any) -> Any:
            context.set_trailing_metadata([("grpc-status-details-bin", garbage)])
            context.abort(grpc.StatusCode.INTERNAL, "peer with broken details")

    server = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.so_reuseport", 0)])
    module_pb2_grpc.add_ModuleServiceServicer_to_server(Liar(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with pytest.raises(lazygrpc.RemoteError) as info:
            lazygrpc.connect(f"grpc://127.0.0.1:{port}/m")(1)
    finally:
        server.stop(0)
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert info.value.message == "peer with broken details"
    assert len(info.value.chain) == 1


def test_chain_limits_elide_middle_frames_and_fit_the_trailer() -> None:
    from lazygrpc.core import chain

    exc = ValueError("x" * 5000)
    c = chain_pb2.CallChain()
    for i in range(40):
        frame = chain.make_frame(exc, service=f"s{i}", method="m", expose_traceback=True)
        c = chain.extend_chain(frame, list(c.frames), c.elided_frames)
    assert len(c.frames) == chain.MAX_FRAMES and c.elided_frames == 8
    status = chain.to_grpc_status(exc, c, service="s", method="m", session_id="")
    blob = dict(status.trailing_metadata)["grpc-status-details-bin"]
    assert len(blob) <= chain.STATUS_BUDGET_BYTES
    remote = chain.remote_error_from(status.code, status.details, status.trailing_metadata)
    assert remote.chain[0].service == "s39" and remote.chain[-1].service == "s0"
    assert remote.elided_frames >= 8
    assert "more" in remote.path
