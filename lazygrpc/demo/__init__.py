"""The demo mesh `lazygrpc up` starts: its modules, the mesh runner, and the retriever."""
