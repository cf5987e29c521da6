"""`lazygrpc protos`: where this install keeps the contract's `.proto` files.

The wheel ships them as package data (`lazygrpc/protos/lazygrpc/v1/*.proto`, a link to the
checkout's `protos/` in a source tree), so other languages' codegen and `grpcurl -proto`
work from an installed package:

    grpcurl -import-path "$(lazygrpc protos)" -proto lazygrpc/v1/module.proto ...
"""

from __future__ import annotations

from pathlib import Path

import lazygrpc


def proto_dir() -> Path:
    """The import root of the `.proto` files: it holds `lazygrpc/v1/*.proto`."""
    return (Path(lazygrpc.__file__).parent / "protos").resolve()
