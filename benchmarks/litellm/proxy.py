"""LiteLLM's proxy on loopback for `benchmarks/bench_edge.py`: runs in its own virtualenv
(`setup.sh`), in front of one OpenAI-compatible upstream, and prints `listening on
HOST:PORT` once it accepts, like every benchmark server.

    python proxy.py UPSTREAM_BASE_URL MODEL_NAME
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile


def main() -> None:
    upstream, model = sys.argv[1], sys.argv[2]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config:
        config.write(
            "model_list:\n"
            f"  - model_name: {model}\n"
            "    litellm_params:\n"
            f"      model: openai/{model}\n"
            f"      api_base: {upstream}\n"
            "      api_key: unused\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
        )
    # Loopback only: no model cost map from the network, no telemetry; no key, as the
    # edge it is compared with has none (LiteLLM refuses that unless told it is local).
    os.environ.update(
        LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY="true",
        CONFIG_FILE_PATH=config.name,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_TELEMETRY="False",
        LITELLM_LOG="ERROR",
    )
    import uvicorn
    from litellm.proxy.proxy_server import app

    async def serve() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on"))
        server.config.load()
        server.lifespan = server.config.lifespan_class(server.config)
        await server.startup(sockets=[sock])
        print(f"listening on 127.0.0.1:{sock.getsockname()[1]}", flush=True)
        await server.main_loop()
        await server.shutdown(sockets=[sock])

    asyncio.run(serve())


if __name__ == "__main__":
    main()
