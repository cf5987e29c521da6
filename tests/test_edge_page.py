"""The chat page at `/`, end to end in headless Debian Chromium driven by Playwright."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from tests.edges import Edges, Leaf, demo_mesh, running_edges, three_hops

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 20_000


@pytest.fixture
def edges(servers: Any) -> Iterator[Edges]:
    with running_edges(servers) as e:
        yield e


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    with sync_playwright() as p:
        # A fresh profile: Playwright passes it as --user-data-dir.
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1100, "height": 760},
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


def ask(page: Page, question: str) -> None:
    page.fill("#prompt", question)
    page.click("#send")


def png_size_and_colours(data: bytes) -> tuple[int, int, int]:
    """(width, height, distinct byte values of the pixel rows) of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


def test_the_page_streams_answers_events_globals_and_error_chains(
    servers: Any, edges: Edges, monkeypatch: Any, browser: BrowserContext, tmp_path: Path
) -> None:
    edge = edges.start(*demo_mesh(servers, monkeypatch, token_delay=0.005))
    page = browser.new_page()
    page.goto(f"{edge.url}/")
    expect(page.locator("#model")).to_have_value("ask")  # the first streaming module

    ask(page, "What is a session?")
    expect(page.locator("#status")).to_have_attribute("data-state", "done")
    expect(page.locator("#answer")).to_contain_text("Answer the question from these notes.")
    expect(page.locator("#events .source").first).to_have_text("[ask] ")
    expect(page.locator("#events")).to_contain_text("[rag] retrieved: ")
    expect(page.locator("#globals")).to_contain_text('"calls": 1')
    session = page.locator("#session").inner_text()
    assert session.startswith("session ")

    # The globals go back as baggage: the model adds the next call to the session's usage.
    ask(page, "How do deadlines work?")
    expect(page.locator("#status")).to_have_attribute("data-state", "done")
    expect(page.locator("#globals")).to_contain_text('"calls": 2')
    assert page.locator("#session").inner_text() == session

    ask(page, "please explode")
    expect(page.locator("#status")).to_have_attribute("data-state", "error")
    hops = page.locator("#chain li")
    expect(hops).to_have_count(3)
    expect(hops.nth(0)).to_contain_text("edge./v1/chat/completions")
    expect(hops.nth(1)).to_contain_text("gateway.ask")
    expect(hops.nth(2)).to_contain_text("retriever.rag — RetrievalError: the retriever refuses")

    shot = tmp_path / "chat.png"
    page.screenshot(path=str(shot))
    width, height, colours = png_size_and_colours(shot.read_bytes())
    assert (width, height) == (1100, 760)
    assert colours > 16, "the screenshot is blank"


def test_stop_cancels_the_whole_chain(servers: Any, edges: Edges, browser: BrowserContext) -> None:
    leaf = Leaf()
    edge = edges.start(three_hops(servers, leaf))
    page = browser.new_page()
    page.goto(f"{edge.url}/")
    page.select_option("#model", "gateway")
    ask(page, "go")
    expect(page.locator("#answer")).to_contain_text("tok tok")
    assert not leaf.stopped.is_set()
    page.click("#stop")
    assert leaf.stopped.wait(10), "the leaf three hops down kept producing"
    expect(page.locator("#status")).to_have_attribute("data-state", "stopped")
    expect(page.locator("#send")).to_be_enabled()
