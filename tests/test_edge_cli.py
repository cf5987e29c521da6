"""`lazygrpc edge` and the README's recipes against it: `curl -N` and the openai SDK."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, start_cli
from tests.edges import demo_mesh

README = (ROOT / "README.md").read_text()


def readme_block(lang: str, marker: str) -> str:
    """The README's fenced `lang` block that contains `marker`."""
    blocks = re.findall(rf"```{lang}\n(.*?)```", README, re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


@pytest.fixture
def edge_cli(servers: Any, monkeypatch: Any) -> Iterator[str]:
    """`lazygrpc edge` in front of the demo mesh; its http:// URL."""
    upstreams = [f"--upstream={url}" for url in demo_mesh(servers, monkeypatch)]
    proc, address = start_cli("edge", *upstreams, "--expose-tracebacks")
    try:
        yield f"http://{address}"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
        assert proc.returncode == 0


def test_the_readme_curl_recipe_streams_through_the_edge(edge_cli: str) -> None:
    curl = shutil.which("curl")
    assert curl, "curl (Debian) is installed by `make test`"
    script = readme_block("sh", "curl -N")
    script = "\n".join(line for line in script.splitlines() if not line.startswith("EDGE="))
    result = subprocess.run(
        ["bash", "-euc", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EDGE": edge_cli},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "event: intermediate" in out and '"source":"rag"' in out
    assert '"delta":{"role":"assistant","content":"Answer' in out
    assert '"usage":{"prompt_tokens"' in out and "event: globals" in out
    assert out.rstrip().endswith("data: [DONE]")


def test_the_readme_openai_sdk_recipe_runs_against_the_edge(edge_cli: str) -> None:
    code = readme_block("python", "OpenAI(base_url=")
    code = code.replace("http://127.0.0.1:8080", edge_cli)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Answer the question from these notes.")


def test_the_cli_edge_serves_the_chat_page_and_stops_on_sigterm(edge_cli: str) -> None:
    page = httpx.get(f"{edge_cli}/")
    assert page.status_code == 200 and "<title>lazygrpc chat</title>" in page.text
    assert httpx.get(f"{edge_cli}/static/chat.js").status_code == 200


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--upstream", "http://x:1"], ["grpc://HOST:PORT"]),
        (["--upstream", "grpc://127.0.0.1:1", "--http", "picohttp"],
         ["auto, httptools, h11", "'picohttp'"]),
    ],
    ids=["bad-upstream", "unknown-http-parser"],
)  # fmt: skip
def test_the_cli_edge_refuses_a_bad_option_in_one_line(argv: list[str], named: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lazygrpc", "edge", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert all(name in result.stderr for name in named), result.stderr
