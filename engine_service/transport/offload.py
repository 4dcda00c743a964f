"""One lane for CPU-heavy conversions of large requests and responses, off the event loop.

Checking a megabyte of Struct or turning it into protobuf is pure Python: a second of
CPU. On a worker thread it leaves the event loop free to answer health checks and other
calls, but under the GIL every busy thread takes its turn with the loop, so each one
more would slow the loop's own work further. One worker thread keeps the loop's share at
half or more; large payloads wait their turn in the lane instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class CpuLane:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-cpu")

    async def run(self, work: Callable[[], T]) -> T:
        """`work()` on the lane's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def close(self) -> None:
        """At shutdown, once no call is left: conversions still queued are dropped."""
        self._executor.shutdown(wait=False, cancel_futures=True)
