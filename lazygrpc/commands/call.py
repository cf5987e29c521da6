"""`lazygrpc call URL [INPUT]`: one call of a module or a model, for a terminal or a script.

A module takes any signature: no input (a zero-argument module), `INPUT` (one argument,
JSON when it parses, else text), `--args JSON_ARRAY` (positional arguments) and
`--kwargs JSON_OBJECT` (keyword arguments). `--stream` prints output as it arrives (a unary
module's result too); `--json` prints one JSON object per line instead: each event with its
`kind`, `value`, `source` and `seq`, then `{"kind": "result", ...}` with the globals the call
changed, or `{"kind": "error", ...}` with the status and the call chain.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lazygrpc.client import channels
from lazygrpc.client.llm import LLM
from lazygrpc.client.remote import RemoteModule
from lazygrpc.commands.common import FAILED, OK, UsageError, json_of, json_or_text, key_values, show
from lazygrpc.core.context import session
from lazygrpc.core.errors import RemoteError
from lazygrpc.core.events import Event


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="grpc://HOST:PORT/MODULE (a module) or grpc://HOST:PORT (a model)")
    p.add_argument(
        "input",
        nargs="?",
        help="the one argument: JSON when it parses, else text (none: call with no arguments)",
    )
    p.add_argument("--args", metavar="JSON_ARRAY", help="positional arguments, e.g. '[1, 2]'")
    p.add_argument("--kwargs", metavar="JSON_OBJECT", help="keyword arguments, e.g. '{\"b\": 2}'")
    p.add_argument("--stream", action="store_true", help="print output as it arrives")
    p.add_argument("--json", action="store_true", help="one JSON object per line (for jq)")
    p.add_argument("--session", help="session id to use")
    p.add_argument("--global", dest="set_global", action="append", default=[], help="KEY=VALUE")
    p.add_argument("--timeout", type=float, default=None, help="deadline in seconds")


def arguments(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments the command line asks for."""
    if args.input is not None and args.args is not None:
        raise UsageError("give INPUT or --args, not both (INPUT is one argument)")
    positional = [] if args.input is None else [json_or_text(args.input)]
    if args.args is not None:
        positional = json_of(args.args, "--args", list)
    keywords = {} if args.kwargs is None else json_of(args.kwargs, "--kwargs", dict)
    return positional, keywords


def run(args: argparse.Namespace) -> int:
    _, module = channels.parse_url(args.url)
    positional, keywords = arguments(args)
    if not module and (args.args is not None or args.kwargs is not None or args.input is None):
        raise UsageError("a model URL (no /MODULE) takes one INPUT text, no --args or --kwargs")
    out = _Printer(args.json, module or channels.parse_url(args.url)[0])
    with session(args.session, **key_values(args.set_global, "--global")) as s:
        try:
            if module:
                remote = RemoteModule(args.url, timeout=args.timeout)
                if args.stream:
                    result: Event | None = None
                    for ev in remote.stream(*positional, **keywords):
                        if ev.kind == "result":
                            result = ev  # printed once the trailers (globals) are in
                        else:
                            out.event(ev)
                    if result is not None:
                        out.result(result.value, s.values(), result.source)
                else:
                    out.result(remote(*positional, **keywords), s.values())
            else:
                llm = LLM(args.url, timeout=args.timeout)
                if args.stream:
                    text = []
                    for seq, delta in enumerate(llm.stream(args.input)):
                        text.append(delta)
                        out.event(Event("delta", delta, out.source, seq))
                    out.result("".join(text), s.values())
                else:
                    out.result(llm(args.input), s.values())
        except RemoteError as exc:
            out.error(exc)
            return FAILED
    return OK


class _Printer:
    """Prints a call's events and its end, as terminal text or as JSON lines."""

    def __init__(self, as_json: bool, source: str) -> None:
        self.as_json = as_json
        self.source = source
        self.deltas = 0

    def _line(self, **fields: Any) -> None:
        print(json.dumps(fields, ensure_ascii=False), flush=True)

    def event(self, ev: Event) -> None:
        if self.as_json:
            self._line(kind=ev.kind, value=ev.value, source=ev.source, seq=ev.seq)
        elif ev.kind == "delta":
            self.deltas += 1
            text = ev.value if isinstance(ev.value, str) else json.dumps(ev.value)
            print(text, end="", flush=True)
        else:
            print(f"[{ev.source}] {show(ev.value)}", file=sys.stderr, flush=True)

    def result(self, value: Any, changed: dict[str, Any], source: str | None = None) -> None:
        if self.as_json:
            self._line(kind="result", value=value, source=source or self.source, globals=changed)
            return
        if not self.deltas:  # a unary call, or a stream of a unary module: its result
            print(show(value))
        else:  # the deltas said it all; a non-text stream's result is its list
            print() if isinstance(value, str) else print(json.dumps(value))
        if changed:
            print(f"globals: {json.dumps(changed, ensure_ascii=False)}", file=sys.stderr)

    def error(self, exc: RemoteError) -> None:
        if not self.as_json:
            if self.deltas:
                print()
            print(exc.report(), file=sys.stderr)
            return
        self._line(
            kind="error",
            status=exc.code.name,
            error_type=exc.remote_type,
            message=exc.message,
            session=exc.session_id,
            chain=[
                {
                    "service": f.service,
                    "method": f.method,
                    "host": f.host,
                    "pid": f.pid,
                    "error_type": f.error_type,
                    "message": f.message,
                    "traceback": f.traceback,
                    "session_id": f.session_id,
                    "trace_id": f.trace_id,
                }
                for f in exc.chain
            ],
            elided_frames=exc.elided_frames,
        )
