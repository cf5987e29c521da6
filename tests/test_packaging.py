"""The wheel: what it carries (the contract's .proto files, the docs, the license) and that
an install of it, with no checkout beside it, finds them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, start_cli

PROTOS = sorted(p.name for p in (ROOT / "protos" / "lazygrpc" / "v1").glob("*.proto"))
GRPCURL = Path(sys.executable).parent / "grpcurl"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of this tree (the build writes into its source tree)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(".venv", ".git", "node_modules", "build", "*.egg-info"),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=110,
    )
    (built,) = tmp.glob("lazygrpc-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Path:
    """The wheel unpacked as site-packages would hold it (its dependencies: this venv's)."""
    target = wheel.parent / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    return target


def run_installed(installed: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=installed.parent,  # no checkout here
        env={**os.environ, "PYTHONPATH": str(installed)},
        timeout=60,
    )


def test_the_wheel_carries_protos_docs_and_license(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"lazygrpc/protos/lazygrpc/v1/{p}" for p in PROTOS} <= names
    assert "lazygrpc/docs/streaming.md" in names
    license_file = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
    text = zipfile.ZipFile(wheel).read(license_file).decode()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert text == (ROOT / "LICENSE").read_text()
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: Apache-2.0" in zipfile.ZipFile(wheel).read(metadata).decode()


def test_lazygrpc_protos_prints_the_installed_folder(installed: Path) -> None:
    result = run_installed(installed, "-m", "lazygrpc", "protos")
    assert result.returncode == 0, result.stderr
    folder = Path(result.stdout.strip())
    assert folder == installed / "lazygrpc" / "protos"
    assert sorted(p.name for p in (folder / "lazygrpc" / "v1").glob("*.proto")) == PROTOS


def test_an_installed_package_trains_and_indexes_on_its_shipped_docs(installed: Path) -> None:
    code = (
        "from lazygrpc.backends.markov import MarkovBackend\n"
        "from lazygrpc.demo.retrieval import DocIndex\n"
        "import lazygrpc.backends.markov as m\n"
        "print(m.__file__)\n"
        "print(sorted(set(MarkovBackend().sources)))\n"
        "print(DocIndex().search('slow client backpressure')[0].source)\n"
    )
    result = run_installed(installed, "-OO", "-c", code)  # -OO: no docstrings at all
    assert result.returncode == 0, result.stderr
    where, sources, best = result.stdout.splitlines()
    assert where.startswith(str(installed))
    assert "'streaming.md'" in sources and "README.md" not in sources and ".py" not in sources
    assert best.endswith(".md")


def test_grpcurl_calls_a_server_with_the_installed_protos(installed: Path, tmp_path: Path) -> None:
    """What `lazygrpc protos` is for: codegen or grpcurl from an install, reflection aside."""
    folder = run_installed(installed, "-m", "lazygrpc", "protos").stdout.strip()
    proc, address = start_cli("serve", "tests/fixtures/ops_modules.py:add")
    try:
        result = subprocess.run(
            [
                str(GRPCURL),
                "-plaintext",
                "-import-path",
                folder,
                "-proto",
                "lazygrpc/v1/module.proto",
                "-d",
                '{"module": "add", "args": [2, 5]}',
                address,
                "lazygrpc.v1.ModuleService/Call",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert result.returncode == 0, result.stderr
    assert '"output": 7' in result.stdout


def test_the_checkout_links_the_package_data_to_the_real_folders() -> None:
    assert (ROOT / "lazygrpc" / "protos").resolve() == ROOT / "protos"
    assert (ROOT / "lazygrpc" / "docs").resolve() == ROOT / "docs"


def test_the_installed_demo_is_a_bundled_mesh_file(wheel: Path, installed: Path) -> None:
    """`lazygrpc up` runs the mesh file the wheel carries, from an install with no checkout."""
    assert "lazygrpc/demo/mesh.yaml" in zipfile.ZipFile(wheel).namelist()
    result = run_installed(installed, "-m", "lazygrpc", "up", "--token-delay", "0", "--demo", "Hi?")
    assert result.returncode == 0, result.stderr
    assert "mesh is up (the demo)" in result.stdout and "A: " in result.stdout
