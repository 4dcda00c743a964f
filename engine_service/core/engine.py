"""The engine facade: workflows, executions and the runners that drive them.

Transport calls these methods; each execution that is not finished has one
`ExecutionRunner` task in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from engine_service.core import json_schemas
from engine_service.core.actions import ActionContext, ActionError, ActionRegistry, builtin_actions
from engine_service.core.attempt import MAX_OUTPUT_BYTES
from engine_service.core.bus import EventBus
from engine_service.core.clock import Clock, SystemClock
from engine_service.core.commands import CommandDesk, CommandKind
from engine_service.core.definitions import DefinitionLimits, parse_definition
from engine_service.core.errors import (
    ConcurrentModification,
    IllegalTransition,
    InvalidArgument,
    LeaseLost,
    NotFound,
    Problem,
    StorageError,
)
from engine_service.core.leases import HeldLeases
from engine_service.core.model import WorkflowDefinition
from engine_service.core.runner import ExecutionRunner
from engine_service.core.state import (
    EventKind,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    StepState,
    apply,
    blank,
    replay,
)
from engine_service.core.store import (
    MAX_PAGE_SIZE,
    ExecutionQuery,
    ExecutionStore,
    Lease,
    Page,
    WorkflowQuery,
)

log = logging.getLogger(__name__)

Listener = Callable[[ExecutionState, Sequence[ExecutionEvent]], None]
SUCCESSFUL = frozenset({ExecutionStatus.COMPLETED, ExecutionStatus.COMPLETED_WITH_ERRORS})
_UNFINISHED = frozenset(s for s in ExecutionStatus if not s.is_terminal)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    # Steps of one execution running at once when its definition says 0; 0 is no limit.
    max_steps_per_execution: int = 0
    # Steps running at once across every execution of this engine.
    max_concurrent_steps: int = 256
    # How deep sub-workflows may nest.
    max_workflow_depth: int = 5
    definition_limits: DefinitionLimits = field(default_factory=DefinitionLimits)
    # Other processes share the store (Postgres): a command for an execution one of them
    # drives is stored for it to apply (see `core.commands`) instead of being refused.
    commands_across_processes: bool = False
    # How long such a command waits for the driving process to apply it.
    command_timeout: float = 60.0
    # Attempts of one step the engine may lose by stopping mid-attempt before the step
    # fails for good (a step that keeps killing the engine must not loop for ever).
    max_lost_attempts: int = 3
    # Largest output of one attempt, in bytes of JSON; a larger one fails the step.
    max_output_bytes: int = MAX_OUTPUT_BYTES


@dataclass(frozen=True, slots=True)
class ParentLink:
    execution_id: str
    step_id: str
    depth: int


class EnvironmentSecrets(Mapping[str, str]):
    """Secrets from `STEPSTREAM_SECRET_<NAME>` environment variables, read when used."""

    prefix = "STEPSTREAM_SECRET_"

    def __getitem__(self, name: str) -> str:
        return os.environ[self.prefix + name]

    def __iter__(self) -> Iterator[str]:
        return (k[len(self.prefix) :] for k in os.environ if k.startswith(self.prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Engine:
    def __init__(
        self,
        store: ExecutionStore,
        *,
        actions: ActionRegistry | None = None,
        config: EngineConfig | None = None,
        clock: Clock | None = None,
        secrets: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self.store = store
        self.config = config or EngineConfig()
        self.actions = actions or builtin_actions()
        # A step waiting for its child holds no engine-wide slot (the child needs them).
        self.actions.register("workflow", self._run_child_workflow, holds_slot=False)
        self.clock: Clock = clock or SystemClock()
        self.secrets: Mapping[str, str] = secrets if secrets is not None else EnvironmentSecrets()
        self.rng = rng or random.Random()
        self.bus = bus or EventBus()
        self.step_slots = asyncio.Semaphore(self.config.max_concurrent_steps)
        # Set by a LeaseKeeper: new executions are then leased to this process from birth.
        self.lease_owner = ""
        self.lease_seconds = 30.0
        # The epoch and expiry of each lease this process holds (see `core.leases`).
        self.leases = HeldLeases(self.clock)
        self._runners: dict[str, ExecutionRunner] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._commands = CommandDesk(store, self.clock, timeout=self.config.command_timeout)
        # Runs whose runner stopped without ending them (a failed write, an unexpected
        # error): driven again from their last commit at the next lease round.
        self._stopped: set[str] = set()
        self._listeners: list[Listener] = []
        # Background work of the engine itself (driving stopped runs again, applying
        # commands the store told of), cancelled by `stop`.
        self._chores: set[asyncio.Task[Any]] = set()
        self._redriving: asyncio.Task[None] | None = None
        store.on_command(self._command_stored)

    # ---- lifecycle -----------------------------------------------------------------

    async def start(self) -> int:
        """Continue every unfinished execution in the store; returns how many."""
        unfinished = await self.store.unfinished_executions()
        for state in unfinished:
            definition = await self.store.get_workflow(
                state.tenant, state.workflow_id, state.workflow_version
            )
            self._spawn(definition, state)
        return len(unfinished)

    async def stop(self) -> None:
        """Stop driving executions without changing their committed state."""
        tasks = [*self._tasks.values(), *self._chores]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._commands.stop()

    @property
    def driven_executions(self) -> list[str]:
        """Ids of the executions this process drives now."""
        return list(self._runners)

    async def adopt(self, state: ExecutionState) -> bool:
        """Drive `state` (claimed by this process) unless already driving it."""
        if state.id in self._runners or state.status.is_terminal:
            return False
        definition = await self.store.get_workflow(
            state.tenant, state.workflow_id, state.workflow_version
        )
        self._spawn(definition, state)
        return True

    async def resume_stopped(self, lease: Lease | None) -> int:
        """Drive again the runs a failed write or an unexpected error stopped, whose
        leases this process still holds (all of them without leases); raises (and keeps
        the rest for the next try) while the store fails."""
        stopped = sorted(self._stopped)
        if not stopped:
            return 0
        if lease is None:
            kept = set(stopped)
        else:
            kept = await self.store.renew_leases(lease, self.leases.epochs(stopped))
            self.leases.renewed(kept, lease.expires_at)
        resumed = 0
        for execution_id in stopped:
            if execution_id in kept:
                resumed += await self.adopt(await self.store.get_execution(execution_id))
            self._stopped.discard(execution_id)
        if resumed:
            await self.apply_commands()
        return resumed

    def _redrive_soon(self) -> None:
        """Drive the stopped runs again as soon as the store answers, not only at the
        next lease round: a command waiting for one of them is applied without delay."""
        if self._redriving is None or self._redriving.done():
            self._redriving = self._chore(self._redrive())

    async def _redrive(self) -> None:
        delay = 0.05
        while self._stopped:
            await asyncio.sleep(delay)
            try:
                await self.resume_stopped(self._new_lease())
            except StorageError:
                delay = min(2 * delay, 5.0)

    def _command_stored(self, execution_id: str) -> None:
        if execution_id in self._runners:
            self._chore(self.apply_commands())

    def _chore(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)
        return task

    async def abandon(self, execution_id: str) -> None:
        """Stop driving an execution, committing nothing: another process took it over."""
        task = self._tasks.get(execution_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def publish_remote(self, execution_id: str, first: int, last: int) -> None:
        """Events another process committed: hand them to this process's watchers."""
        if execution_id in self._runners or not self.bus.is_watched(execution_id):
            return
        events = await self.store.read_events(execution_id, first - 1, limit=last - first + 1)
        self.bus.publish(events)
        if any(e.execution_status is not None and e.execution_status.is_terminal for e in events):
            self.bus.close_execution(execution_id)

    def _new_lease(self) -> Lease | None:
        if not self.lease_owner:
            return None
        expires = self.clock.now() + timedelta(seconds=self.lease_seconds)
        return Lease(self.lease_owner, expires)

    def add_listener(self, listener: Listener) -> None:
        """Called after every commit with the new state and its events."""
        self._listeners.append(listener)

    @property
    def active_executions(self) -> int:
        return len(self._runners)

    # ---- workflows -----------------------------------------------------------------

    def parse(self, data: Mapping[str, Any], tenant: str) -> WorkflowDefinition:
        return parse_definition({**data, "tenant": tenant}, limits=self.config.definition_limits)

    async def register_workflow(self, data: Mapping[str, Any], tenant: str) -> WorkflowDefinition:
        # Validation is CPU work on untrusted input, seconds for the largest definitions:
        # on a worker thread, so the event loop keeps serving meanwhile.
        definition = await asyncio.to_thread(self.parse, data, tenant)
        return await self.store.add_workflow(definition)

    async def get_workflow(
        self, tenant: str, workflow_id: str, version: int = 0
    ) -> WorkflowDefinition:
        return await self.store.get_workflow(tenant, workflow_id, version)

    async def list_workflows(self, query: WorkflowQuery) -> Page[WorkflowDefinition]:
        return await self.store.list_workflows(query)

    # ---- executions ----------------------------------------------------------------

    async def start_execution(
        self,
        tenant: str,
        workflow_id: str,
        *,
        version: int = 0,
        inputs: Mapping[str, Any] | None = None,
        idempotency_key: str = "",
        parent: ParentLink | None = None,
        schedule_id: str = "",
    ) -> tuple[ExecutionState, bool]:
        """Start a run; with a known idempotency key, the first run and False."""
        definition = await self.store.get_workflow(tenant, workflow_id, version)
        inputs = dict(inputs or {})
        _check_inputs(inputs, definition.input_schema)
        state, event = self._new_execution(definition, inputs, idempotency_key, parent, schedule_id)
        lease = self._new_lease()
        stored, created = await self.store.create_execution(state, [event], lease=lease)
        if created:
            self.leases.hold(stored.id, lease)  # before the runner, which takes its epoch
            self.committed(stored, [event])
            self._spawn(definition, stored, recovered=False)
        return stored, created

    def _new_execution(
        self,
        definition: WorkflowDefinition,
        inputs: dict[str, Any],
        idempotency_key: str,
        parent: ParentLink | None,
        schedule_id: str,
    ) -> tuple[ExecutionState, ExecutionEvent]:
        now = self.clock.now()
        state = ExecutionState(
            id=str(uuid.uuid4()),
            tenant=definition.tenant,
            workflow_id=definition.id,
            workflow_version=definition.version,
            created_at=now,
            steps={step.id: StepState(step.id) for step in definition.steps},
            idempotency_key=idempotency_key,
            parent_execution_id=parent.execution_id if parent else "",
            parent_step_id=parent.step_id if parent else "",
            depth=parent.depth if parent else 0,
            schedule_id=schedule_id,
        )
        event = ExecutionEvent(
            event_id=str(uuid.uuid4()),
            execution_id=state.id,
            sequence=1,
            timestamp=now,
            kind=EventKind.EXECUTION_STATUS_CHANGED,
            tenant=state.tenant,
            workflow_id=state.workflow_id,
            workflow_version=state.workflow_version,
            execution_status=ExecutionStatus.PENDING,
            inputs=inputs,
            parent_execution_id=state.parent_execution_id,
            parent_step_id=state.parent_step_id,
        )
        return apply(state, event), event

    async def get_execution(
        self, execution_id: str, *, tenant: str | None = None, at_sequence: int = 0
    ) -> ExecutionState:
        state = await self._visible(execution_id, tenant)
        if at_sequence <= 0:
            return state
        if at_sequence > state.last_sequence:
            problem = Problem(
                "at_sequence", f"the execution has {state.last_sequence} events, not {at_sequence}"
            )
            raise InvalidArgument(problems=[problem])
        events = await self.store.read_events(execution_id, 0, limit=at_sequence)
        return replay(blank(state), events)

    async def list_executions(self, query: ExecutionQuery) -> Page[ExecutionState]:
        return await self.store.list_executions(query)

    async def read_events(
        self, execution_id: str, after_sequence: int = 0, limit: int = 0
    ) -> list[ExecutionEvent]:
        return await self.store.read_events(execution_id, after_sequence, limit)

    async def cancel_execution(
        self, execution_id: str, *, tenant: str | None = None, reason: str = ""
    ) -> ExecutionState:
        """Cancel and wait for the run to end. The cancel is stored before it is applied,
        so once accepted it survives the runner's or the process's death (whoever drives
        the run next applies it), even when this process drives the run."""
        await self._runner(execution_id, tenant, ExecutionStatus.CANCELLED)
        await self._send_command(execution_id, CommandKind.CANCEL, reason=reason)
        return await self._wait_until_ended(execution_id)

    async def cancel_children(self, parent_id: str, reason: str) -> None:
        """Tell every unfinished child of `parent_id` to cancel, wherever it is driven:
        a stored command each (applied by its driving process, now or once one takes it
        over), so the cascade reaches every descendant and survives a stop."""
        query = ExecutionQuery(
            parent_execution_id=parent_id,
            statuses=_UNFINISHED,
            page_size=MAX_PAGE_SIZE,
        )
        while True:
            page = await self.store.list_executions(query)
            for child in page.items:
                await self.cancel_descendant(child.id, reason)
            if not page.next_page_token:
                return
            query = replace(query, page_token=page.next_page_token)

    async def cancel_descendant(self, execution_id: str, reason: str) -> None:
        """Store a cancel for a child execution and apply it here if this process drives
        it; returns without waiting for it to end. Nothing for one that already ended."""
        if (await self.store.get_execution(execution_id)).status.is_terminal:
            return
        command = self._commands.command(execution_id, CommandKind.CANCEL, reason=reason)
        await self.store.add_command(command)
        runner = self._runners.get(execution_id)
        if runner is not None:
            await self._commands.deliver(runner, command)

    async def pause_execution(
        self, execution_id: str, *, tenant: str | None = None
    ) -> ExecutionState:
        runner = await self._runner(execution_id, tenant, ExecutionStatus.PAUSED)
        if runner is not None:
            with contextlib.suppress(LeaseLost, ConcurrentModification):
                return await runner.pause()
            # Claimed by another process meanwhile: the command is stored for it.
        await self._send_command(execution_id, CommandKind.PAUSE)
        return await self.store.get_execution(execution_id)

    async def resume_execution(
        self,
        execution_id: str,
        *,
        tenant: str | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> ExecutionState:
        runner = await self._runner(execution_id, tenant, ExecutionStatus.RUNNING)
        if runner is not None:
            with contextlib.suppress(LeaseLost, ConcurrentModification):
                return await runner.resume(dict(inputs or {}))
            # Claimed by another process meanwhile: the command is stored for it.
        await self._send_command(execution_id, CommandKind.RESUME, inputs=dict(inputs or {}))
        return await self.store.get_execution(execution_id)

    async def _send_command(
        self,
        execution_id: str,
        kind: CommandKind,
        *,
        reason: str = "",
        inputs: Mapping[str, Any] | None = None,
    ) -> None:
        command = self._commands.command(execution_id, kind, reason=reason, inputs=inputs)
        await self.store.add_command(command)
        runner = self._runners.get(execution_id)
        if runner is not None:
            await self._commands.deliver(runner, command)
        else:
            await self.apply_commands()  # this process may have taken the execution over
        await self._commands.outcome(command)

    async def apply_commands(self) -> int:
        """Apply the stored commands for executions this process drives; how many."""
        return await self._commands.apply(self._runners)

    async def wait_for(self, execution_id: str) -> ExecutionState:
        """The execution's committed state once it has ended (or stopped being driven here).

        Read from the store: a runner that stopped on a failed write may hold state that
        never became durable.
        """
        runner = self._runners.get(execution_id)
        if runner is not None:
            await runner.finished.wait()
        return await self.store.get_execution(execution_id)

    # ---- called by runners -------------------------------------------------------

    def committed(self, state: ExecutionState, events: Sequence[ExecutionEvent]) -> None:
        self.bus.publish(events)
        for listener in self._listeners:
            listener(state, events)
        if state.status.is_terminal:
            self.bus.close_execution(state.id)

    # ---- internals -------------------------------------------------------------------

    def _spawn(
        self, definition: WorkflowDefinition, state: ExecutionState, *, recovered: bool = True
    ) -> None:
        """Drive `state`; a `recovered` run (not new) first takes the commands stored for
        it, so a cancel accepted before a stop is honoured before anything else runs."""
        state = _with_all_steps(state, definition)
        runner = ExecutionRunner(self, definition, state)
        self._runners[state.id] = runner
        task = asyncio.create_task(self._drive(runner, recovered), name=f"execution:{state.id}")
        self._tasks[state.id] = task
        # A done callback, not a `finally`: a task cancelled before it ever ran (stop()
        # right after a start) never executes its body, yet must be forgotten too.
        task.add_done_callback(lambda _task: self._forget(runner, task))

    def _forget(self, runner: ExecutionRunner, task: asyncio.Task[None]) -> None:
        execution_id = runner.state.id
        if self._runners.get(execution_id) is runner:
            del self._runners[execution_id]
        if self._tasks.get(execution_id) is task:
            del self._tasks[execution_id]
        runner.finished.set()

    async def _drive(self, runner: ExecutionRunner, recovered: bool) -> None:
        execution_id = runner.state.id
        try:
            if recovered:
                await self._commands.apply({execution_id: runner})
            await runner.run()
        except (LeaseLost, ConcurrentModification) as exc:
            log.warning("stopped driving execution %s: %s", execution_id, exc)
        except StorageError as exc:
            # Driven again from its last committed event once the store answers (see
            # `_redrive`), or by another process once its lease expires.
            self._stopped.add(execution_id)
            self._redrive_soon()
            log.warning(
                "stopped driving execution %s until the database answers: %s", execution_id, exc
            )
        except Exception:
            # Driven again from its last commit at the next lease round, with the commands
            # it had accepted (they are stored), rather than left running undriven.
            self._stopped.add(execution_id)
            log.exception("runner of execution %s stopped unexpectedly", execution_id)

    async def _visible(self, execution_id: str, tenant: str | None) -> ExecutionState:
        state = await self.store.get_execution(execution_id)
        if tenant is not None and state.tenant != tenant:
            raise NotFound(kind="execution", key=execution_id)
        return state

    async def _runner(
        self, execution_id: str, tenant: str | None, requested: ExecutionStatus
    ) -> ExecutionRunner | None:
        """The local runner of the execution; None when another process may drive it."""
        state = await self._visible(execution_id, tenant)
        runner = self._runners.get(execution_id)
        if state.status.is_terminal or (
            runner is None and not self.config.commands_across_processes
        ):
            raise IllegalTransition(
                subject=f"execution {execution_id}", current=state.status, requested=requested
            )
        return runner

    async def _run_child_workflow(
        self, parameters: Mapping[str, Any], context: ActionContext
    ) -> Any:
        workflow_id = parameters.get("workflow_id")
        if not isinstance(workflow_id, str) or not workflow_id:
            raise ActionError(
                "`workflow_id` is required", error_type="InvalidParameters", retryable=False
            )
        parent = await self.store.get_execution(context.execution_id)
        if parent.depth + 1 > self.config.max_workflow_depth:
            raise ActionError(
                f"sub-workflows nest deeper than {self.config.max_workflow_depth}",
                error_type="SubWorkflowDepthExceeded",
                retryable=False,
            )
        adopted = None
        if context.lost_attempt_started is not None:
            adopted = await self._child_of_lost_attempt(context, context.lost_attempt_started)
        child = adopted or await self._start_child(
            parameters, context, workflow_id, parent.depth + 1
        )
        context.child_started(child.id)
        # Cancelled here (the runner stopped, or the parent ends), the child runs on: the
        # runner cancels children only for an ending it decided (see `cancel_children`).
        final = await self._wait_until_ended(child.id)
        if final.status not in SUCCESSFUL:
            raise ActionError(
                f"child execution {child.id} ended {final.status}",
                error_type="ChildWorkflowFailed",
            )
        return {"execution_id": child.id, "status": final.status.value, "outputs": final.outputs}

    async def _child_of_lost_attempt(
        self, context: ActionContext, lost_started: datetime
    ) -> ExecutionState | None:
        """The child the lost attempt of this step started, if any: the newest child of
        the step still running or ended since that attempt started."""
        query = ExecutionQuery(
            tenant=context.tenant, parent_execution_id=context.execution_id, page_size=1000
        )
        children = [
            child
            for child in (await self.store.list_executions(query)).items
            if child.parent_step_id == context.step_id
            and (child.finished_at is None or child.finished_at >= lost_started)
        ]
        return max(children, key=lambda child: child.created_at, default=None)

    async def _wait_until_ended(self, execution_id: str) -> ExecutionState:
        """The execution's committed state once it has ended. One no runner here drives
        (taken over after a restart a moment later, or driven by another replica, or
        stopped by a failed write until the next lease round) is read again until then."""
        delay = 0.05
        while True:
            runner = self._runners.get(execution_id)
            if runner is not None:
                await runner.finished.wait()
            state = await self.store.get_execution(execution_id)
            if state.status.is_terminal:
                return state
            await asyncio.sleep(delay)
            delay = min(2 * delay, 1.0)

    async def _start_child(
        self, parameters: Mapping[str, Any], context: ActionContext, workflow_id: str, depth: int
    ) -> ExecutionState:
        inputs = parameters.get("inputs") or {}
        try:
            child, _ = await self.start_execution(
                context.tenant,
                workflow_id,
                version=int(parameters.get("version") or 0),
                inputs=inputs if isinstance(inputs, Mapping) else {"value": inputs},
                # One child per attempt and per handler: after a restart the same key
                # finds the child again instead of starting a second one.
                idempotency_key=_child_key(context),
                parent=ParentLink(context.execution_id, context.step_id, depth),
            )
        except NotFound as exc:
            raise ActionError(str(exc), error_type="WorkflowNotFound", retryable=False) from exc
        except InvalidArgument as exc:
            raise ActionError(str(exc), error_type="InvalidInputs", retryable=False) from exc
        return child


def _child_key(context: ActionContext) -> str:
    run = context.handler or str(context.attempt)
    return f"{context.execution_id}/{context.step_id}/{run}"


def _with_all_steps(state: ExecutionState, definition: WorkflowDefinition) -> ExecutionState:
    missing = {s.id: StepState(s.id) for s in definition.steps if s.id not in state.steps}
    return replace(state, steps={**missing, **state.steps}) if missing else state


def _check_inputs(inputs: Mapping[str, Any], schema: Mapping[str, Any] | None) -> None:
    if not schema:
        return
    problems = [
        Problem(".".join(["inputs", *(str(p) for p in error.absolute_path)]), error.message)
        for error in json_schemas.validation_errors(dict(inputs), schema)
    ]
    if problems:
        raise InvalidArgument(problems=problems)
