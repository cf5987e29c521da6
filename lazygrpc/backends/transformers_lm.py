"""A backend that runs a local Hugging Face causal LM on a worker thread:
`lazygrpc serve-model --backend transformers --model PATH` (docs/backends.md)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from lazygrpc.backends.base import Finish, Prompt, SamplingParams, UpstreamError

__all__ = ["TransformersBackend"]

_END = object()  # the worker's last item on a call's queue


class TransformersBackend:
    """A causal LM and its tokenizer loaded from the local directory `path` (never from a
    hub: `HF_HUB_OFFLINE=1`, `local_files_only=True`).

    Loading takes seconds: construct it off the event loop (the CLI does so before serving).
    Generation runs on one worker thread, one call at a time (a CPU runs one model at full
    speed; a second replica is the way to more); each token is yielded as soon as it is
    made. A call that ends early stops its generation at the next token. Chats go through
    the tokenizer's chat template when it has one; usage is the real token counts.
    """

    def __init__(self, path: str | os.PathLike[str], *, name: str | None = None) -> None:
        directory = Path(path)
        if not directory.is_dir():
            raise ValueError(f"model path {str(path)!r} is not a local directory")
        # Set before transformers (and huggingface_hub) read it: nothing is ever downloaded.
        os.environ["HF_HUB_OFFLINE"] = "1"
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a server logs; it draws no bars on stderr
        self.name = name or directory.name
        self._torch = torch
        if not (directory / "config.json").is_file():
            raise ValueError(f"model path {str(path)!r} holds no config.json (save_pretrained's)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:  # transformers' messages span lines
            first = next(iter(str(exc).strip().splitlines()), type(exc).__name__)
            raise ValueError(f"cannot load a model from {str(path)!r}: {first}") from exc
        self.model.eval()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"lazygrpc-{self.name}")
        self._running = 0
        self._running_lock = threading.Lock()

    @property
    def running(self) -> int:
        """Generations running on the worker thread now (0 or 1)."""
        return self._running

    @property
    def context_tokens(self) -> int | None:
        """Most tokens the model attends to (prompt and answer), when its config says."""
        value = getattr(self.model.config, "max_position_embeddings", None)
        return value if isinstance(value, int) else None

    def encode(self, prompt: str) -> list[int]:
        """The token ids the model sees: a `Prompt`'s chat through the chat template (when the
        tokenizer has one, with the assistant's turn opened), else the text itself."""
        if self.tokenizer.chat_template and isinstance(prompt, Prompt):
            chat = [{"role": m.role, "content": m.content} for m in prompt.messages]
            text = self.tokenizer.apply_chat_template(
                chat, tokenize=False, add_generation_prompt=True
            )
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(self.tokenizer(str(prompt))["input_ids"])

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as the model sees it (`encode`)."""
        return len(self.encode(text)) if text else 0

    def close(self) -> None:
        """Stop the worker thread once the running generation has ended."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def generate(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[str | Finish]:
        """Yield each new token's text as the worker makes it, then a `Finish`."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()  # at most max_tokens ids: bounded
        stop = threading.Event()

        def post(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening
                stop.set()

        ids = await asyncio.to_thread(self.encode, prompt)
        context = self.context_tokens
        if context is not None and len(ids) >= context:
            raise UpstreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input: {len(ids)} prompt tokens, over the model's context of {context}",
                upstream=self.name,
                method="generate",
                error_type="PromptTooLong",
            )
        # The answer ends at the context's end ("length") rather than fail there.
        if context is not None:
            params = replace(params, max_tokens=min(params.max_tokens, context - len(ids)))
        work = loop.run_in_executor(self._pool, self._work, ids, params, post, stop)
        made: list[int] = []
        text = ""
        try:
            while (item := await queue.get()) is not _END:
                made.append(item)
                # Decode everything so far: a token can end in the middle of a character
                # (byte-level vocabularies), whose text is held back until it completes.
                now = self.tokenizer.decode(
                    made, skip_special_tokens=True, clean_up_tokenization_spaces=False
                )
                if now.endswith("\ufffd") or len(now) <= len(text):
                    continue
                delta, text = now[len(text) :], now
                yield delta
            await work  # its error, if it failed
        finally:
            stop.set()
            work.cancel()  # only takes while it waits for the worker
        yield Finish(
            "length" if len(made) >= params.max_tokens else "stop",
            prompt_tokens=len(ids),
            completion_tokens=len(made),
        )

    def _work(
        self, ids: list[int], params: SamplingParams, post: Any, stop: threading.Event
    ) -> None:
        """One generation on the worker thread: each new token id to `post`, then `_END`."""
        torch = self._torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        class Streamer(BaseStreamer):  # type: ignore[misc]
            prompt_seen = False

            def put(self, value: Any) -> None:
                if not self.prompt_seen:  # generate() first puts the prompt itself
                    self.prompt_seen = True
                    return
                for token in value.reshape(-1).tolist():
                    post(token)

            def end(self) -> None:
                pass

        class Cancelled(StoppingCriteria):  # type: ignore[misc]
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

        with self._running_lock:
            self._running += 1
        try:
            if stop.is_set():  # cancelled while it waited for the worker
                return
            if params.seed is not None:
                torch.manual_seed(params.seed)  # one generation at a time: reproducible
            sampling: dict[str, Any] = {"do_sample": False}
            if params.temperature > 0:
                sampling = {
                    "do_sample": True,
                    "temperature": params.temperature,
                    "top_p": params.top_p,
                    "top_k": params.top_k,
                }
            tokenizer = self.tokenizer
            with torch.inference_mode():
                self.model.generate(
                    input_ids=torch.tensor([ids]),
                    attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                    max_new_tokens=params.max_tokens,
                    pad_token_id=tokenizer.pad_token_id
                    if tokenizer.pad_token_id is not None
                    else tokenizer.eos_token_id,
                    streamer=Streamer(),
                    stopping_criteria=StoppingCriteriaList([Cancelled()]),
                    **sampling,
                )
        finally:
            with self._running_lock:
                self._running -= 1
            post(_END)
