"""Shared benchmark helpers: server subprocesses, A/B/A/B rounds, summaries and tables."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


# -- server subprocesses ---------------------------------------------------------------------


class ServerProc:
    """A server in its own process (own GIL); `listening on HOST:PORT` gives its address."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
        )
        self.address = self._wait_listening()
        self.pid = self.proc.pid

    def _wait_listening(self, timeout: float = 30.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"server {self.argv} exited with {self.proc.wait()}")
            m = re.search(r"listening on (\S+:\d+)", line)
            if m:
                return m.group(1)
        raise RuntimeError(f"server {self.argv} did not listen within {timeout} s")

    @property
    def url(self) -> str:
        return f"grpc://{self.address}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def rss_mib(self) -> float | None:
        try:
            import psutil

            return float(psutil.Process(self.pid).memory_info().rss) / (1 << 20)
        except Exception:
            return None


def bench_server(
    kind: str, *args: str, env: dict[str, str] | None = None, module: str = "benchmarks._servers"
) -> ServerProc:
    """A server from `benchmarks/_servers.py` (or another such `module`) in a subprocess."""
    return ServerProc([PYTHON, "-m", module, kind, *args], env=env)


class Servers:
    """Stops every server it started, in reverse order."""

    def __init__(self) -> None:
        self.procs: list[ServerProc] = []

    def start(
        self,
        kind: str,
        *args: str,
        env: dict[str, str] | None = None,
        module: str = "benchmarks._servers",
    ) -> ServerProc:
        p = bench_server(kind, *args, env=env, module=module)
        self.procs.append(p)
        return p

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in reversed(self.procs):
            p.stop()


def block_order(sides: Sequence[str], block: int) -> list[str]:
    """The order the sides run in block number `block`: the rows of a Williams design.

    With more than two sides, flipping one fixed order every block is biased: the sides at
    its ends run twice in a row every other block (on a server that has just run), the sides
    in the middle never do. Over each full cycle of rows (n blocks for n sides, 2n when n is
    odd) every side runs in every place equally often and right after every other side
    equally often. Two sides alternate A/B, B/A as before (the same design).
    """
    rows = _williams(len(sides))
    return [sides[i] for i in rows[block % len(rows)]]


def _williams(n: int) -> list[list[int]]:
    """Williams' Latin square(s) for n treatments (balanced for first-order carry-over)."""
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    rows = [[(x + r) % n for x in first] for r in range(n)]
    return rows if n % 2 == 0 else rows + [row[::-1] for row in rows]


# -- statistics ------------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


@dataclass
class Spread:
    lo: float
    med: float
    hi: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            nan = float("nan")
            return cls(nan, nan, nan)
        return cls(min(values), statistics.median(values), max(values))

    def fmt(self, digits: int = 3) -> str:
        return f"{_num(self.med, digits)} [{_num(self.lo, digits)}–{_num(self.hi, digits)}]"


def _num(x: float, digits: int = 3) -> str:
    if x != x:  # nan
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.1f}"
    return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{max(digits - 1, 1)}f}"


@dataclass
class Row:
    """One figure: lazygrpc and baseline per A/B round, their paired ratio and the target.

    `lazy` and `base` hold one value per round (rounds were interleaved A/B/A/B), so the
    ratio of round i compares two measurements taken seconds apart.
    """

    scenario: str
    metric: str
    unit: str
    lazy: list[float]
    base: list[float] = field(default_factory=list)
    target: str = ""
    #: "ratio<=X", "ratio>=X", "lazy<=X", "lazy>=X", "base/lazy>=X" or "" (information only)
    check: str = ""
    baseline: str = "bare grpcio"
    note: str = ""

    @property
    def ratios(self) -> list[float]:
        if len(self.base) == 1:  # one baseline figure (e.g. the LazyLLM harness run)
            return [a / self.base[0] for a in self.lazy] if self.base[0] else []
        return [a / b for a, b in zip(self.lazy, self.base, strict=False) if b]

    @property
    def ratio(self) -> float:
        """lazygrpc ÷ baseline, of the medians."""
        if not self.lazy or not self.base:
            return float("nan")
        b = statistics.median(self.base)
        return statistics.median(self.lazy) / b if b else float("nan")

    def passed(self) -> bool | None:
        if not self.check:
            return None
        op = "<=" if "<=" in self.check else ">="
        what, bound_s = self.check.split(op)
        bound = float(bound_s)
        if what != "lazy" and not self.base:
            return None  # a relative target without its baseline: not judged
        if what == "ratio":
            x = self.ratio
        elif what == "base/lazy":
            x = 1 / self.ratio if self.ratio else float("nan")
        else:
            x = statistics.median(self.lazy) if self.lazy else float("nan")
        if x != x:
            return False
        return x <= bound if op == "<=" else x >= bound

    def cells(self) -> list[str]:
        lazy = Spread.of(self.lazy).fmt()
        base = Spread.of(self.base).fmt() if self.base else "—"
        if self.base:
            r = Spread.of(self.ratios)
            ratio = f"{_num(self.ratio)}× [{_num(r.lo)}–{_num(r.hi)}]"
        else:
            ratio = "—"
        ok = self.passed()
        verdict = "—" if ok is None else ("PASS" if ok else "**MISS**")
        return [self.metric, self.unit, lazy, base, ratio, self.target or "—", verdict]


HEADER = [
    "metric",
    "unit",
    "lazygrpc med [min–max]",
    "baseline med [min–max]",
    "ratio lazy/base (paired min–max)",
    "target",
    "verdict",
]


def text_table(rows: Sequence[Row], title: str = "") -> str:
    table = [HEADER, *(r.cells() for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    out = [title] if title else []
    several = len({r.scenario for r in rows}) > 1
    for i, line in enumerate(table):
        if several and i and (i == 1 or rows[i - 1].scenario != rows[i - 2].scenario):
            out.append(f"[{rows[i - 1].scenario}]")
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    baselines = sorted({r.baseline for r in rows if r.base})
    if baselines:
        out.append("baseline: " + "; ".join(baselines))
    return "\n".join(out)


def md_table(rows: Sequence[Row]) -> str:
    """Rows as a Markdown table; one table per scenario, under its name, when they differ."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.scenario, []).append(r)
    out: list[str] = []
    for scenario, group in groups.items():
        if len(groups) > 1:
            out += [""] if out else []
            out += [f"*{scenario}*", ""]
        out += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        out += ["| " + " | ".join(r.cells()) + " |" for r in group]
    notes = [f"- {r.metric}: {r.note}" for r in rows if r.note]
    baselines = sorted({r.baseline for r in rows if r.base})
    if baselines:
        out.append("")
        out.append("Baseline: " + "; ".join(baselines) + ".")
    if notes:
        out.append("")
        out.extend(notes)
    return "\n".join(out)


def print_rows(rows: Sequence[Row], title: str) -> None:
    print(text_table(rows, title), flush=True)
    print(flush=True)


# -- the machine -----------------------------------------------------------------------------


def machine() -> str:
    import grpc

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        import psutil

        mem = f", {psutil.virtual_memory().total / (1 << 30):.1f} GiB RAM"
    except Exception:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load avg at start {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({cpu}){mem}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, grpcio {grpc.__version__}, loopback only"
        f"{load}; shared with other workloads, so figures are noisy"
    )


def log(*parts: Any) -> None:
    print("[bench]", *parts, file=sys.stderr, flush=True)
