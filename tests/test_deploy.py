"""The Dockerfile and servers/k8s, checked offline: schemas, probes, drain, and the CLI.

No container engine or cluster runs here: the manifests are validated against the
Kubernetes schemas (kubernetes-validate ships them), and every command line the image
or a pod runs is parsed by lazygrpc's own CLI parser.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from lazygrpc.cli import parser
from lazygrpc.client import channels
from lazygrpc.server.builder import DRAIN_NOTICE

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "servers" / "k8s").glob("*.yaml"))
K8S_VERSION = "1.30.0"


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(a, str) for a in value), rest
    return value


def _docs() -> list[dict[str, Any]]:
    return [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]


def _image_tag() -> str:
    (tag,) = re.findall(r"^IMAGE \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    return tag


def _containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (d, c)
        for d in _docs()
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


def test_the_dockerfile_builds_a_slim_non_root_image_running_lazygrpc() -> None:
    ops = _dockerfile()
    (base,) = [rest for op, rest in ops if op == "FROM"]
    assert re.fullmatch(r"python:3\.1[1-9]-slim", base)
    (user,) = [rest for op, rest in ops if op == "USER"]
    assert user not in ("root", "0")
    assert any(op == "RUN" and f"--uid {user}" in rest for op, rest in ops)  # made, fixed uid
    for op, rest in ops:
        if op == "COPY":
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the checkout"
    installs = [rest for op, rest in ops if op == "RUN" and "pip install" in rest]
    assert installs and all("'.[" in r for r in installs)  # the package from the checkout
    (entrypoint,) = [_exec_form(rest) for op, rest in ops if op == "ENTRYPOINT"]
    assert entrypoint == ["lazygrpc"]


def test_the_images_commands_parse_with_the_cli() -> None:
    ops = _dockerfile()
    (cmd,) = [_exec_form(rest) for op, rest in ops if op == "CMD"]
    args = parser().parse_args(cmd)
    assert (args.host, args.port) == ("0.0.0.0", 50051)
    (check,) = [rest for op, rest in ops if op == "HEALTHCHECK"]
    command = check.split(" CMD ", 1)[1].strip()
    # Shell form: Docker reserves exit code 2, which `lazygrpc health` uses for a failed call.
    assert command.endswith(" || exit 1"), command
    argv = shlex.split(command.removesuffix(" || exit 1"))
    assert argv[:2] == ["lazygrpc", "health"]
    health = parser().parse_args(argv[1:])
    assert channels.parse_url(health.url) == ("127.0.0.1:50051", "")
    assert re.search(r"--timeout=(\d+)s", check) and health.timeout < int(
        re.search(r"--timeout=(\d+)s", check).group(1)  # type: ignore[union-attr]
    )
    exposed = [int(p) for op, rest in ops if op == "EXPOSE" for p in rest.split()]
    assert args.port in exposed


@pytest.mark.parametrize("doc", _docs(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_manifest_is_valid_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_schema_check_catches_a_misspelt_field() -> None:
    deployment = next(d for d in _docs() if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_every_container_runs_the_image_with_args_the_cli_accepts() -> None:
    assert _containers()
    for deployment, c in _containers():
        name = deployment["metadata"]["name"]
        assert c["image"] == _image_tag(), name
        args = parser().parse_args(c["args"])
        assert args.host == "0.0.0.0", f"{name} must listen beyond loopback"
        (port,) = [p["containerPort"] for p in c["ports"]]
        assert args.port == port, name
        if c["ports"][0]["name"] == "grpc":
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert c[probe]["grpc"] == {"port": port}, f"{name} {probe}: native gRPC probe"
        else:  # the HTTP edge: its own /health
            for probe in ("readinessProbe", "livenessProbe"):
                assert c[probe]["httpGet"] == {"path": "/health", "port": port}, name
        assert c["resources"]["requests"].keys() >= {"cpu", "memory"}, name
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        # The drain fits: preStop, then the notice and --grace, inside the grace period.
        pre_stop = shlex.join(c["lifecycle"]["preStop"]["exec"]["command"])
        (sleep,) = [float(s) for s in re.findall(r"^sleep (\d+(?:\.\d+)?)$", pre_stop)]
        notice = getattr(args, "drain_notice", None)
        notice = DRAIN_NOTICE if notice is None else notice
        assert pod["terminationGracePeriodSeconds"] >= sleep + notice + args.grace + 2, name


def test_services_are_headless_and_urls_name_them() -> None:
    docs = _docs()
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    budgets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PodDisruptionBudget"}
    for deployment, c in _containers():
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        service = services[name]
        assert service["spec"]["selector"].items() <= labels.items()
        if c["ports"][0]["name"] == "grpc":
            assert service["spec"]["clusterIP"] == "None", f"{name}: headless, for dns:/// lb"
            assert [p["port"] for p in service["spec"]["ports"]] == [
                p["containerPort"] for p in c["ports"]
            ]
        else:  # HTTP clients reach one virtual IP, which forwards to the edge's port
            assert [p["targetPort"] for p in service["spec"]["ports"]] == [
                p["containerPort"] for p in c["ports"]
            ]
        upstreams = [a for a in c["args"] if a.startswith("dns:///")]
        for url in upstreams:
            host = url.removeprefix("dns:///").partition(":")[0]
            assert host in services, f"{name}: {url} names no Service"
        if deployment["spec"]["replicas"] > 1:
            assert budgets[name]["spec"]["selector"]["matchLabels"].items() <= labels.items()
        for var in c.get("env", []):
            if var["value"].startswith("dns:///"):
                target, _, policy = channels.parse_endpoint(var["value"])
                host, _, port = target.removeprefix("dns:///").partition(":")
                assert host in services, f"{var['name']} names no Service"
                assert int(port) in [p["port"] for p in services[host]["spec"]["ports"]]
                assert policy.lb_for(target) == "round_robin"
