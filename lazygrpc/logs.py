"""Logging for the processes the `lazygrpc` command runs: level, text or JSON lines.

The library only logs (loggers under `lazygrpc.`, see `lazygrpc.server.calllog`) and never
configures logging when imported; a program that embeds a server configures `logging` as it
likes. The CLI calls `configure()` once per command, with `--log-level` / `--log-format`
or their environment twins `LAZYGRPC_LOG_LEVEL` / `LAZYGRPC_LOG_FORMAT`:

    text   2026-12-03T11:50:00.123Z ERROR lazygrpc.server: call failed: session=… module=…
           followed by the traceback, if any
    json   one object per line: time, level, logger, message, the call's fields (session,
           module, status, duration_ms, peer, trace_id, …) and `traceback`
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, TextIO

from lazygrpc.server.calllog import FIELDS

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
LEVEL_ENV = "LAZYGRPC_LOG_LEVEL"
FORMAT_ENV = "LAZYGRPC_LOG_FORMAT"


def _utc(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER: MESSAGE`, then the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info).rstrip()}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, extras, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _utc(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(getattr(record, FIELDS, None) or {})
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class _CancelledWrites(logging.Filter):
    """grpc.aio logs an ERROR with a traceback for each write to a stream whose client has
    already gone (`ExecuteBatchError raised in core`, grpc #32551): a client cancelling a
    stream is normal, and the lifecycle sees it itself. Such a record becomes one DEBUG line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "grpc._cython.cygrpc" and str(record.msg).startswith(
            "ExecuteBatchError raised in core"
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info = record.exc_text = None
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--log-level` and `--log-format`, defaulting to their environment twins."""
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        default=_env(LEVEL_ENV, LEVELS, "info"),
        help=f"least severe log records written to stderr (env {LEVEL_ENV}; default info)",
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default=_env(FORMAT_ENV, FORMATS, "text"),
        help=f"text lines or one JSON object per line (env {FORMAT_ENV}; default text)",
    )


def _env(name: str, choices: tuple[str, ...], default: str) -> str:
    value = os.environ.get(name, "").strip().lower() or default
    if value not in choices:  # a usage error (exit 2), before any command runs
        print(
            f"lazygrpc: {name}={value!r} is not one of {', '.join(choices)}: fix or unset it",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return value


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Write log records at `level` and above to `stream` (stderr) in `fmt` (text or json).

    Configures the root logger, so that the modules a server runs log the same way.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_CancelledWrites())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Their debug lines come per call and say nothing about it (GRPC_VERBOSITY has grpc's).
    for noisy in ("asyncio", "grpc"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.INFO))
