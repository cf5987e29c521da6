"""`lazygrpc call` for any signature, `--json`, exit codes, and one-line startup errors:
the installed command run as a subprocess against real servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, start_cli

from lazygrpc.version import __version__

FIXTURE = "tests/fixtures/ops_modules.py"


def cli(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lazygrpc", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        env={**os.environ, **env},
    )


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    names = ("add", "scale", "zero", "boom", "count")
    proc, address = start_cli("serve", *(f"{FIXTURE}:{n}" for n in names))
    try:
        yield f"grpc://{address}"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_call_with_no_input_calls_a_zero_argument_module(url: str) -> None:
    result = cli("call", f"{url}/zero")
    assert (result.returncode, result.stdout) == (0, "zero\n"), result.stderr


def test_call_args_and_kwargs_reach_any_signature(url: str) -> None:
    assert cli("call", f"{url}/add", "--args", "[1, 2]").stdout == "3\n"
    assert cli("call", f"{url}/add", "--kwargs", '{"a": 1, "b": 5}').stdout == "6\n"
    assert cli("call", f"{url}/add", "1", "--kwargs", '{"b": 5}').stdout == "6\n"
    result = cli("call", f"{url}/scale", "--args", "[3]", "--kwargs", '{"factor": 3}')
    assert result.stdout == "9\n", result.stderr
    # INPUT keeps meaning one argument: a JSON array is one list, not two arguments.
    result = cli("call", f"{url}/add", "[1, 2]")
    assert result.returncode == 1 and "INVALID_ARGUMENT" in result.stderr


def test_stream_on_a_unary_module_prints_its_result(url: str) -> None:
    result = cli("call", f"{url}/add", "--args", "[3, 4]", "--stream")
    assert (result.returncode, result.stdout) == (0, "7\n"), result.stderr


def test_json_prints_one_object_per_event_then_the_result(url: str) -> None:
    result = cli("call", f"{url}/count", "3", "--stream", "--json", "--global", "user=ada")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    deltas = lines[:-1]
    assert all(d["kind"] == "delta" and d["source"] == "count" for d in deltas)
    assert [d["value"] for d in deltas] == [0, 1, 2]  # only text deltas ever coalesce
    assert [d["seq"] for d in deltas] == list(range(len(deltas)))
    assert lines[-1] == {
        "kind": "result",
        "value": [0, 1, 2],
        "source": "count",
        "globals": {"user": "ada"},
    }
    unary = cli("call", f"{url}/add", "--args", "[1, 1]", "--json")
    assert json.loads(unary.stdout) == {
        "kind": "result",
        "value": 2,
        "source": "add",
        "globals": {},
    }


def test_json_prints_the_error_chain_and_exits_one(url: str) -> None:
    result = cli("call", f"{url}/boom", "--json", "--session", "s-1")
    assert result.returncode == 1
    (line,) = result.stdout.splitlines()
    error = json.loads(line)
    assert error["kind"] == "error" and error["status"] == "UNKNOWN"
    assert error["error_type"] == "ValueError" and error["message"] == "boom: kaboom"
    assert error["session"] == "s-1"
    (frame,) = error["chain"]
    assert frame["method"] == "boom" and frame["error_type"] == "ValueError"
    assert "raise ValueError" in frame["traceback"]  # a loopback server sends it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--args", "[1"], "--args: '[1' is not JSON"),
        (["--args", "{}"], "--args must be a JSON array, got '{}'"),
        (["--kwargs", "[]"], "--kwargs must be a JSON object, got '[]'"),
        (["1", "--args", "[1]"], "give INPUT or --args, not both"),
        (["--global", "nokey"], "--global 'nokey' must look like KEY=VALUE"),
    ],
)
def test_usage_errors_exit_two_with_one_line(url: str, args: list[str], message: str) -> None:
    result = cli("call", f"{url}/add", *args)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("lazygrpc: ") and message in line


def test_a_call_to_no_server_exits_one() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = cli("call", f"grpc://127.0.0.1:{port}/add", "--timeout", "5")
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr


def test_version_and_exit_codes_in_help() -> None:
    result = cli("--version")
    assert (result.returncode, result.stdout) == (0, f"lazygrpc {__version__}\n")
    assert (
        "exit codes: 0 success, 1 the call or the server failed, 2 usage error"
        in cli("--help").stdout
    )
    assert "--kwargs JSON_OBJECT" in cli("call", "--help").stdout
    assert cli("nosuchcommand").returncode == 2


# -- startup errors ------------------------------------------------------------------------


def _startup_error(tmp_path: Path, *args: str) -> str:
    result = cli("serve", *args, cwd=tmp_path)
    assert result.returncode == 1, result
    assert "listening on" not in result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _startup_error(tmp_path, f"{ROOT / FIXTURE}:add", "--port", str(port))
    assert line == (
        f"lazygrpc: cannot listen on 127.0.0.1:{port}: Address already in use; "
        "pick another --port (0 picks a free one)"
    )


def test_a_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("def ok():\n    return 1\n\ndef broken(:\n    pass\n")
    line = _startup_error(tmp_path, "bad.py:ok")
    assert f"{tmp_path / 'bad.py'}:4: SyntaxError: invalid syntax: fix the file" in line


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("missing.py:f", "no such file"),
        ("mod.py:nope", "'mod.py' has no attribute 'nope' (its callables: f, g)"),
        ("raises.py:f", "importing raises.py failed: RuntimeError: no config ("),
        (
            "needs.py:f",
            "importing needs.py failed: ModuleNotFoundError: No module named 'nosuchpkg'",
        ),
        ("no.such.module:f", "importing no.such.module failed: ModuleNotFoundError"),
        ("mod.py", "must look like FILE.py:NAME or pkg.module:NAME"),
        ("mod.py:VALUE", "is not callable"),
    ],
)
def test_a_bad_module_file_is_one_line(tmp_path: Path, spec: str, expected: str) -> None:
    (tmp_path / "mod.py").write_text("VALUE = 1\ndef f(): pass\ndef g(): pass\n")
    (tmp_path / "raises.py").write_text("raise RuntimeError('no config')\n")
    (tmp_path / "needs.py").write_text("import nosuchpkg\n")
    line = _startup_error(tmp_path, spec)
    assert line.startswith("lazygrpc: ") and expected in line, line


def test_a_name_served_twice_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("def f(): pass\n")
    (tmp_path / "b.py").write_text("def f(): pass\n")
    line = _startup_error(tmp_path, "a.py:f", "a.py:f")
    assert (
        line == "lazygrpc: module name 'f' is served twice (a.py:f and a.py:f): give each name once"
    )
    assert "(a.py:f and b.py:f)" in _startup_error(tmp_path, "a.py:f", "b.py:f")


def test_a_file_is_imported_once_however_many_names_it_serves(tmp_path: Path) -> None:
    log = tmp_path / "imports.log"
    names = ("add", "zero", "count")
    proc, _ = start_cli(
        "serve", *(f"{FIXTURE}:{n}" for n in names), env={"OPS_IMPORT_LOG": str(log)}
    )
    proc.terminate()
    proc.communicate(timeout=30)
    assert log.read_text() == "imported\n"
