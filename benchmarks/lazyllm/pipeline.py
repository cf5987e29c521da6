"""LazyLLM 1.4 side of the lazygrpc benchmark: a three-hop ServerModule pipeline.

Run with the venv made by setup.sh:  benchmarks/lazyllm/.venv/bin/python benchmarks/lazyllm/pipeline.py

Topology (every box is a LazyLLM ServerModule = its own uvicorn process on 127.0.0.1):

    client --HTTP--> hop1 = ServerModule(pipeline(add_prefix_1, <hop2 client>))
                      --HTTP--> hop2 = ServerModule(pipeline(add_prefix_2, <hop3 client>))
                                 --HTTP--> hop3 = ServerModule(TokenStream())  (wraps a token generator)

Tokens reach the client the LazyLLM 1.4 way: hop3 writes each token into the
FileSystemQueue side queue (SQLite file under LAZYLLM_HOME, keyed by the client's
Session-ID header, which every hop forwards); the client reads that queue with
lazyllm.StreamCallHelper, which polls it every 100 ms. The full text comes back
as the ordinary HTTP reply through hop2 and hop1.

Progress goes to stderr; the last line of stdout is one JSON object.
"""

import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

# --- settings (env overridable) -------------------------------------------------------------------
UNARY_CALLS = int(os.environ.get("BENCH_UNARY_CALLS", "200"))
ROUNDTRIP_CALLS = int(os.environ.get("BENCH_ROUNDTRIP_CALLS", "30"))
ROUNDTRIP_TOKENS = int(os.environ.get("BENCH_ROUNDTRIP_TOKENS", "10"))
TTFT_CALLS = int(os.environ.get("BENCH_TTFT_CALLS", "10"))
STREAM_TOKENS = int(os.environ.get("BENCH_TOKENS", "2000"))
STREAM_RUNS = int(os.environ.get("BENCH_STREAM_RUNS", "3"))
CANCEL_BOUND_S = float(os.environ.get("BENCH_CANCEL_BOUND_S", "10"))
CANCEL_TOKENS = 10**8  # "endless" producer for the cancel test

# Isolate LazyLLM's state (config, SQLite side-queue file, logs) in a throwaway home dir.
# Must be set before lazyllm is imported; the server subprocesses inherit it.
_HOME = tempfile.mkdtemp(prefix="lazyllm-bench-")
os.environ["LAZYLLM_HOME"] = _HOME
os.environ.setdefault("LAZYLLM_LOG_LEVEL", "ERROR")
os.environ["LAZYLLM_DEFAULT_LAUNCHER"] = "empty"  # local subprocesses, no slurm/sco/k8s
for _proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
    os.environ.pop(_proxy, None)

import lazyllm  # noqa: E402
import psutil  # noqa: E402  (a LazyLLM dependency)
from lazyllm.components.deploy.relay.base import RelayServer  # noqa: E402


def log(*a):
    print("[lazyllm-bench]", *a, file=sys.stderr, flush=True)


# --- loopback only --------------------------------------------------------------------------------
# LazyLLM 1.4's relay server (lazyllm/components/deploy/relay/server.py) has `--open_ip` defaulting to
# 0.0.0.0 and RelayServer.cmd() never passes it, so ServerModule always listens on all interfaces.
# The client side already dials 127.0.0.1 (EmptyLauncher.Job.get_jobip), so we append
# `--open_ip=127.0.0.1` (argparse keeps the last value) to every relay command line.
_orig_join = RelayServer._join_command


def _join_loopback(args):
    args = list(args)
    if len(args) > 1 and str(args[1]).endswith(os.path.join("relay", "server.py")):
        args.append("--open_ip=127.0.0.1")
    return _orig_join(args)


RelayServer._join_command = staticmethod(_join_loopback)


# --- the services (pickled by value with cloudpickle into each server process) -------------------
def echo(x):
    return x


def add_prefix_1(x):
    return "h1|" + x


def add_prefix_2(x):
    return "h2|" + x


def tokens(x):
    """The hop-3 producer: a generator of n tokens. Input 'h2|h1|<n>|<stopfile or ->'.

    When it stops (finished, closed, or an error such as a failed write) it records wall-clock time
    and the number of tokens produced in <stopfile>; while running it leaves a progress file every
    100 tokens, so a producer that never stops can be seen to keep producing."""
    import json as _json
    import time as _time

    parts = x.split("|")
    n, stopfile = int(parts[-2]), parts[-1]
    produced, reason = 0, "finished"
    try:
        for i in range(n):
            yield f"t{i} "
            produced += 1
            if stopfile != "-" and produced % 100 == 0:
                with open(stopfile + ".progress", "w") as f:
                    f.write(_json.dumps({"t": _time.time(), "produced": produced}))
    except GeneratorExit:
        reason = "closed (GeneratorExit)"
        raise
    except BaseException as e:
        reason = f"error: {type(e).__name__}"
        raise
    finally:
        if stopfile != "-":
            with open(stopfile, "w") as f:
                f.write(_json.dumps({"t": _time.time(), "produced": produced, "reason": reason}))


class TokenStream(lazyllm.ModuleBase):
    """hop 3 as LazyLLM 1.4 streams: each token goes to the FileSystemQueue side queue (what
    ModuleBase._stream_output / the online chat modules do), keyed by the caller's Session-ID; the
    whole text is the return value. A plain generator behind ServerModule does not stream (see notes)."""

    def forward(self, x):
        out = []
        gen = tokens(x)
        try:
            with self.stream_output(True):
                for tok in gen:
                    self._stream_output(tok)
                    out.append(tok)
        finally:
            gen.close()
        return "".join(out)


def expected(n):
    return "".join(f"t{i} " for i in range(n))


def pct(values, p):
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def ms(x):
    return round(x * 1000.0, 3)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def reap_descendants():
    """Terminate every process this script started (uvicorn servers, their `sh -c` parents)."""
    me = psutil.Process()
    kids = me.children(recursive=True)
    for p in kids:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    gone, alive = psutil.wait_procs(kids, timeout=3)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=3)
    return len(kids)


def main(result):
    lazyllm.FileSystemQueue().clear()

    t0 = time.perf_counter()
    unary = lazyllm.ServerModule(echo)
    gen_probe = lazyllm.ServerModule(
        tokens, stream=True
    )  # the obvious way: a generator behind ServerModule
    hop3 = lazyllm.ServerModule(TokenStream())
    hop2 = lazyllm.ServerModule(lazyllm.pipeline(add_prefix_2, hop3))
    hop1 = lazyllm.ServerModule(lazyllm.pipeline(add_prefix_1, hop2))
    modules = [unary, gen_probe, hop1]
    result["_modules"] = modules
    unary.start()
    gen_probe.start()
    hop1.start()  # deploys hop3, then hop2, then hop1
    result["startup_s"] = round(time.perf_counter() - t0, 2)
    result["urls"] = {
        "unary": unary._url,
        "generator_probe": gen_probe._url,
        "hop1": hop1._url,
        "hop2": hop2._url,
        "hop3": hop3._url,
    }
    log("servers up in", result["startup_s"], "s:", result["urls"])
    listening = sorted(
        {
            f"{c.laddr.ip}:{c.laddr.port}"
            for p in psutil.Process().children(recursive=True)
            for c in p.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        }
    )
    result["listening"] = listening
    assert all(a.startswith("127.0.0.1:") for a in listening), listening

    # A generator returned by a ServerModule function is not streamed to its caller in 1.4.0: the relay
    # server writes base64 pickles with no separator, the client splits on b'<|lazyllm_delimiter|>', so
    # the caller gets one "line" after the generator has finished and unpickles only its first item.
    probe = gen_probe("h2|h1|5|-")
    lazyllm.FileSystemQueue().clear()
    result["generator_servermodule_5_tokens_returned"] = probe
    log("plain generator ServerModule, 5 tokens -> caller got", repr(probe))

    # (a) unary round trip
    assert unary("ping") == "ping"
    for _ in range(20):
        unary("ping")
    lat = []
    for _ in range(UNARY_CALLS):
        s = time.perf_counter()
        unary("ping")
        lat.append(time.perf_counter() - s)
    result["unary_p50_ms"], result["unary_p99_ms"] = ms(statistics.median(lat)), ms(pct(lat, 99))
    log("unary p50/p99 ms", result["unary_p50_ms"], result["unary_p99_ms"])

    # (b) three-hop round trip, waiting for the whole answer (hop3 still streams into the side queue)
    arg = f"{ROUNDTRIP_TOKENS}|-"
    assert hop1(arg) == expected(ROUNDTRIP_TOKENS), hop1(arg)
    for _ in range(3):
        hop1(arg)
    lat = []
    for _ in range(ROUNDTRIP_CALLS):
        s = time.perf_counter()
        hop1(arg)
        lat.append(time.perf_counter() - s)
    lazyllm.FileSystemQueue().clear()  # nobody read the tokens hop2 queued during these calls
    result["pipeline_roundtrip_ms"] = ms(statistics.median(lat))
    result["pipeline_roundtrip_p99_ms"] = ms(pct(lat, 99))
    log(
        "pipeline round trip p50/p99 ms",
        result["pipeline_roundtrip_ms"],
        result["pipeline_roundtrip_p99_ms"],
    )

    # (c) time to first token, streaming through the side queue
    lat = []
    for _ in range(TTFT_CALLS):
        helper = lazyllm.StreamCallHelper(hop1)
        s = time.perf_counter()
        gen = helper(f"{ROUNDTRIP_TOKENS}|-")
        first = next(gen)
        lat.append(time.perf_counter() - s)
        got = first["delta"] + "".join(p["delta"] for p in gen)
        assert got == expected(ROUNDTRIP_TOKENS), got
        assert helper.future.result() == expected(ROUNDTRIP_TOKENS)
    result["ttft_ms"] = ms(statistics.median(lat))
    result["ttft_min_ms"], result["ttft_max_ms"] = ms(min(lat)), ms(max(lat))
    log("ttft median/min/max ms", result["ttft_ms"], result["ttft_min_ms"], result["ttft_max_ms"])

    # (d) tokens/s for STREAM_TOKENS tokens, one token per message (STREAM_RUNS runs, median reported)
    runs = []
    for _ in range(STREAM_RUNS):
        helper = lazyllm.StreamCallHelper(hop1)
        arrivals, parts = [], []
        s = time.perf_counter()
        for p in helper(f"{STREAM_TOKENS}|-"):
            arrivals.append(time.perf_counter())
            parts.append(p["delta"])
        assert "".join(parts) == expected(STREAM_TOKENS), "stream lost or reordered tokens"
        total = arrivals[-1] - s
        bursts = 1 + sum(1 for x, y in zip(arrivals, arrivals[1:]) if y - x > 0.02)
        runs.append(
            {
                "total": total,
                "ttft": arrivals[0] - s,
                "bursts": bursts,
                "after_first": (len(arrivals) - 1) / max(arrivals[-1] - arrivals[0], 1e-9),
            }
        )
        log(
            f"{len(arrivals)} tokens in {total:.2f} s, first after {arrivals[0] - s:.3f} s, {bursts} bursts"
        )
    result["stream_tokens"] = STREAM_TOKENS
    result["stream_total_s"] = round(statistics.median(r["total"] for r in runs), 3)
    result["tokens_per_s"] = round(STREAM_TOKENS / result["stream_total_s"], 1)
    result["tokens_per_s_after_first"] = round(statistics.median(r["after_first"] for r in runs), 1)
    result["ttft_in_long_stream_ms"] = ms(statistics.median(r["ttft"] for r in runs))
    result["stream_bursts"] = [r["bursts"] for r in runs]
    log(
        "tokens/s",
        result["tokens_per_s"],
        "| ttft in long stream ms",
        result["ttft_in_long_stream_ms"],
    )

    # (e) client cancel -> hop3 producer stops?
    stopfile = os.path.join(_HOME, "hop3.stopped")
    helper = lazyllm.StreamCallHelper(hop1)
    gen = helper(f"{CANCEL_TOKENS}|{stopfile}")
    for _ in range(5):
        next(gen)
    closed = {}

    def do_close():
        gen.close()  # documented early-exit path: notifies, then waits for the producer thread
        closed["t"] = time.time()

    t_cancel = time.time()
    threading.Thread(target=do_close, daemon=True).start()
    deadline = t_cancel + CANCEL_BOUND_S
    samples, next_sample = [], t_cancel + 1.0
    while time.time() < deadline and not os.path.exists(stopfile):
        time.sleep(0.005)
        if time.time() >= next_sample:
            samples.append((read_json(stopfile + ".progress") or {}).get("produced", 0))
            next_sample += 1.0
    result["cancel_producer_progress_per_s"] = samples
    log("hop3 tokens produced, sampled each second after the cancel:", samples)
    stop = read_json(stopfile)
    if stop:
        result["cancel_to_stop_ms"] = ms(stop["t"] - t_cancel)
        result["cancel_detail"] = (
            f"producer stopped ({stop['reason']}) after {stop['produced']} tokens"
        )
    else:
        result["cancel_to_stop_ms"] = None
        p1 = (read_json(stopfile + ".progress") or {}).get("produced", 0)
        time.sleep(2.0)
        p2 = (read_json(stopfile + ".progress") or {}).get("produced", 0)
        result["cancel_producer_tokens_after_bound"] = p1
        result["cancel_detail"] = (
            f"hop3 producer had not stopped {CANCEL_BOUND_S:.0f} s after the client closed "
            f"the stream: {p1} tokens produced by then, {p2} two seconds later "
            f"(progress is recorded every 100 tokens); it only stops when the servers "
            f"are killed at the end of the run"
        )
    result["cancel_client_close_returned_ms"] = (
        ms(closed["t"] - t_cancel) if "t" in closed else None
    )
    log(
        "cancel:",
        result["cancel_to_stop_ms"],
        result["cancel_detail"],
        "| close() returned after ms:",
        result["cancel_client_close_returned_ms"],
    )


def run():
    t_start = time.perf_counter()
    result = {
        "lazyllm_version": lazyllm.__version__,
        "python": sys.version.split()[0],
        "unary_p50_ms": None,
        "unary_p99_ms": None,
        "pipeline_roundtrip_ms": None,
        "ttft_ms": None,
        "tokens_per_s": None,
        "cancel_to_stop_ms": None,
    }
    error = None
    try:
        main(result)
    except BaseException as e:  # report what we have, still clean up
        error = f"{type(e).__name__}: {e}"
        log("FAILED:", error)
    finally:
        for m in result.pop("_modules", []):
            try:
                m.stop()
            except Exception as e:
                log("stop failed:", e)
        result["reaped_processes"] = reap_descendants()
        result["stray_processes"] = len(psutil.Process().children(recursive=True))
        shutil.rmtree(_HOME, ignore_errors=True)
    result["run_s"] = round(time.perf_counter() - t_start, 1)
    notes = [
        "client -> hop1 -> hop2 -> hop3, each a LazyLLM 1.4 ServerModule (uvicorn, HTTP/1.1, pickled payloads) on "
        "127.0.0.1; --open_ip=127.0.0.1 appended to the relay command because LazyLLM binds 0.0.0.0 otherwise",
        "tokens go from hop3 into the SQLite FileSystemQueue side queue, which the client polls every 100 ms "
        "(StreamCallHelper default); one token per message; the full text returns as the HTTP reply via hop2, hop1",
        "a plain generator behind ServerModule does not stream in 1.4.0 (relay server emits no <|lazyllm_delimiter|>; "
        "the caller gets only the first item, after the generator ends): see generator_servermodule_5_tokens_returned",
        f"pipeline_roundtrip_ms: median of {ROUNDTRIP_CALLS} blocking calls, {ROUNDTRIP_TOKENS} tokens each "
        "(hop3 still writes its tokens to the side queue)",
        f"ttft_ms: median of {TTFT_CALLS} calls of {ROUNDTRIP_TOKENS} tokens (floor: the 100 ms poll); "
        f"tokens_per_s: {STREAM_TOKENS} tokens / time from call to last token, median of {STREAM_RUNS}; "
        "ttft_in_long_stream_ms: first token of those long streams, late, most likely because hop3 holds the queue file lock "
        "back to back and the polling reader rarely gets it (stream_bursts = arrival bursts separated by >20 ms)",
        f"cancel: client closes the StreamCallHelper generator after 5 tokens; bound {CANCEL_BOUND_S:.0f} s; "
        "cancel_to_stop_ms null = hop3 producer did not stop within the bound. "
        + result.get("cancel_detail", ""),
    ]
    if error:
        notes.append("ERROR: " + error)
    result["notes"] = " | ".join(notes)
    result.pop("cancel_detail", None)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    # The thread pool worker that ran the cancelled call may still sit in a dead socket read; every
    # child process is already gone, so leave without joining it.
    os._exit(1 if error else 0)


if __name__ == "__main__":
    run()
