"""Soak runs of the streaming memory test (`make soak`; `pytest -m soak tests/soak`)."""

from __future__ import annotations

import pytest
from test_streaming import KIB, run_memory

pytestmark = pytest.mark.soak


@pytest.mark.timeout(120)
def test_memory_of_200_streams_stalled_for_60s_is_bounded() -> None:
    run_memory(streams=200, seconds=60.0, topic_events=64, topic_bytes=64 * KIB)


@pytest.mark.timeout(180)
def test_memory_of_repeated_stall_and_cancel_cycles() -> None:
    # One server, ten rounds of 240 stalled then cancelled streams: a leak adds up.
    run_memory(streams=240, seconds=5.0, topic_events=32, topic_bytes=32 * KIB, cycles=10)
