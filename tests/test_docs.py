"""The examples in README.md and docs/*.md, run against real servers.

How a page's fenced blocks are run (the convention a page's author follows):

- A ```python block whose first line is `# NAME.py` is a module file: it is written, as
  it stands, into the page's scratch folder.
- Servers: every `lazygrpc serve …` / `lazygrpc serve-model …` command on the page (in a
  ```sh block or inline) with a `--port N` is started in that folder on a free port, and
  every `127.0.0.1:N` in the page's examples then means that server.
- Every other ```python block runs as a script there, in page order, and must exit 0.
- In ```sh blocks, each command that runs `lazygrpc` or `grpcurl` (`\\` continues a line)
  runs there too and must exit 0; other commands (`make`, `node`) are left to their own
  tests.
- `<!-- docs-test: skip (REASON) -->` on the line before a block leaves the block out; the
  reason is required and says why it cannot run (a fragment of a larger program).

Files the pages point to run here too, as their own docstrings say (`clients/python/`);
the Node and grpcurl recipes have their own tests (test_node_client, test_grpcurl).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, start_cli

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_SKIP = re.compile(r"<!-- docs-test: skip \((.+?)\) -->\s*$")
_SERVER = re.compile(r"(?:\.venv/bin/)?lazygrpc (serve(?:-model)?) ([^`\n]*?--port (\d+)[^`\n]*)")


@dataclass
class Block:
    page: Path
    lang: str
    text: str
    line: int

    @property
    def module_file(self) -> str | None:
        first = self.text.split("\n", 1)[0]
        match = re.fullmatch(r"# (\w+\.py)", first.strip())
        return match.group(1) if self.lang == "python" and match else None


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    out = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if _SKIP.search(before):
            continue
        line = text[: match.start()].count("\n") + 1
        out.append(Block(page, match.group(1), match.group(2), line))
    return out


def commands(block: Block) -> list[str]:
    """The `lazygrpc` and `grpcurl` commands of a sh block (servers excluded)."""
    joined = block.text.replace("\\\n", " ")
    out = []
    for raw in joined.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#") or _SERVER.match(line):
            continue
        if re.match(r"(\.venv/bin/)?(lazygrpc|grpcurl) ", line):
            out.append(line)
    return out


def runnable_pages() -> list[Path]:
    return [p for p in PAGES if any(b.lang in ("python", "sh") for b in blocks(p))]


@pytest.fixture(scope="module", params=runnable_pages(), ids=lambda p: p.name)
def page(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Path, dict[str, str]]]:
    """(the page, its scratch folder with the page's module files, documented → real port)."""
    path: Path = request.param
    folder = tmp_path_factory.mktemp(path.stem)
    for block in blocks(path):
        if block.module_file:
            (folder / block.module_file).write_text(block.text, encoding="utf-8")
    ports: dict[str, str] = {}
    procs = []
    try:
        for command, args, port in dict.fromkeys(_SERVER.findall(path.read_text())):
            argv = shlex.split(args)
            argv[argv.index("--port") + 1] = "0"
            proc = subprocess.Popen(
                [sys.executable, "-m", "lazygrpc", command, *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=folder,
            )
            procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("listening on "), (command, args, proc.stderr)
            ports[port] = line.split(":")[-1].strip()
        yield path, folder, ports
    finally:
        for proc in procs:
            proc.terminate()
            proc.communicate(timeout=30)


def _localized(text: str, ports: dict[str, str]) -> str:
    for documented, real in ports.items():
        text = text.replace(f"127.0.0.1:{documented}", f"127.0.0.1:{real}")
    return text.replace(".venv/bin/", f"{BIN}/")


def _run(argv: list[str], folder: Path, what: str) -> str:
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        cwd=folder,
        timeout=60,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    assert result.returncode == 0, f"{what} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_every_python_block_runs(page: tuple[Path, Path, dict[str, str]]) -> None:
    path, folder, ports = page
    ran = []
    for block in blocks(path):
        if block.lang != "python" or block.module_file:
            continue
        script = folder / f"block_{block.line}.py"
        script.write_text(_localized(block.text, ports), encoding="utf-8")
        ran.append(_run([sys.executable, str(script)], folder, f"{path.name}:{block.line}"))
    if path.name == "README.md":  # what the README's comments promise
        out = "".join(ran)
        assert "hello ada?\nada\n" in out
        assert "hello bob!\n" in out
        assert "intermediate count" in out and "result count 0 1 2 " in out


def test_every_shell_command_runs(page: tuple[Path, Path, dict[str, str]]) -> None:
    path, folder, ports = page
    for block in blocks(path):
        if block.lang != "sh":
            continue
        for command in commands(block):
            argv = shlex.split(_localized(command, ports))
            _run(argv, folder, f"{path.name}:{block.line}: {command}")


def test_the_convention_holds_on_every_page() -> None:
    """Every skipped block says why, and every python block is a module file or a script."""
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        for marker in re.findall(r"<!-- docs-test:[^>]*-->", text):
            assert _SKIP.search(marker), f"{path.name}: {marker} (want: skip (REASON))"
    readme = blocks(ROOT / "README.md")
    assert [b.module_file for b in readme if b.module_file] == ["hello.py"]
    assert sum(b.lang == "python" and not b.module_file for b in readme) >= 1


def test_the_python_client_example_the_readme_points_to_runs(tmp_path: Path) -> None:
    """`clients/python/example.py`, as its docstring says to run it."""
    model, model_address = start_cli("serve-model", "--backend", "echo")
    module, module_address = start_cli("serve", "tests/fixtures/cli_modules.py:whoami")
    try:
        out = _run(
            [sys.executable, str(ROOT / "clients/python/example.py"), f"grpc://{model_address}",
             f"grpc://{module_address}/whoami"],
            tmp_path,
            "clients/python/example.py",
        )  # fmt: skip
    finally:
        for proc in (model, module):
            proc.terminate()
            proc.communicate(timeout=30)
    assert "model: {" in out and "brief: " in out
    assert "result       whoami:" in out and "'session_id': 'example-1'" in out
    assert "globals after the calls: {'user': 'alice'" in out
