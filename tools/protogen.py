"""Generate lazygrpc/v1 from protos/ (pb2, grpc stubs, mypy-protobuf .pyi); --check reports drift."""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
OUT_PACKAGE = Path("lazygrpc") / "v1"


def generate(into: Path) -> list[Path]:
    """Run protoc for every proto under protos/lazygrpc/v1 into `into`; return generated files."""
    import grpc_tools

    protos = sorted((PROTO_ROOT / OUT_PACKAGE).glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    bindir = Path(sys.executable).parent
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={into}",
        f"--grpc_python_out={into}",
        f"--mypy_out={into}",
        f"--mypy_grpc_out={into}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    result = subprocess.run(cmd, cwd=PROTO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"protoc failed:\n{result.stderr}")
    return sorted(p for p in (into / OUT_PACKAGE).iterdir() if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if lazygrpc/v1 is out of date")
    args = parser.parse_args()
    target = ROOT / OUT_PACKAGE
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        names = {p.name for p in files}
        existing = {p.name for p in target.glob("*_pb2*.py*")}
        if args.check:
            drift = sorted(
                n
                for n in names | existing
                if n not in names
                or n not in existing
                or not filecmp.cmp(target / n, Path(tmp) / OUT_PACKAGE / n, shallow=False)
            )
            if drift:
                print("generated code differs from protos/: " + ", ".join(drift))
                print("run `make protos` and commit the result")
                return 1
            return 0
        for stale in existing - names:
            (target / stale).unlink()
        for p in files:
            shutil.copyfile(p, target / p.name)
        (target / "__init__.py").touch()
    print(f"generated {len(files)} files into {OUT_PACKAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
