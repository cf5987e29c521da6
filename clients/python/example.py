"""Call lazygrpc services from Python: a model with `LLM` (+ `share()`), a module with `connect`.

lazygrpc serve-model --backend echo --token-delay 0.05 --port 50051 &
python clients/python/example.py grpc://127.0.0.1:50051
python clients/python/example.py grpc://127.0.0.1:50051 grpc://127.0.0.1:50052/search
"""

from __future__ import annotations

import sys

import lazygrpc


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    model_url, module_url = argv[0], argv[1] if len(argv) > 1 else None

    # One session for everything below: its id and globals travel with every call
    # (`lazy-session-id` and W3C `baggage`), and globals a service sets come back.
    with lazygrpc.session("example-1", user="alice"):
        llm = lazygrpc.LLM(model_url, timeout=30)
        print("model:", llm.info())

        # Streamed: text deltas as the model produces them.
        for delta in llm.stream("lazygrpc streams tokens over the RPC itself"):
            print(delta, end="", flush=True)
        print()

        # share(): a new LLM on the same channel with its own prompt and params; the
        # server's presets stay on the server, unset params mean "server preset".
        brief = llm.share(prompt="Answer briefly: {input}", max_tokens=5)
        print("brief:", brief("what does share() do exactly?"))

        if module_url:
            module = lazygrpc.connect(module_url, timeout=30)
            try:
                for event in module.stream("grpc"):
                    print(f"{event.kind:<12} {event.source}: {event.value!r}")
            except lazygrpc.RemoteError as exc:
                # Entry first, failure point last, wherever in the mesh it happened.
                for frame in exc.chain:
                    print(f"  {frame.service}.{frame.method}: {frame.error_type}: {frame.message}")
                return 1

        print("globals after the calls:", dict(lazygrpc.globals))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
