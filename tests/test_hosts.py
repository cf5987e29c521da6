"""Across hosts: gateway, retriever and two model replicas on three network namespaces.

gateway (host `gw`) → retriever (host `ret`) → model replicas on `ret` and `modb`, by
address, over veth links; a Redis broker on `modb`. The test reaches each process through
a unix socket of its own (tests/netns.py); every hop between services crosses hosts.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import lazygrpc
from lazygrpc.core.values import from_value, to_value
from lazygrpc.v1 import broker_pb2, broker_pb2_grpc, module_pb2, module_pb2_grpc
from tests.netns import Hosts, unavailable_reason
from tests.redisd import redis_server

pytestmark = pytest.mark.skipif((reason := unavailable_reason()) is not None, reason=reason or "")
MODULES = "tests/fixtures/host_modules.py"
#: Seconds of the retriever's keepalive to the model replicas: a cut link shows within ~2x.
KEEPALIVE = 1


class Mesh:
    def __init__(self, hosts: Hosts, run_dir: str, broker: str) -> None:
        self.hosts, self.run_dir, self.broker = hosts, run_dir, broker
        a = hosts.address
        self.model_addresses = {"model-a": f"{a['ret']}:50052", "model-b": f"{a['modb']}:50052"}
        self.model_procs = {
            "model-a": self.start_model("ret", "model-a"),
            "model-b": self.start_model("modb", "model-b"),
        }
        targets = ",".join(self.model_addresses.values())
        hosts.start(
            "ret", "serve", f"{MODULES}:middle", f"{MODULES}:models", "--name", "retriever",
            "--host", a["ret"], "--port", "50051", "--also-listen", self.sock("retriever"),
            "--broker", broker, "--expose-tracebacks",  # its callers: our own hosts
            env={"LAZYGRPC_MODEL_URL": f"ipv4:{targets}?keepalive={KEEPALIVE}"},
        )  # fmt: skip
        hosts.start(
            "gw", "serve", f"{MODULES}:front", "--name", "gateway",
            "--host", a["gw"], "--port", "50051", "--also-listen", self.sock("gateway"),
            "--broker", broker, "--expose-tracebacks",
            env={"LAZYGRPC_NEXT_URL": f"grpc://{a['ret']}:50051"},
        )  # fmt: skip

    def sock(self, name: str) -> str:
        return f"unix:{self.run_dir}/{name}.sock"

    def start_model(self, host: str, name: str) -> Any:
        return self.hosts.start(
            host, "serve-model", "--backend", "echo", "--model-name", name, "--name", "model",
            "--token-delay", "0.05", "--host", self.model_addresses[name].split(":")[0],
            "--port", "50052", "--also-listen", self.sock(name), "--expose-tracebacks",
        )  # fmt: skip

    def stub(self, name: str, cls: Any = module_pb2_grpc.ModuleServiceStub) -> Any:
        return cls(lazygrpc.intercept_channel(grpc.insecure_channel(self.sock(name))))

    def models(self, n: int) -> list[str]:
        reply = self.stub("retriever").Call(
            module_pb2.CallRequest(module="models", input=to_value(n)), timeout=30
        )
        return list(from_value(reply.output))

    def streams_on(self, model: str) -> int:
        stats = self.stub(model, broker_pb2_grpc.BrokerServiceStub).GetBrokerStats(
            broker_pb2.GetBrokerStatsRequest(), timeout=10
        )
        return int(stats.open_topics)

    def both_serving(self) -> None:
        """Until round_robin spreads over both replicas again (a hang guard: 60 s)."""
        t0 = time.monotonic()
        while set(self.models(6)) != {"model-a", "model-b"}:
            assert time.monotonic() - t0 < 60, "the replica set did not recover"


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    hosts = Hosts(["gw", "ret", "modb"])
    run_dir = tempfile.mkdtemp(prefix="lzg-")
    try:
        with redis_server(hosts.address["modb"], 6379, prefix=hosts.prefix("modb")) as broker:
            yield Mesh(hosts, run_dir, broker)
            hosts.close()  # before the broker: the servers' subscribers leave cleanly
    finally:
        hosts.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def _front(
    mesh: Mesh, question: str, tokens: int = 3, timeout: float = 30, gateway: str = "gateway"
) -> Any:
    return mesh.stub(gateway).Stream(
        module_pb2.CallRequest(module="front", input=to_value(question),
                               kwargs={"tokens": tokens}),
        timeout=timeout,
    )  # fmt: skip


def test_sessions_globals_and_deadlines_cross_hosts(mesh: Mesh) -> None:
    with lazygrpc.session("s-hosts", user="ada") as s:
        events = list(_front(mesh, "hi", timeout=20))
        seen = {
            k: v for ev in events if ev.HasField("intermediate")
            for k, v in from_value(ev.intermediate).items()
        }  # fmt: skip
        text = "".join(from_value(ev.delta) for ev in events if ev.HasField("delta"))
        assert text.split() == ["hi"] * 3
        assert seen["front"]["host"] == "gw" and seen["middle"]["host"] == "ret"
        assert seen["middle"]["session"] == "s-hosts"
        assert seen["middle"]["globals"] == {
            "user": "ada", "front_host": "gw", "middle_host": "ret"
        }  # fmt: skip
        # The caller's deadline reached two hosts down. grpc core rounds grpc-timeout up
        # to 100 ms steps between 10 s and 100 s, so each hop may add up to 0.1 s.
        assert 0 < seen["front"]["deadline"] <= 20.1
        assert 0 < seen["middle"]["deadline"] <= seen["front"]["deadline"] + 0.1
        # What each host changed comes back upstream, across both hops.
        back = s.values()
        assert {k: back[k] for k in ("user", "front_host", "middle_host")} == {
            "user": "ada", "front_host": "gw", "middle_host": "ret"
        }  # fmt: skip
        assert back["usage"]["completion_tokens"] == 3  # the model's, from two hops down


def test_the_error_chain_names_each_host(mesh: Mesh) -> None:
    with pytest.raises(grpc.RpcError) as info:
        list(_front(mesh, "fail"))
    error = lazygrpc.remote_error_from_rpc(info.value)
    assert [(f.service, f.host) for f in error.chain] == [("gateway", "gw"), ("retriever", "ret")]
    assert error.remote_type == "LookupError"
    assert "middle on ret cannot answer 'fail'" in str(error)


def test_a_cancel_stops_the_work_on_the_model_host(mesh: Mesh) -> None:
    call = _front(mesh, "slow", tokens=200)  # 200 tokens x 50 ms: ten seconds of work
    next(ev for ev in call if ev.HasField("delta"))
    assert sum(mesh.streams_on(m) for m in mesh.model_addresses) == 1
    call.cancel()
    t0 = time.monotonic()
    while sum(mesh.streams_on(m) for m in mesh.model_addresses):
        assert time.monotonic() - t0 < 5, "the model kept streaming after the cancel"


def test_round_robin_spreads_over_both_model_replicas(mesh: Mesh) -> None:
    mesh.both_serving()
    names = mesh.models(20)
    assert names.count("model-a") == names.count("model-b") == 10


def _idle(mesh: Mesh) -> None:
    t0 = time.monotonic()
    while sum(mesh.streams_on(m) for m in mesh.model_addresses):
        assert time.monotonic() - t0 < 10, "a model kept streaming after its call ended"


def _in_flight_stream(mesh: Mesh, on: str) -> list[Any]:
    """A long stream through the gateway that runs on replica `on`; a list that gets the
    stream's outcome (its RpcError, or "finished")."""
    for _ in range(10):  # round_robin: the next one lands on the other replica
        _idle(mesh)
        call = _front(mesh, "long", tokens=400, timeout=60)
        next(ev for ev in call if ev.HasField("delta"))
        if mesh.streams_on(on):
            break
        call.cancel()
    else:
        raise AssertionError(f"no stream landed on {on}")
    outcome: list[Any] = []

    def drain() -> None:
        try:
            for _ in call:
                pass
            outcome.append("finished")
        except grpc.RpcError as err:
            outcome.append(err)

    threading.Thread(target=drain, daemon=True).start()
    return outcome


def _fails_unavailable_naming(outcome: list[Any], address: str, within: float) -> None:
    t0 = time.monotonic()
    while not outcome:
        assert time.monotonic() - t0 < within, "the in-flight call hung"
    (err,) = outcome
    assert isinstance(err, grpc.RpcError), err
    error = lazygrpc.remote_error_from_rpc(err)
    assert error.code == grpc.StatusCode.UNAVAILABLE, error.report()
    assert [f.host for f in error.chain[:2]] == ["gw", "ret"]
    assert address in error.report()  # the failed hop names the replica's address


def test_a_cut_link_moves_calls_to_the_other_replica_and_back(mesh: Mesh) -> None:
    """model-b's host loses its link (no RST: packets stop); keepalive finds out."""
    mesh.both_serving()
    outcome = _in_flight_stream(mesh, on="model-b")
    mesh.hosts.link("modb", up=False)
    try:
        _fails_unavailable_naming(outcome, mesh.model_addresses["model-b"], within=10 * KEEPALIVE)
        assert set(mesh.models(10)) == {"model-a"}
    finally:
        mesh.hosts.link("modb", up=True)
    mesh.both_serving()


@pytest.mark.parametrize("victim", ["model-a", "model-b"])
def test_a_killed_replica_moves_calls_and_a_restarted_one_comes_back(
    mesh: Mesh, victim: str
) -> None:
    mesh.both_serving()
    outcome = _in_flight_stream(mesh, on=victim)
    other = next(m for m in mesh.model_addresses if m != victim)
    proc = mesh.model_procs[victim]
    proc.kill()
    proc.communicate(timeout=10)
    _fails_unavailable_naming(outcome, mesh.model_addresses[victim], within=10)
    assert set(mesh.models(10)) == {other}
    mesh.model_procs[victim] = mesh.start_model("ret" if victim == "model-a" else "modb", victim)
    mesh.both_serving()


def test_the_redis_broker_carries_events_across_hosts(mesh: Mesh) -> None:
    """Subscribe on the gateway's host, publish through the retriever's, Redis on a third."""
    sub = mesh.stub("gateway", broker_pb2_grpc.BrokerServiceStub).Subscribe(
        broker_pb2.SubscribeRequest(topic="hosts/1"), timeout=30
    )
    token = dict(sub.initial_metadata())["lazy-topic-token"]  # the owner's, in Redis
    values = [{"n": i} for i in range(100)]
    reply = mesh.stub("retriever", broker_pb2_grpc.BrokerServiceStub).Publish(
        iter(broker_pb2.PublishRequest(topic="hosts/1", source="ret", value=to_value(v))
             for v in values),
        timeout=30, metadata=(("lazy-topic-token", token),),
    )  # fmt: skip
    assert reply.accepted == len(values)
    got = [from_value(next(sub).intermediate) for _ in values]
    assert got == values
    sub.cancel()


def test_a_hop_across_hosts_runs_over_tls(mesh: Mesh, tmp_path: Any) -> None:
    """A second gateway on `gw` calls a TLS retriever on `ret` by a `grpcs://` URL, with a
    certificate for that host's address and the CA from `LAZYGRPC_TLS_CA`: the answer, its
    session and the retriever's host come back over the encrypted hop."""
    from tests.tlscerts import CA

    a = mesh.hosts.address
    ca = CA(tmp_path, "hosts")
    cert = ca.issue("retriever", ips=(a["ret"],))
    targets = ",".join(mesh.model_addresses.values())
    mesh.hosts.start(
        "ret", "serve", f"{MODULES}:middle", "--name", "retriever-tls", "--host", a["ret"],
        "--port", "50061", "--tls-cert", cert.cert_file, "--tls-key", cert.key_file,
        "--expose-tracebacks", env={"LAZYGRPC_MODEL_URL": f"ipv4:{targets}"},
    )  # fmt: skip
    mesh.hosts.start(
        "gw", "serve", f"{MODULES}:front", "--name", "gateway-tls", "--host", a["gw"],
        "--port", "50061", "--also-listen", mesh.sock("gateway-tls"), "--expose-tracebacks",
        env={"LAZYGRPC_NEXT_URL": f"grpcs://{a['ret']}:50061", "LAZYGRPC_TLS_CA": ca.cert_file},
    )  # fmt: skip
    with lazygrpc.session("s-tls"):
        events = list(_front(mesh, "hi", timeout=20, gateway="gateway-tls"))
    seen = {
        k: v for ev in events if ev.HasField("intermediate")
        for k, v in from_value(ev.intermediate).items()
    }  # fmt: skip
    assert (
        "".join(from_value(ev.delta) for ev in events if ev.HasField("delta")).split() == ["hi"] * 3
    )
    assert seen["middle"]["host"] == "ret" and seen["middle"]["session"] == "s-tls"
