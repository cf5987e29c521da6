"""The demo mesh `lazygrpc up` starts: its mesh file (`mesh.yaml`), its modules, the
retriever, and `--demo`'s question."""
