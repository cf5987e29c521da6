"""Hosts made of network namespaces for tests/test_hosts.py: one veth each into a switch.

Each host is a namespace with `eth0` at 10.231.N.i/24; a further namespace holds the bridge
the hosts' veth peers hang on. Nothing is added to the namespace the tests run in: they
reach the processes on the hosts through unix sockets (not namespaced), and the processes
reach each other by address, as across machines. Each process gets its own UTS namespace,
so that its host name (what a call chain's frames name) is its host's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

from tests.conftest import ROOT


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "iproute2 / util-linux not installed (make system-deps)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"lzgprobe{os.getpid()}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"the kernel refuses network namespaces: {result.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


class Hosts:
    """`Hosts(["gw", "ret", "mod"])`: hosts by name, their addresses, processes on them."""

    def __init__(self, names: Sequence[str]) -> None:
        self.tag = f"lzg{os.getpid() % 100000}"
        self.subnet = 10 + os.getpid() % 240
        self.switch = f"{self.tag}-sw"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []
        self.address: dict[str, str] = {}
        try:
            self._add(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for i, name in enumerate(names, start=1):
                ns = self.ns(name)
                self._add(ns)
                _ip("-n", ns, "link", "add", "eth0", "type", "veth",
                    "peer", "name", f"p{i}", "netns", self.switch)  # fmt: skip
                _ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0", "up")
                self.address[name] = f"10.231.{self.subnet}.{i}"
                _ip("-n", ns, "addr", "add", f"{self.address[name]}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            self.close()
            raise

    def ns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def _add(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def prefix(self, host: str) -> list[str]:
        """Run a command on `host`, under the host name `host`."""
        return ["ip", "netns", "exec", self.ns(host), "unshare", "--uts", "--",
                "sh", "-c", 'hostname "$0" && exec "$@"', host]  # fmt: skip

    def start(
        self, host: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """`python -m lazygrpc ARGS` on `host`, once it printed `listening on`."""
        proc = subprocess.Popen(
            [*self.prefix(host), sys.executable, "-m", "lazygrpc", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            proc.kill()
            raise AssertionError(f"{args} on {host} did not start: {line!r} {proc.communicate()}")
        return proc

    def link(self, host: str, up: bool) -> None:
        """Cut (or restore) `host`'s only link: no RST, packets just stop."""
        _ip("-n", self.ns(host), "link", "set", "eth0", "up" if up else "down")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        self.procs.clear()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.namespaces.clear()
