"""Which simulated process each asyncio task belongs to.

A loop task factory tags every new task with the process whose code created it, read
from a context variable that each process's root tasks carry (a task copies its
creator's context), so a process's tasks can all be cancelled at once however deep they
were spawned: runners, step tasks, pending writes, the lease keeper, command waiters.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

_PROCESS: contextvars.ContextVar[str] = contextvars.ContextVar("sim_process", default="")


def in_process(owner: str, call: Callable[..., Any], *args: Any) -> Any:
    """Run `call(*args)` as code of process `owner`: the tasks it creates are its."""
    context = contextvars.copy_context()
    context.run(_PROCESS.set, owner)
    return context.run(call, *args)


class Tasks:
    """Which process each task belongs to: the one whose code created it."""

    def __init__(self) -> None:
        self._of: dict[str, weakref.WeakSet[asyncio.Task[Any]]] = {}
        self._dead: set[str] = set()

    def factory(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any],
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, context=context)
        owner = context.get(_PROCESS, "") if context is not None else _PROCESS.get()
        if owner:
            self._of.setdefault(owner, weakref.WeakSet()).add(task)
            if owner in self._dead:
                task.cancel()
        return task

    def spawn(self, owner: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        context = contextvars.copy_context()
        context.run(_PROCESS.set, owner)
        return asyncio.get_running_loop().create_task(coro, context=context)

    def spawn_driver(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task of the simulation itself, even when started from a process's code."""
        return self.spawn("", coro)

    def kill(self, owner: str) -> None:
        self._dead.add(owner)
        for task in list(self._of.get(owner, ())):
            task.cancel()

    def alive(self, owner: str) -> list[asyncio.Task[Any]]:
        return [t for t in self._of.get(owner, ()) if not t.done()]
