"""`lazygrpc up --demo QUESTION`: one question streamed through the demo mesh's gateway."""

from __future__ import annotations

import json
import sys

import lazygrpc


def ask(gateway_url: str, question: str) -> int:
    """Stream one answer from `grpc://HOST:PORT/ask` to the terminal; 0 on success."""
    ask_module = lazygrpc.connect(gateway_url, timeout=60)
    print(f"\nQ: {question}")
    with lazygrpc.session() as s:
        started = False
        try:
            for ev in ask_module.stream(question):
                if ev.kind == "intermediate":
                    print(f"  [{ev.source}] {_describe(ev.value)}", flush=True)
                elif ev.kind == "delta":
                    if not started:
                        print("A: ", end="")
                        started = True
                    print(ev.value, end="", flush=True)
            print()
        except lazygrpc.RemoteError as exc:
            print()
            print(exc.report(), file=sys.stderr)
            return 1
        print(f"session {s.id} usage: {json.dumps(s.get('usage'))}", flush=True)
    return 0


def _describe(value: object) -> str:
    if isinstance(value, dict) and "passages" in value:
        return "retrieved: " + "; ".join(f"{p['source']} ({p['score']})" for p in value["passages"])
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
