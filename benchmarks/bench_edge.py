"""Issue 16: what the HTTP/SSE edge adds to a stream, against the same stream over gRPC.

One lazygrpc model server (echo backend, `benchmarks/_servers.py lazy-model`) and one
`lazygrpc edge` in front of it, each its own process. Direct: `LLM(url).astream(prompt)`.
Through the edge: `POST /v1/completions` with `stream: true` on a kept-alive HTTP/1.1
connection, read by a minimal asyncio client (chunked transfer decoding, SSE parsing and
`json.loads` of every chunk: what any HTTP client must do), so the figure is the edge's
cost and not an HTTP library's. A second edge runs on uvicorn's pure-Python parser
(`--http h11`, the fallback when httptools is missing), so the row for the parser seam
compares the two. The sides alternate in every round.

With `benchmarks/litellm/.venv` (`benchmarks/litellm/setup.sh`, which `make bench` runs),
LiteLLM's proxy (`benchmarks/litellm/proxy.py`) runs in front of the same upstream the
edge's clients use (the edge itself), read by the same client: what it adds to the time to
first token is its figure, against what the edge adds to gRPC.

Targets: the edge adds ≤ 1 ms to the time to first token at one stream, and ≥ 3× less than
LiteLLM's proxy adds.

    python -m benchmarks.bench_edge [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from benchmarks import _clients as c
from benchmarks._common import Row, ServerProc, Servers, block_order, log, print_rows
from benchmarks._servers import prompt_chars, token_prompt

HERE = Path(__file__).resolve().parent
LITELLM_PY = HERE / "litellm" / ".venv" / "bin" / "python"
LITELLM_PROXY = HERE / "litellm" / "proxy.py"


class EdgeStream:
    """`stream()` → the text deltas of one `/v1/completions` stream through the edge."""

    def __init__(self, address: str, prompt: str) -> None:
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        body = json.dumps({"model": "echo", "prompt": prompt, "stream": True}).encode()
        head = (
            f"POST /v1/completions HTTP/1.1\r\nhost: {address}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        self.request = head.encode() + body
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    def __call__(self) -> AsyncIterator[str]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[str]:
        if self.conn is None:
            self.conn = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.conn
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"edge answered {head[:200]!r}")
        pending = b""
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return  # the stream's end: the connection is ready for the next request
            pending += data[:-2]
            *messages, pending = pending.split(b"\n\n")
            for message in messages:
                payload = message.rpartition(b"data: ")[2]
                if payload == b"[DONE]":
                    continue
                choices = json.loads(payload)["choices"]
                text = choices[0].get("text") if choices else None
                if text:  # LiteLLM's last chunk has no text at all
                    yield text

    async def close(self) -> None:
        if self.conn is not None:
            self.conn[1].close()
            await self.conn[1].wait_closed()


async def run(quick: bool = False) -> list[Row]:
    n = 2_000 if quick else 10_000
    short_n = 8
    trials = 60 if quick else 200
    rounds = 3 if quick else 5
    with Servers() as servers:
        model = servers.start("lazy-model")
        edge = ServerProc([sys.executable, "-m", "lazygrpc", "edge", "--upstream", model.url])
        # The same edge on uvicorn's pure-Python parser: the fallback `--http h11` runs.
        h11 = ServerProc(
            [sys.executable, "-m", "lazygrpc", "edge", "--upstream", model.url, "--http", "h11"]
        )
        servers.procs += [edge, h11]
        fns: dict[str, tuple[Any, Any]] = {
            "grpc": (
                c.lazy_generate(model.url, token_prompt(short_n)),
                c.lazy_generate(model.url, token_prompt(n)),
            ),
            "edge": (EdgeStream(edge.address, token_prompt(short_n)),
                     EdgeStream(edge.address, token_prompt(n))),
            "edge-h11": (EdgeStream(h11.address, token_prompt(short_n)),
                         EdgeStream(h11.address, token_prompt(n))),
        }  # fmt: skip
        if LITELLM_PY.exists():
            # LiteLLM's proxy in front of the same upstream: the edge, which is what an
            # OpenAI-compatible client of the model server has to talk to.
            lite = ServerProc(
                [str(LITELLM_PY), str(LITELLM_PROXY), f"http://{edge.address}/v1", "echo"]
            )
            servers.procs.append(lite)
            fns["litellm"] = (EdgeStream(lite.address, token_prompt(short_n)),
                              EdgeStream(lite.address, token_prompt(n)))  # fmt: skip
        else:
            log("benchmarks/litellm/.venv missing (benchmarks/litellm/setup.sh): no LiteLLM rows")
        sides = tuple(fns)
        try:
            for short, _ in fns.values():
                for _ in range(20):
                    await c.stream_once(short, prompt_chars(short_n))
            ttft: dict[str, list[float]] = {side: [] for side in sides}
            tps: dict[str, list[float]] = {side: [] for side in sides}
            for r in range(trials):
                for side in block_order(sides, r):
                    t, _, _ = await c.stream_once(fns[side][0], prompt_chars(short_n))
                    ttft[side].append(t * 1000)
            for r in range(rounds):
                for side in block_order(sides, r):
                    _, total, _ = await c.stream_once(fns[side][1], prompt_chars(n))
                    tps[side].append(n / total)
            log("edge: done")
        finally:
            for pair in fns.values():
                for fn in pair:
                    if isinstance(fn, EdgeStream):
                        await fn.close()
    return _rows(ttft, tps, n, short_n)


def _rows(
    ttft: dict[str, list[float]], tps: dict[str, list[float]], n: int, short_n: int
) -> list[Row]:
    added = [e - g for e, g in zip(ttft["edge"], ttft["grpc"], strict=True)]
    base = "the same stream over gRPC (`LLM(url).astream`)"
    scen = "HTTP/SSE edge"
    rows = [
        Row(scen, f"time to first token, 1 stream ({short_n} tokens)", "ms",
            ttft["edge"], ttft["grpc"], "—", "", base),
        Row(scen, "time to first token added by the edge (paired)", "ms",
            added, [], "≤ 1 ms", "lazy<=1", base),
        Row(scen, f"tokens/s, {n:,}-token stream", "tokens/s", tps["edge"], tps["grpc"],
            "—", "", base),
        Row(scen, "time to first token added: httptools vs the h11 fallback (paired)", "ms",
            added, [h - g for h, g in zip(ttft["edge-h11"], ttft["grpc"], strict=True)],
            "—", "", "the same edge with `--http h11` (uvicorn's pure-Python parser)"),
    ]  # fmt: skip
    if "litellm" in ttft:
        lite = "LiteLLM's proxy (litellm[proxy]) in front of the edge, loopback, no key"
        lite_added = [x - e for x, e in zip(ttft["litellm"], ttft["edge"], strict=True)]
        rows += [
            Row(scen, "time to first token added: edge vs LiteLLM's proxy (paired)", "ms",
                added, lite_added, "LiteLLM adds ≥ 3× more", "base/lazy>=3", lite),
            Row(scen, f"tokens/s, {n:,}-token stream: edge vs through LiteLLM too", "tokens/s",
                tps["edge"], tps["litellm"], "—", "", lite),
        ]  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    print_rows(asyncio.run(run(a.quick)), "HTTP/SSE edge vs direct gRPC")


if __name__ == "__main__":
    main()
