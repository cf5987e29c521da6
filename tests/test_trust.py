"""Trust boundaries for globals, through real servers: a callee cannot poison its caller's
session, a forged update or header changes only what a policy lets it, `usage` adds up
from what models report, and text that is not Unicode never gets in (issue 17, item 3)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import lazygrpc
from lazygrpc.core import baggage
from lazygrpc.core.values import to_value
from lazygrpc.v1 import module_pb2, module_pb2_grpc


def _raw(url: str, module: str, metadata: Any = ()) -> Any:
    """A raw grpcio call: (response, trailing metadata)."""
    with grpc.insecure_channel(url.removeprefix("grpc://")) as ch:
        stub = module_pb2_grpc.ModuleServiceStub(ch)
        response, call = stub.Call.with_call(
            module_pb2.CallRequest(module=module, input=to_value("x")),
            metadata=list(metadata),
            timeout=10,
        )
        return response, dict(call.trailing_metadata())


def test_a_callee_that_would_overflow_its_callers_session_fails_and_the_caller_goes_on(
    servers: Any,
) -> None:
    """The probe's case: a session with 5 KB of globals calls a module that sets 4 KB. The
    callee refuses its own update (RESOURCE_EXHAUSTED naming the key); the caller's session
    is as it was, and its next calls work."""

    def big_answer(x: Any) -> str:
        lazygrpc.globals["answer"] = "y" * 4000
        return "ok"

    def echo(x: Any) -> Any:
        return x

    url = servers.modules({"big_answer": big_answer, "echo": echo})
    with lazygrpc.session("s-poison", notes="x" * 5000) as s:
        with pytest.raises(lazygrpc.RemoteError) as info:
            lazygrpc.connect(f"{url}/big_answer")("q")
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "answer" in str(info.value)
        assert set(s.values()) == {"notes"}
        assert lazygrpc.connect(f"{url}/echo")("still works") == "still works"


def test_a_forged_update_changes_only_what_the_callers_policy_lets_callees_change(
    servers: Any,
) -> None:
    """A hostile leaf sends `user=admin, role=root` back. Under a server whose policy lets
    callees change only `docs`, the gateway's session keeps `user=ada` and gains no `role`;
    without a policy (the documented default) the change goes through."""

    def hostile(x: Any) -> str:
        lazygrpc.globals["user"] = "admin"
        lazygrpc.globals["role"] = "root"
        lazygrpc.globals["docs"] = [1, 2]
        return "done"

    leaf = servers.modules({"hostile": hostile})

    def gateway(x: Any) -> dict[str, Any]:
        lazygrpc.connect(f"{leaf}/hostile")(x)
        return dict(lazygrpc.globals)

    policy = lazygrpc.GlobalsPolicy.of(from_callees=["docs"])
    guarded = servers.modules({"gateway": gateway}, globals_policy=policy)
    open_ = servers.modules({"gateway": gateway})
    with lazygrpc.session(user="ada"):
        seen = lazygrpc.connect(f"{guarded}/gateway")("q")
        assert seen == {"user": "ada", "docs": [1, 2]}
        assert lazygrpc.globals["user"] == "ada" and "role" not in lazygrpc.globals
    with lazygrpc.session(user="ada"):
        assert lazygrpc.connect(f"{open_}/gateway")("q")["role"] == "root"


def test_a_server_takes_only_the_globals_its_policy_accepts_from_callers(servers: Any) -> None:
    def whoami(x: Any) -> dict[str, Any]:
        return dict(lazygrpc.globals)

    url = servers.modules(
        {"whoami": whoami}, globals_policy=lazygrpc.GlobalsPolicy.of(accept=["user"])
    )
    header = "lazy.user=%22ada%22,lazy.role=%22root%22,other=1"
    response, _ = _raw(url, "whoami", [("baggage", header)])
    assert response.output.struct_value.fields["user"].string_value == "ada"
    assert "role" not in response.output.struct_value.fields


def test_a_forged_usage_header_is_never_added_to_by_the_model(servers: Any) -> None:
    """The model reports its own counts: whatever `usage` a caller sends, what comes back up
    in the trailer is this call's counts, never the forged total plus them."""
    model = servers.model("echo")
    llm = lazygrpc.LLM(model)

    def relay(x: str) -> str:
        return llm(x)

    url = servers.modules({"relay": relay})
    forged = baggage.encode_entry(
        "usage", baggage.encode_json("usage", {"calls": 1000000000001, "total_tokens": -50})
    )
    _, trailers = _raw(url, "relay", [("baggage", forged)])
    update = baggage.parse_baggage(trailers[baggage.UPDATE_TRAILER])
    assert update.values["usage"]["calls"] == 1
    assert update.values["usage"]["total_tokens"] > 0
    with lazygrpc.session() as s:  # and a real session adds up what each call reports
        llm("one two")
        llm("three")
        assert s.get("usage")["calls"] == 2


@pytest.mark.parametrize(
    "header", ["lazy.usage=%7B%22%5Cud800%22:1%7D", "lazy.name=%22a%5CuDFFFb%22"]
)
def test_a_lone_surrogate_in_baggage_is_invalid_argument_and_the_server_goes_on(
    servers: Any, header: str
) -> None:
    model = servers.model("echo")
    with grpc.insecure_channel(model.removeprefix("grpc://")) as ch:
        from lazygrpc.v1 import model_pb2, model_pb2_grpc

        stub = model_pb2_grpc.ModelServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Complete(
                model_pb2.GenerateRequest(input="hi"), metadata=[("baggage", header)], timeout=10
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "surrogate" in info.value.details()
        assert stub.Complete(model_pb2.GenerateRequest(input="hi"), timeout=10).text


def test_a_callee_update_with_a_lone_surrogate_is_not_merged(servers: Any) -> None:
    """A raw server (not lazygrpc) sends a surrogate in its update: the caller drops the
    update, keeps its globals, and its next call's header still encodes."""

    class Raw(module_pb2_grpc.ModuleServiceServicer):
        def Call(self, request: Any, context: Any) -> Any:
            context.set_trailing_metadata([(baggage.UPDATE_TRAILER, "lazy.k=%22%5Cud800%22")])
            return module_pb2.CallResponse(output=to_value("ok"))

    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(2))
    module_pb2_grpc.add_ModuleServiceServicer_to_server(Raw(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with lazygrpc.session(k="kept") as s:
            assert lazygrpc.connect(f"grpc://127.0.0.1:{port}/m")("x") == "ok"
            assert s.get("k") == "kept" and s.baggage()
    finally:
        server.stop(0)
