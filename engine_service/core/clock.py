"""Time as the engine sees it: wall-clock timestamps for events, loop time for waiting.

Waiting (backoff, timeouts) always uses the event loop's clock, so tests that run the
loop on virtual time (looptime) get exact, instant waits. `LoopClock` derives timestamps
from that same loop clock, so event timestamps agree with the waits.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class LoopClock:
    """Timestamps from the running loop's time: `origin` plus `loop.time()` seconds.

    Every LoopClock on one loop agrees, so an engine started after another (a restart in
    tests) reads the deadlines and next-attempt times the first one stored. Under looptime
    the loop's time starts at 0, so timestamps start at `origin`.
    """

    def __init__(self, origin: datetime = datetime(2026, 1, 1, tzinfo=UTC)) -> None:
        self._origin = origin

    def now(self) -> datetime:
        return self._origin + timedelta(seconds=asyncio.get_running_loop().time())
