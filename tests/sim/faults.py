"""Random fault schedules, and the store wrapper through which each process sees them.

Every engine process reaches the shared store through its own `ProcessStore`, which can:
- fail the n-th write with StorageError, before it takes effect or after (the commit
  happened, the answer was lost);
- stop the whole process at its n-th commit, before or after it takes effect (so a
  process can die between any two commits);
- fail its lease renewals for a while (a partition of the lease round), or every call
  (the database is unreachable from that process), or fail its n-th read;
- hold every call made during a while until the while is over (a stalled connection, a
  process paused): a stale lease holder's writes then reach the store late;
- refuse every call once the process is dead: a dead process commits nothing.
Stopping a process at a moment in time (at any await point) is the world's business.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from engine_service.core.errors import StorageError
from tests.sim.tasks import in_process

Mode = Literal["before", "after"]
FaultKind = Literal[
    "kill",
    "stop",
    "kill_at_commit",
    "fail_write",
    "fail_read",
    "partition",
    "outage",
    "stall",
    "join",
    "twin",
]

# Writes: what can fail. Commits: what a process can die between.
WRITES = frozenset(
    {
        "append",
        "create_execution",
        "add_command",
        "decide_command",
        "renew_leases",
        "claim_executions",
    }
)
COMMITS = frozenset({"append", "create_execution"})
READS = frozenset(
    {
        "get_workflow",
        "get_execution",
        "list_executions",
        "read_events",
        "unfinished_executions",
        "pending_commands",
        "get_command",
        "list_workflows",
        "add_workflow",
    }
)


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    process: int
    at: float = 0.0
    yields: int = 0
    # kill_at_commit / fail_write: which call (counted from `at`) and when it strikes.
    nth: int = 0
    mode: Mode = "before"
    # partition / outage: how long; kill / stop / kill_at_commit: how long until restart.
    seconds: float = 0.0

    def describe(self) -> str:
        where = f"p{self.process}"
        if self.kind in ("kill", "stop"):
            return (
                f"t={self.at:g}+{self.yields}y {self.kind} {where}, restart after {self.seconds:g}s"
            )
        if self.kind == "kill_at_commit":
            return (
                f"from t={self.at:g}: kill {where} {self.mode} its commit #{self.nth}, "
                f"restart after {self.seconds:g}s"
            )
        if self.kind == "fail_write":
            return (
                f"from t={self.at:g}: {where}'s write #{self.nth} fails {self.mode} taking effect"
            )
        if self.kind == "fail_read":
            return f"from t={self.at:g}: {where}'s read #{self.nth} fails"
        if self.kind in ("partition", "outage", "stall"):
            what = {
                "partition": "lease renewals fail",
                "outage": "every store call fails",
                "stall": "store calls wait for the end",
            }[self.kind]
            return f"t={self.at:g}..{self.at + self.seconds:g}: {where}'s {what}"
        if self.kind == "twin":
            # A same-named process from before a restart that is not quite dead (paused,
            # cut off): the leases do not tell the two apart, only their epochs do.
            return f"t={self.at:g}: process {where} joins under p{self.nth}'s name"
        return f"t={self.at:g}: process {where} joins"


@dataclass(frozen=True)
class Shape:
    """What the fault-free run looked like: where faults can land."""

    duration: float
    processes: int
    commits: tuple[int, ...]  # per process


def make_faults(seed: int, shape: Shape, *, single_process: bool) -> tuple[Fault, ...]:
    rng = random.Random(f"faults-{seed}")
    span = max(shape.duration, 1.0)
    faults: list[Fault] = []
    processes = shape.processes
    for _ in range(rng.choice((1, 1, 2, 2, 3, 4))):
        kinds: list[FaultKind] = ["kill", "kill", "stop", "kill_at_commit", "kill_at_commit"]
        kinds += ["fail_write", "fail_write", "fail_read", "outage", "stall"]
        if not single_process:
            kinds += ["partition", "partition", "join", "twin"]
        kind = rng.choice(kinds)
        process = rng.randrange(processes)
        at = rng.uniform(0, span)
        restart = rng.choice((0.0, rng.uniform(0, 15)))
        if kind in ("kill", "stop"):
            faults.append(Fault(kind, process, at, rng.randint(0, 12), seconds=restart))
        elif kind in ("kill_at_commit", "fail_write", "fail_read"):
            commits = max(shape.commits[process] if process < len(shape.commits) else 1, 1)
            start = rng.choice((0.0, at))
            nth = rng.randint(1, commits + 2)
            mode: Mode = rng.choice(("before", "after"))
            faults.append(Fault(kind, process, start, nth=nth, mode=mode, seconds=restart))
        elif kind == "partition":
            faults.append(Fault(kind, process, at, seconds=rng.uniform(4, 30)))
        elif kind == "outage":
            faults.append(Fault(kind, process, at, seconds=rng.uniform(0.5, 20)))
        elif kind == "stall":
            faults.append(Fault(kind, process, at, seconds=rng.uniform(1, 25)))
        elif kind == "twin":
            faults.append(Fault("twin", processes, at, nth=process))
            processes += 1
        else:
            faults.append(Fault("join", processes, at))
            processes += 1
    return tuple(sorted(faults, key=lambda f: f.at))


@dataclass
class Windows:
    """Partitions and outages of one process slot: they outlive its incarnations."""

    partitions: list[tuple[float, float]] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)
    stalls: list[tuple[float, float]] = field(default_factory=list)

    @staticmethod
    def active(windows: list[tuple[float, float]], now: float) -> bool:
        return any(start <= now < end for start, end in windows)

    @staticmethod
    def end(windows: list[tuple[float, float]], now: float) -> float | None:
        return max((end for start, end in windows if start <= now < end), default=None)


class Hold:
    """Keeps virtual time still while a real database call is in flight (the SQL tiers).

    looptime moves virtual time to the next timer whenever no I/O is ready, even while a
    query is on the wire; an executor job it waits on makes it wait for the I/O instead.
    """

    def __init__(self) -> None:
        self._inflight = 0
        self._release: Callable[[], None] | None = None

    def enter(self) -> None:
        self._inflight += 1
        if self._inflight == 1:
            import threading

            released = threading.Event()
            asyncio.get_running_loop().run_in_executor(None, released.wait)
            self._release = released.set

    def exit(self, _done: object = None) -> None:
        self._inflight -= 1
        if self._inflight == 0 and self._release is not None:
            self._release()
            self._release = None


class ProcessStore:
    """One process's view of the shared store, faults included (see the module doc)."""

    def __init__(
        self,
        inner: Any,
        windows: Windows,
        *,
        on_kill: Callable[[], None],
        on_call: Callable[[], None] = lambda: None,
        on_strike: Callable[[str], None] = lambda _what: None,
        hold: Hold | None = None,
        tag: str = "",
    ) -> None:
        self.tag = tag
        self._inner = inner
        self._on_call = on_call
        self._on_strike = on_strike
        self._windows = windows
        self._on_kill = on_kill
        self._hold = hold
        self.dead = False
        self.calls = 0
        self.writes = 0
        self.reads = 0
        self.commits = 0
        self.fail_writes: dict[int, Mode] = {}
        self.fail_reads: set[int] = set()
        self._stalled: asyncio.Future[Any] | None = None
        self.kill_at: dict[int, Mode] = {}
        self.commands: list[tuple[Any, float]] = []  # (Command, when stored)
        for name in WRITES | READS:
            target = getattr(inner, name)
            setattr(self, name, self._wrap(name, target))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def on_command(self, callback: Callable[[str], None]) -> None:
        """The shared in-memory store tells every engine of a command by calling it back
        from the storing process's task: run the callback as this process's code instead
        (what it starts belongs to this process), and not at all once this one is dead."""

        def told(execution_id: str) -> None:
            if not self.dead:
                in_process(self.tag, callback, execution_id)

        register = getattr(self._inner, "on_command", None)
        if register is not None:
            register(told)

    def _wrap(self, name: str, target: Callable[..., Any]) -> Callable[..., Any]:
        lazy = inspect.iscoroutinefunction(target)

        def call(*args: Any, **kwargs: Any) -> Awaitable[Any]:
            self.calls += 1
            self._on_call()
            if self.dead:
                return _cancelled()
            now = asyncio.get_running_loop().time()
            until = Windows.end(self._windows.stalls, now)
            if until is not None:
                return self._stall(until - now, lambda: dispatch(args, kwargs))
            return dispatch(args, kwargs)

        def dispatch(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Awaitable[Any]:
            now = asyncio.get_running_loop().time()
            if Windows.active(self._windows.outages, now) or (
                name == "renew_leases" and Windows.active(self._windows.partitions, now)
            ):
                return _failed(f"{name}: the database is unreachable from this process")
            strike = self._strike(name)
            if strike:
                self._on_strike(f"{strike} {name}{_what(name, args)}")
            invoke = functools_partial(target, args, kwargs)
            if strike == "fail-before":
                return _failed(f"{name} failed (injected)")
            if strike == "kill-before":
                self._kill()
                return _cancelled()
            if strike in ("fail-after", "kill-after"):
                return self._after(invoke, lazy, strike)
            result = self._held(invoke()) if self._hold else invoke()
            if name == "add_command" and args:
                return self._noting_stored(args[0], result)
            return result

        return call

    def _noting_stored(self, command: Any, result: Awaitable[Any]) -> Awaitable[Any]:
        """When each command became durable: from then on it is accepted."""
        future = asyncio.ensure_future(result)

        def stored(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is None:
                self.commands.append((command, asyncio.get_running_loop().time()))

        future.add_done_callback(stored)
        return future

    def _stall(self, seconds: float, dispatch: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
        """Held until the stall is over, then made, in the order the calls came."""
        before = self._stalled

        async def later() -> Any:
            await asyncio.sleep(seconds)
            if before is not None:
                await asyncio.wait([before])
            if self.dead:
                raise asyncio.CancelledError
            return await dispatch()

        self._stalled = asyncio.ensure_future(later())
        return self._stalled

    def _strike(self, name: str) -> str:
        if name in READS:
            self.reads += 1
            if self.reads in self.fail_reads:
                self.fail_reads.discard(self.reads)
                return "fail-before"
        if name in WRITES:
            self.writes += 1
            mode = self.fail_writes.pop(self.writes, None)
            if mode is not None:
                return f"fail-{mode}"
        if name in COMMITS:
            self.commits += 1
            mode = self.kill_at.pop(self.commits, None)
            if mode is not None:
                return f"kill-{mode}"
        return ""

    def _kill(self) -> None:
        if not self.dead:
            self.dead = True
            self._on_kill()

    def _held(self, awaitable: Awaitable[Any]) -> Awaitable[Any]:
        assert self._hold is not None
        self._hold.enter()
        future = asyncio.ensure_future(awaitable)
        future.add_done_callback(self._hold.exit)
        return future

    def _after(self, invoke: Callable[[], Any], lazy: bool, strike: str) -> Awaitable[Any]:
        eager = None if lazy else invoke()

        async def after() -> Any:
            await (invoke() if eager is None else eager)
            if strike == "kill-after":
                self._kill()
                raise asyncio.CancelledError
            raise StorageError("the write committed, but its answer was lost (injected)")

        return self._held(after()) if self._hold else after()


def _what(name: str, args: tuple[Any, ...]) -> str:
    """The events of an append, for the fault log."""
    if name != "append" or len(args) < 2:
        return ""
    state, events = args[0], args[1]
    shown = ", ".join(
        f"{e.step_id or 'execution'} {e.step_status or e.execution_status}" for e in events
    )
    return f" of {state.id[:8]} #{events[0].sequence if events else '?'}: {shown}"


def functools_partial(
    target: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Callable[[], Any]:
    return lambda: target(*args, **kwargs)


def _failed(message: str) -> Awaitable[Any]:
    future = asyncio.get_running_loop().create_future()
    future.set_exception(StorageError(message))
    return future


def _cancelled() -> Awaitable[Any]:
    future = asyncio.get_running_loop().create_future()
    future.cancel()
    return future
