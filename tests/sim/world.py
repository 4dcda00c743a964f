"""The simulated cluster: engine processes on one shared store, on virtual time.

Every task belongs to the process whose code created it (see `tests.sim.tasks`), so
stopping a process is exact: every one of its tasks is cancelled at once, wherever it is
suspended, and its store refuses every later call, so it commits nothing more. A restart
is a new `Engine` and `LeaseKeeper` on the same store, as after a real process restart.
Clients (see `tests.sim.clients`) call into a live process's engine; a call in flight when
its process dies is lost with it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from engine_service.core.clock import LoopClock
from engine_service.core.commands import Command
from engine_service.core.engine import Engine, EngineConfig
from engine_service.core.errors import EngineError
from engine_service.core.leases import LeaseKeeper, LeaseSettings
from engine_service.core.state import ExecutionState
from engine_service.core.store import ExecutionQuery, ExecutionStore
from tests.sim.clients import operator, send_command, start_root
from tests.sim.faults import Fault, Hold, ProcessStore, Windows
from tests.sim.probe import Ledger
from tests.sim.record import CommandLog, Record
from tests.sim.tasks import Tasks
from tests.sim.tiers import Tier
from tests.sim.workflows import Scenario, parsed_definitions

HORIZON = 1800.0  # virtual seconds: a schedule not over by then never ends
STALL = 120.0  # nothing committed for this long, nothing more planned: it never ends
T = TypeVar("T")
STOP_WITHIN = 120.0  # virtual seconds a graceful stop (keeper, then engine) may take
SHUTDOWN = 60.0  # virtual seconds the tasks get to finish once every process is stopped
MAX_CALLS = 60_000  # store calls: beyond this the engine is spinning


@dataclass
class Process:
    slot: int
    tag: str
    store: ProcessStore
    engine: Engine
    keeper: LeaseKeeper
    raw: ExecutionStore
    alive: bool = True
    restart_after: float = 0.0


@dataclass
class World:
    scenario: Scenario
    faults: tuple[Fault, ...]
    tier: Tier
    seed: int
    tasks: Tasks = field(default_factory=Tasks)
    processes: dict[int, Process] = field(default_factory=dict)
    windows: dict[int, Windows] = field(default_factory=dict)
    owners: dict[int, str] = field(default_factory=dict)  # lease owner names, by slot
    incarnations: dict[int, int] = field(default_factory=dict)
    roots: list[str | None] = field(default_factory=list)
    commands: list[CommandLog] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    fault_log: list[tuple[float, str]] = field(default_factory=list)
    commits: dict[int, int] = field(default_factory=dict)
    pending: int = 0  # timeline entries (starts, commands, faults, restarts) still to come
    calls: int = 0
    hold: Hold | None = None
    aborted: bool = False
    # Each run is a tenant of its own: SQL tiers run many schedules on one database.
    tenant: str = "default"
    over: bool = False
    stores: list[ProcessStore] = field(default_factory=list)
    stuck: list[asyncio.Task[Any]] = field(default_factory=list)
    observer: ExecutionStore = field(init=False)
    ledger: Ledger = field(init=False)

    async def run(self) -> Record:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(self.tasks.factory)  # type: ignore[arg-type]
        self.hold = Hold() if self.tier.holds_time else None
        observer = await self._held(self.tier.open())
        # Seen through a store wrapper too, so reads hold virtual time like the engine's.
        self.observer = ProcessStore(observer, Windows(), on_kill=_never, hold=self.hold)  # type: ignore[assignment]
        self.ledger = Ledger(self.observer)
        self.roots = [None] * len(self.scenario.roots)
        try:
            await self._register()
            for slot in range(self.scenario.processes):
                await self._boot(slot)
            self._plan()
            ended = await self._until_over()
            return await self._record(ended)
        finally:
            await self._shutdown()

    # ---- the timeline ---------------------------------------------------------------

    def _plan(self) -> None:
        for index, root in enumerate(self.scenario.roots):
            self._at(root.at, 0, functools.partial(start_root, self, index))
        for command in self.scenario.commands:
            self._at(command.at, command.yields, functools.partial(send_command, self, command))
        for fault in self.faults:
            self._at(fault.at, fault.yields, functools.partial(self._fault, fault))

    def _at(self, at: float, yields: int, action: Callable[[], Awaitable[None]]) -> None:
        self.pending += 1

        async def later() -> None:
            try:
                await asyncio.sleep(max(0.0, at - asyncio.get_running_loop().time()))
                for _ in range(yields):
                    await asyncio.sleep(0)
                await action()
            finally:
                self.pending -= 1

        self.tasks.spawn_driver(later())

    async def _until_over(self) -> float:
        loop = asyncio.get_running_loop()
        resumer = self.tasks.spawn_driver(operator(self))
        progress, since = -1, 0.0
        try:
            while loop.time() < HORIZON and not self.aborted:
                await asyncio.sleep(1.0)
                states = await self.states()
                if self.pending == 0 and all(r is not None for r in self.roots):
                    if all(s.status.is_terminal for s in states):
                        return loop.time()
                    if loop.time() - since > STALL:
                        break
                events = sum(s.last_sequence for s in states)
                if events != progress or self.pending:
                    progress, since = events, loop.time()
            unfinished = [s for s in await self.states() if not s.status.is_terminal]
            what = ", ".join(f"{s.id[:8]} {s.status}" for s in unfinished) or "none"
            if self.pending:  # a start, command, fault or restart never got done
                what += f"; {self.pending} planned entries not done"
            reason = (
                "the engine spun"
                if self.aborted
                else f"nothing was committed for {STALL:g}s"
                if loop.time() < HORIZON
                else f"after {HORIZON:g}s"
            )
            self.problems.append(("every-execution-ends", f"{reason}: still {what}"))
            return loop.time()
        finally:
            resumer.cancel()

    async def states(self) -> list[ExecutionState]:
        query = ExecutionQuery(tenant=self.tenant, page_size=1000)
        page = await self.observer.list_executions(query)
        return list(page.items)

    # ---- processes -------------------------------------------------------------------

    async def _boot(self, slot: int) -> None:
        incarnation = self.incarnations[slot] = self.incarnations.get(slot, 0) + 1
        tag = f"p{slot}.{incarnation}"
        owner = self.owners.get(slot, f"p{slot}")
        raw = await self._held(self.tier.process_store(owner))
        windows = self.windows.setdefault(slot, Windows())
        process: Process
        store = ProcessStore(
            raw,
            windows,
            on_kill=lambda: self._kill(process),
            on_call=self._counted,
            on_strike=lambda what: self.fault_log.append((_now(), f"{tag}: {what}")),
            hold=self.hold,
            tag=tag,
        )
        self.stores.append(store)
        config = EngineConfig(
            max_concurrent_steps=self.scenario.slots,
            commands_across_processes=not self.scenario.single_process,
        )
        engine = Engine(
            store,  # type: ignore[arg-type]
            actions=self.ledger.registry(tag),
            config=config,
            clock=LoopClock(),
            secrets={},
            rng=random.Random(f"engine-{self.seed}-{tag}"),
        )
        settings = LeaseSettings(
            owner=owner,
            duration=self.scenario.lease[0],
            interval=self.scenario.lease[1],
            take_over_on_start=self.scenario.single_process,
        )
        process = Process(slot, tag, store, engine, LeaseKeeper(engine, settings), raw)
        self.processes[slot] = process
        started = await self.call(process, process.keeper.start)
        if isinstance(started, BaseException):
            self.fault_log.append((_now(), f"{tag} failed to start: {started!r}"))
            process.restart_after = 1.0
            self._kill(process)

    async def _held(self, call: Awaitable[T]) -> T:
        """A call to the database outside the store port (opening, closing) holds virtual
        time too: connection timeouts are measured on the loop's clock."""
        if self.hold is None:
            return await call
        self.hold.enter()
        try:
            return await call
        finally:
            self.hold.exit()

    def _counted(self) -> None:
        self.calls += 1
        if self.calls > MAX_CALLS and not self.aborted:
            self.aborted = True
            for process in self.processes.values():
                process.restart_after = -1.0
                self._kill(process)

    def _kill(self, process: Process) -> None:
        if not process.alive:
            return
        process.alive = False
        process.store.dead = True
        self.commits[process.slot] = self.commits.get(process.slot, 0) + process.store.commits
        self.tasks.kill(process.tag)
        if not self.over:
            self.fault_log.append((_now(), f"{process.tag} stopped"))
        self.tasks.spawn_driver(self._release(process))
        if process.restart_after >= 0:
            self.pending += 1
            self.tasks.spawn_driver(self._restart(process.slot, process.restart_after))

    async def _release(self, process: Process) -> None:
        """Close a dead process's store once its cancelled tasks are done."""
        for _ in range(100):
            if not self.tasks.alive(process.tag):
                break
            await asyncio.sleep(0)
        await self._held(self.tier.release(process.raw))

    async def _restart(self, slot: int, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            if not self.aborted:
                await self._boot(slot)
        finally:
            self.pending -= 1

    async def _stop_gracefully(self, process: Process) -> None:
        async def stop() -> None:
            await process.keeper.stop()
            await process.engine.stop()

        stopped = await self.call(process, stop, within=STOP_WITHIN)
        if isinstance(stopped, TimeoutError):
            self.problems.append(
                (
                    "a-graceful-stop-ends",
                    f"{process.tag}'s stop was not over after {STOP_WITHIN:g}s",
                )
            )
        self._kill(process)

    def live(self, preferred: int) -> Process | None:
        process = self.processes.get(preferred)
        if process is not None and process.alive:
            return process
        return next((p for p in self.processes.values() if p.alive), None)

    async def call(
        self,
        process: Process,
        call: Callable[[], Awaitable[Any]],
        within: float | None = None,
        deadline: tuple[float, int] | None = None,
    ) -> Any:
        """Run `call()` as a task of `process`; its result, or the exception it ended with
        (CancelledError if the process died meanwhile, TimeoutError if not over `within`).
        With a `deadline` (seconds, then loop turns) the caller gives up: the task is
        cancelled then, as gRPC cancels a handler whose client went away."""

        async def body() -> Any:
            return await call()

        task = self.tasks.spawn(process.tag, body())
        if deadline is not None:
            await asyncio.wait([task], timeout=deadline[0])
            for _ in range(deadline[1]):
                await asyncio.sleep(0)
            task.cancel()
        await asyncio.wait([task], timeout=within)
        if not task.done():
            return TimeoutError()
        if task.cancelled():
            return asyncio.CancelledError()
        return task.exception() or task.result()

    # ---- faults ----------------------------------------------------------------------

    async def _fault(self, fault: Fault) -> None:
        self.fault_log.append((_now(), fault.describe()))
        if fault.kind in ("join", "twin"):
            if fault.kind == "twin":
                self.owners[fault.process] = f"p{fault.nth}"
            await self._boot(fault.process)
            return
        if fault.kind in ("partition", "outage", "stall"):
            windows = self.windows.setdefault(fault.process, Windows())
            target = {
                "partition": windows.partitions,
                "outage": windows.outages,
                "stall": windows.stalls,
            }[fault.kind]
            target.append((fault.at, fault.at + fault.seconds))
            return
        process = self.processes.get(fault.process)
        if process is None or not process.alive:
            return
        process.restart_after = fault.seconds
        if fault.kind == "kill":
            self._kill(process)
        elif fault.kind == "stop":
            await self._stop_gracefully(process)
        elif fault.kind == "kill_at_commit":
            process.store.kill_at[process.store.commits + fault.nth] = fault.mode
        elif fault.kind == "fail_read":
            process.store.fail_reads.add(process.store.reads + fault.nth)
        else:
            process.store.fail_writes[process.store.writes + fault.nth] = fault.mode

    # ---- clients ---------------------------------------------------------------------

    async def _register(self) -> None:
        for workflow_id, definition in parsed_definitions(self.scenario).items():
            if isinstance(definition, EngineError):
                self.problems.append(
                    ("generated-definitions-register", f"{workflow_id}: {definition}")
                )
            else:
                await self.observer.add_workflow(replace(definition, tenant=self.tenant))

    # ---- the record ------------------------------------------------------------------

    async def _record(self, ended: float) -> Record:
        states = await self.states()
        events = {s.id: await self.observer.read_events(s.id) for s in states}
        stored = []
        for process in self.processes.values():
            self.commits[process.slot] = self.commits.get(process.slot, 0) + (
                process.store.commits if process.alive else 0
            )
        sent = self._sent_commands()
        for command, _, _ in sent:
            stored.append(await self.observer.get_command(command.id))
        rows = await self._held(self.tier.step_attempts([s.id for s in states]))
        return Record(
            scenario=self.scenario,
            faults=self.faults,
            roots=list(self.roots),
            executions={s.id: s for s in states},
            events=events,
            commands=self.commands,
            stored_commands=stored,
            command_stored={c.id: (at, tag) for c, at, tag in sent},
            ledger=self.ledger,
            problems=self.problems,
            fault_log=self.fault_log,
            ended=ended,
            commits=tuple(self.commits.get(i, 0) for i in range(max(self.commits, default=-1) + 1)),
            attempt_rows=rows,
        )

    def _sent_commands(self) -> list[tuple[Command, float, str]]:
        """Every command a process stored, with when it was stored and by which process."""
        seen: dict[str, tuple[Command, float, str]] = {}
        for store in self.stores:
            for command, at in store.commands:
                seen.setdefault(command.id, (command, at, store.tag))
        return list(seen.values())

    async def _shutdown(self) -> None:
        self.over = True
        for process in list(self.processes.values()):
            process.restart_after = -1.0
            self._kill(process)
        loop = asyncio.get_running_loop()
        others = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        # A dead process's task may wait for a future only its own (cancelled) tasks would
        # have settled; a real process would be gone with it. Bounded, in virtual time.
        if others:
            await asyncio.wait(others, timeout=SHUTDOWN)
        await self._held(self.tier.close())
        loop.set_task_factory(None)
        self.stuck = [t for t in others if not t.done()]
        if self.stuck and os.environ.get("STEPSTREAM_SIM_DEBUG"):
            for task in self.stuck:
                task.print_stack(file=sys.stderr)


def _never() -> None:
    raise AssertionError("the observer never dies")


def _now() -> float:
    return asyncio.get_running_loop().time()
