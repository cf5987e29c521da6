"""`lazygrpc up -f mesh.yaml` with real processes: services start in order and serve, a
child that dies is restarted, SIGTERM drains all and exits 0 with no child left, and a bad
file is one line (issue 21, item 6)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

import lazygrpc
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _mesh(tmp_path: Path) -> tuple[Path, int, int]:
    leaf, mid = _free_ports(2)
    path = tmp_path / "mesh.yaml"
    path.write_text(
        f"""services:
  leaf:
    serve: [{FIXTURES / "mesh_leaf.py"}:upper]
    port: {leaf}
  mid:
    serve: [{FIXTURES / "mesh_mid.py"}:shout]
    port: {mid}
    env: {{LEAF_URL: "grpc://127.0.0.1:{leaf}/upper"}}
"""
    )
    return path, leaf, mid


def _up(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lazygrpc", "up", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip


def _kill_all(up: subprocess.Popen[str]) -> None:
    """After a failure: `up` and every child it left (they hold its pipes), then the pipes."""
    if up.poll() is None:
        for proc in [*psutil.Process(up.pid).children(recursive=True), psutil.Process(up.pid)]:
            proc.kill()
    up.communicate(timeout=30)


def _read_until(stream: Any, text: str) -> list[str]:
    lines = []
    while line := stream.readline():
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"ended before {text!r}: {''.join(lines)}")


def test_a_mesh_file_runs_restarts_a_dead_child_and_drains_on_sigterm(tmp_path: Path) -> None:
    path, leaf, mid = _mesh(tmp_path)
    up = _up("-f", str(path))
    try:
        table = _read_until(up.stdout, "stops the mesh")
        assert "mesh is up" in table[0]
        assert any(line.split()[0] == "leaf" for line in table[1:])
        assert any(f"grpc://127.0.0.1:{mid}" in line for line in table)
        assert lazygrpc.connect(f"grpc://127.0.0.1:{mid}/shout", timeout=10)("hi") == "HI!"
        children = psutil.Process(up.pid).children()
        assert len(children) == 2
        leaf_proc = next(c for c in children if f"{leaf}" in " ".join(c.cmdline()))
        leaf_proc.kill()
        _read_until(up.stderr, "restarting")
        _read_until(up.stderr, "leaf is ready")
        assert lazygrpc.connect(f"grpc://127.0.0.1:{mid}/shout", timeout=10)("again") == "AGAIN!"
        pids = [c.pid for c in psutil.Process(up.pid).children()]
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        assert not [
            p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
        ]
    finally:
        _kill_all(up)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("services: {}", "needs a `services:` mapping"),
        ("services:\n  a: {serve: [x.py:f]}", "`port:` must be a port number"),
        ("services:\n  a: {serve: [x.py:f], port: 5, colour: red}", "unknown key 'colour'"),
        ("services:\n  a: {port: 5}", "give one of `serve:"),
        ("services:\n  a: {serve: [x.py:f], port: 5, after: [b]}", "unknown services ['b']"),
        ("services: [1, 2", "is not YAML"),
    ],
)
def test_a_bad_mesh_file_is_one_line_naming_the_problem(
    tmp_path: Path, text: str, says: str
) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "lazygrpc", "up", "-f", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in done.stderr, done.stderr


def test_a_missing_mesh_file_is_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lazygrpc", "up", "-f", os.devnull + ".nope"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 1 and "cannot read it" in done.stderr


def test_auto_ports_and_service_references_run_without_a_port_in_the_file(
    tmp_path: Path,
) -> None:
    """`port: auto` picks a port kept for the mesh's life; `${leaf}` is its address."""
    path = tmp_path / "mesh.yaml"
    path.write_text(
        f"""services:
  leaf:
    serve: [{FIXTURES / "mesh_leaf.py"}:upper]
    port: auto
  mid:
    serve: [{FIXTURES / "mesh_mid.py"}:shout]
    port: auto
    env: {{LEAF_URL: "grpc://${{leaf}}/upper"}}
    note: shouts what the leaf upper-cased
try:
  - "${{lazygrpc}} call grpc://${{mid}}/shout hi"
"""
    )
    up = _up("-f", str(path))
    try:
        lines = _read_until(up.stdout, "stops the mesh")
        mid = next(line.split()[1] for line in lines if line.strip().startswith("mid "))
        assert mid.startswith("grpc://127.0.0.1:") and mid.endswith("/shout")
        assert any("shouts what the leaf upper-cased" in line for line in lines)
        assert any(f"call {mid} hi" in line for line in lines)
        assert lazygrpc.connect(mid, timeout=10)("hi") == "HI!"
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
    finally:
        _kill_all(up)


def test_a_service_whose_extra_is_missing_is_left_out_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lazygrpc import meshfile

    # This package's metadata as an install without the `phantom` extra's package sees it.
    dist = tmp_path / "site" / "lazygrpc-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: lazygrpc\nVersion: 0.1.0\n"
        'Requires-Dist: no-such-package-here>=1; extra == "phantom"\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path = tmp_path / "mesh.yaml"
    path.write_text(
        """services:
  leaf: {serve: [leaf.py:upper], port: 50100}
  front: {edge: ["--upstream=grpc://${leaf}"], port: auto, requires: [phantom]}
try:
  - "curl http://${front}/v1/models"
  - "grpcurl -plaintext ${leaf} list"
"""
    )
    mesh = meshfile.load(path, meshfile.Options(variables={}))
    assert [c.name for c in mesh.children] == ["leaf"]
    assert mesh.left_out == ["front: left out (pip install 'lazygrpc[phantom]' adds it)"]
    assert mesh.try_commands == ["grpcurl -plaintext 127.0.0.1:50100 list"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("services:\n  a: {serve: [x.py:f], port: 5, requires: [nope]}", "not a lazygrpc extra"),
        ("services:\n  a: {serve: ['${NOPE_X}:f'], port: 5}", "${NOPE_X} is neither a service"),
        ("services:\n  a: {serve: [x.py:f], port: 5}\n  b: {serve: [y.py:g], port: 5}",
         "two services on one address"),
    ],
)  # fmt: skip
def test_a_bad_reference_is_one_line_naming_it(tmp_path: Path, text: str, says: str) -> None:
    from lazygrpc import meshfile

    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    with pytest.raises(meshfile.MeshFileError, match=re.escape(says)):
        meshfile.load(path, meshfile.Options(variables={}))
