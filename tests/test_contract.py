"""The contract: generated code matches protos/, buf lint passes, the public API is curated."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lazygrpc

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_matches_the_protos() -> None:
    result = subprocess.run(
        [sys.executable, "tools/protogen.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_drift_is_detected(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", copy / "protos")
    shutil.copytree(ROOT / "lazygrpc" / "v1", copy / "lazygrpc" / "v1")
    shutil.copytree(ROOT / "tools", copy / "tools")
    proto = copy / "protos" / "lazygrpc" / "v1" / "module.proto"
    proto.write_text(proto.read_text().replace("bool streaming = 2;", "bool streams = 2;"))
    result = subprocess.run(
        [sys.executable, "tools/protogen.py", "--check"], cwd=copy, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "module_pb2" in result.stdout


def test_buf_lint_passes() -> None:
    buf = Path(sys.executable).parent / "buf"
    result = subprocess.run([str(buf), "lint"], cwd=ROOT / "protos", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_all_is_sorted_and_complete() -> None:
    assert lazygrpc.__all__ == sorted(lazygrpc.__all__, key=lambda n: (not n.isupper(), n))
    for name in lazygrpc.__all__:
        assert getattr(lazygrpc, name) is not None
        assert name in dir(lazygrpc)
    public = {n for n in vars(lazygrpc) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(lazygrpc, n)).__name__ == "module"}
    helpers = {"annotations", "importlib", "sys", "Any", "TYPE_CHECKING"}
    assert public - modules - helpers == set(lazygrpc.__all__)  # every one loaded once
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = lazygrpc.nothing  # type: ignore[attr-defined]


def test_importing_the_client_side_loads_no_server() -> None:
    code = (
        "import sys, lazygrpc, lazygrpc.client.remote, lazygrpc.client.llm;"
        "print(sorted(m for m in sys.modules if m.startswith('lazygrpc.server')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
