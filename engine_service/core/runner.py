"""Drives one execution: decides which steps start, runs their attempts, ends the run.

Every state change goes through `_commit`, which numbers the events, checks them against
the transition tables (via `state.apply`), stores them with the resulting state in one
store call, then publishes them. Commits of one execution are serialized by a lock, so
sequences are gap-free and decisions always see the committed state.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from engine_service.core.actions import ActionContext
from engine_service.core.attempt import ATTEMPT_TIMEOUT_ERROR, invoke_action
from engine_service.core.errors import IllegalTransition
from engine_service.core.execution_events import ExecutionEvents
from engine_service.core.model import FailurePolicy, StepDefinition, WorkflowDefinition
from engine_service.core.retry import backoff_delay
from engine_service.core.state import (
    FAILED_STEP_STATUSES,
    LOST_ATTEMPT_ERROR,
    EventKind,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    Failure,
    StepState,
    StepStatus,
    apply,
    evolve,
)
from engine_service.core.step_decisions import (
    AttemptOutcome,
    RunStep,
    SettleStep,
    StepDecisions,
    missing_input_failure,
)

if TYPE_CHECKING:
    from engine_service.core.engine import Engine


ES = ExecutionStatus
SS = StepStatus
# The statuses a step can be started or settled from by `_start_ready_steps`.
_OPEN_STATUSES = frozenset({SS.PENDING, SS.PAUSED})
# The handlers that run after a step's attempts, as actions and child executions name them.
FALLBACK = "fallback"
COMPENSATION = "compensation"


class ExecutionRunner:
    def __init__(
        self, engine: Engine, definition: WorkflowDefinition, state: ExecutionState
    ) -> None:
        self._engine = engine
        self._definition = definition
        self._state = state
        self._events = ExecutionEvents(definition, engine.clock)
        self._decisions = StepDecisions(definition, engine.secrets)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._open_steps = list(definition.steps)
        # The child execution each step's current attempt or handler started (the
        # `workflow` action), by (step id, handler; "" for an attempt).
        self._children: dict[tuple[str, str], str] = {}
        self._wakeup = asyncio.Event()
        self._running_gate = asyncio.Event()
        self._lock = asyncio.Lock()
        self._cancel_reason: str | None = None
        self._failure: tuple[str, Failure] | None = None
        # The terminal status being committed: from then on no command changes the outcome.
        self._ending: ExecutionStatus | None = None
        # An unexpected error in a step task: the runner stops, as if the process had died.
        self._crash: BaseException | None = None
        self.finished = asyncio.Event()
        self._last_write: asyncio.Future[None] | None = None
        # The epoch of this process's lease on the run: every write carries it (fencing).
        self._epoch = engine.leases.epoch(state.id)
        if state.status is not ES.PAUSED:
            self._running_gate.set()
        # A fatal failure already committed decides the ending from the first moment, so
        # a command arriving before recovery has run is refused as it was before the stop.
        for step in definition.steps:
            if self._failed_for_good(step):
                self._after_final_failure(step.id)

    @property
    def state(self) -> ExecutionState:
        return self._state

    # ---- commands (called by the engine) -------------------------------------------

    def request_cancel(self, reason: str) -> None:
        """The run will end CANCELLED; IllegalTransition once it is ending otherwise.

        Accepting a cancel and deciding another terminal status never interleave (both
        happen without awaiting), so an accepted cancel always ends CANCELLED.
        """
        if self._ending is not None and self._ending is not ES.CANCELLED:
            raise self._refusal(ES.CANCELLED)
        if self._cancel_reason is None:
            self._cancel_reason = reason or "cancelled"
        self._wake()

    async def pause(self) -> ExecutionState:
        async with self._lock:
            if self._state.status is ES.RUNNING and not self._closing:
                self._running_gate.clear()
                await self._commit_locked([self._events.execution_event(self._state, ES.PAUSED)])
                return self._state
        raise self._refusal(ES.PAUSED)

    async def resume(self, inputs: Mapping[str, Any]) -> ExecutionState:
        async with self._lock:
            if self._state.status is ES.PAUSED and not self._closing:
                events = [
                    self._events.execution_event(self._state, ES.RUNNING, inputs=dict(inputs))
                ]
                events += [
                    self._events.step_event(self._state, step_id, SS.PENDING)
                    for step_id, step in self._state.steps.items()
                    if step.status is SS.PAUSED
                ]
                write = self._stage(events)
                # Before awaiting the write: a caller cancelled meanwhile must not leave
                # the run RUNNING with nothing started. What starts now is written after
                # the resume, and a failed write stops the run (see `_commit_pipelined`).
                self._running_gate.set()
                self._wake()
                await _durable(write)
                return self._state
        raise self._refusal(ES.RUNNING)

    def _refusal(self, requested: ExecutionStatus) -> IllegalTransition:
        current: str = self._ending or self._state.status
        if self._cancel_reason is not None:
            current = "CANCELLING"
        return IllegalTransition(
            subject=f"execution {self._state.id}", current=current, requested=requested
        )

    @property
    def _closing(self) -> bool:
        """Cancel was requested or a terminal status decided: commands are refused."""
        return self._cancel_reason is not None or self._ending is not None

    @property
    def _stopping(self) -> bool:
        """The run is about to end: no new attempt may start."""
        return self._closing or self._failure is not None or self._crash is not None

    # ---- the main loop ---------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            await self._cancel_tasks()
            self.finished.set()

    async def _run(self) -> None:
        if self._state.status is ES.PENDING:
            await self._commit_pipelined([self._events.execution_event(self._state, ES.RUNNING)])
        deadline = self._deadline()
        if deadline is not None and deadline <= asyncio.get_running_loop().time():
            # Timed out while no process drove it: nothing more may start.
            await self._finish(ES.TIMED_OUT, Failure("WorkflowTimeout", "workflow timed out"))
            return
        if not self._stopping:  # a cancel or a fatal failure already decided the ending
            await self._recover_steps()
        while not self._state.status.is_terminal:
            if self._crash is not None:
                raise self._crash
            if self._cancel_reason is not None:
                await self._finish(ES.CANCELLED, None)
                return
            if self._failure is not None:
                await self._finish_failed(*self._failure)
                return
            if await self._advance():
                return
            if not await self._wait_for_change(deadline):
                await self._finish(ES.TIMED_OUT, Failure("WorkflowTimeout", "workflow timed out"))
                return

    async def _wait_for_change(self, deadline: float | None) -> bool:
        """Waits for a wake-up; False when the workflow deadline passed first."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._wakeup.wait()
        except TimeoutError:
            return False
        self._wakeup.clear()
        return True

    def _deadline(self) -> float | None:
        if self._definition.timeout is None:
            return None
        started = self._state.started_at or self._engine.clock.now()
        elapsed = (self._engine.clock.now() - started).total_seconds()
        return asyncio.get_running_loop().time() + self._definition.timeout - elapsed

    def _wake(self) -> None:
        self._wakeup.set()

    # ---- deciding what starts ------------------------------------------------------

    async def _advance(self) -> bool:
        """Start or settle every ready step; True once the run has completed.

        Decisions and their commits happen under the commit lock, so a pause or resume
        cannot slip between deciding and committing.
        """
        async with self._lock:
            if self._state.status is not ES.RUNNING or self._stopping:
                return False
            writes = self._start_ready_steps()
            completion = self._try_complete()
        for write in writes:
            await _durable(write)
        if completion is None:
            return False
        await _durable(completion)
        return True

    def _start_ready_steps(self) -> list[asyncio.Future[None]]:
        """Launch or settle every ready step; the writes of what was settled."""
        writes: list[asyncio.Future[None]] = []
        waiting: list[tuple[StepDefinition, SettleStep]] = []
        # A step that left PENDING and PAUSED never comes back to them: stop looking at it.
        steps = self._state.steps
        self._open_steps = [s for s in self._open_steps if steps[s.id].status in _OPEN_STATUSES]
        for step in self._open_steps:
            if self._failure is not None:
                return writes
            if not self._is_ready(step):
                continue
            decision = self._decisions.decide(self._state, step)
            if isinstance(decision, RunStep):
                # Once a step waits for inputs the run pauses: nothing new starts.
                if not waiting and self._has_capacity():
                    decided = _Decided(decision, self._state.inputs)
                    self._launch(step, self._drive_step(step, decided))
            elif decision.status is SS.PAUSED:
                waiting.append((step, decision))
            else:
                writes.append(self._settle_without_running(step, decision))
        if waiting:
            writes.append(self._pause_for_inputs(waiting))
        return writes

    def _is_ready(self, step: StepDefinition) -> bool:
        current = self._state.steps[step.id]
        if current.status is not SS.PENDING or step.id in self._tasks:
            return False
        # A dependency whose task is alive is still finishing (e.g. running its fallback).
        return all(
            self._state.steps[d].is_settled and d not in self._tasks for d in step.depends_on
        )

    def _has_capacity(self) -> bool:
        limit = self._definition.max_concurrent_steps or self._engine.config.max_steps_per_execution
        return limit <= 0 or len(self._tasks) < limit

    def _settle_without_running(
        self, step: StepDefinition, decision: SettleStep
    ) -> asyncio.Future[None]:
        """SKIPPED or FAILED before running; the caller holds the commit lock."""
        write = self._stage(
            [self._events.step_event(self._state, step.id, decision.status, error=decision.error)]
        )
        if decision.status is SS.FAILED:
            self._after_final_failure(step.id)
        return write

    def _pause_for_inputs(
        self, waiting: Sequence[tuple[StepDefinition, SettleStep]]
    ) -> asyncio.Future[None]:
        """Pause the steps and the run; the run's event names every missing input."""
        events = [
            self._events.step_event(
                self._state, step.id, SS.PAUSED, missing=decision.missing_inputs
            )
            for step, decision in waiting
        ]
        missing = {name for _, decision in waiting for name in decision.missing_inputs}
        missing.update(self._state.missing_inputs)
        self._running_gate.clear()
        events.append(
            self._events.execution_event(self._state, ES.PAUSED, missing=tuple(sorted(missing)))
        )
        return self._stage(events)

    # ---- running a step --------------------------------------------------------------

    def _launch(self, step: StepDefinition, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` (the step's attempts, or its fallback) as the step's one task."""
        task = asyncio.create_task(work, name=f"step:{step.id}")
        self._tasks[step.id] = task
        task.add_done_callback(functools.partial(self._step_task_done, step.id))

    def _step_task_done(self, step_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(step_id, None)
        if not task.cancelled() and task.exception() is not None and self._crash is None:
            self._crash = task.exception()
        self._wake()

    async def _drive_step(self, step: StepDefinition, decided: _Decided | None = None) -> None:
        """The step's attempts until one completes or the budget is used up. `decided`
        holds parameters resolved when the step was decided; None resolves them at start."""
        current = self._state.steps[step.id]
        attempt = current.attempt
        decided = decided or _Decided(None, self._state.inputs)
        if current.status is SS.RETRYING:
            await self._sleep_until_retry(current)
        while True:
            attempt += 1
            outcome = await self._attempt(step, decided, attempt)
            if outcome is None or outcome.status is SS.COMPLETED:
                return
            # Attempts the engine lost by stopping are not the step's: they use no budget.
            counted = attempt - self._state.steps[step.id].lost_attempts
            retry = outcome.retryable and counted < step.retry.max_attempts
            if not retry:
                break
            delay = backoff_delay(step.retry, attempt, self._engine.rng)
            await self._commit_retrying(step, attempt, outcome, delay)
            await self._cancel_timed_out_child(step.id)
            await asyncio.sleep(delay)
        await self._finish_attempts(step, attempt, outcome)

    async def _attempt(
        self, step: StepDefinition, decided: _Decided, attempt: int
    ) -> AttemptOutcome | None:
        """Run one attempt once the run lets steps start; None if the run is ending.

        While the run is paused the attempt waits without holding an engine slot.
        """
        while True:
            await self._running_gate.wait()
            await self._engine.leases.until_fresh(self._state.id)
            async with self._slot(step.action):
                start = await self._start_attempt(step, decided, attempt)
                if start is not None:
                    outcome = await self._run_attempt(step, start, attempt)
                    if outcome.status is SS.COMPLETED:
                        await self._commit_pipelined([self._finished_event(step, attempt, outcome)])
                    return outcome
            if self._stopping:
                return None

    async def _run_attempt(
        self, step: StepDefinition, start: _Start, attempt: int
    ) -> AttemptOutcome:
        run = start.run
        if isinstance(run, SettleStep):  # the inputs changed since the step was decided
            return AttemptOutcome(SS.FAILED, error=run.error or missing_input_failure(run))
        context = self._action_context(step, attempt, "", start.lost_attempt_started)
        actions = self._engine.actions
        return await invoke_action(actions, step.action, step, run, context, step.output_schema)

    async def _cancel_timed_out_child(self, step_id: str) -> None:
        """A timed-out attempt's child must not run on beside the next attempt. Called
        once the TIMED_OUT is durable (and again on recovery), so the child is never
        cancelled for a cause the history does not show."""
        step = self._state.steps[step_id]
        timed_out = step.error is not None and step.error.type == ATTEMPT_TIMEOUT_ERROR
        if timed_out and step.child_execution_id:
            await self._engine.cancel_descendant(
                step.child_execution_id, "the parent step timed out"
            )

    def _slot(self, action: str) -> contextlib.AbstractAsyncContextManager[Any]:
        """An engine-wide step slot, unless the action only waits for the engine itself."""
        if self._engine.actions.holds_slot(action):
            return self._engine.step_slots
        return contextlib.nullcontext()

    async def _commit_pipelined(self, events: Sequence[ExecutionEvent]) -> None:
        """Stage `events` without waiting for them to be durable, so what follows from
        them (the steps that were waiting for a COMPLETED, the first steps after the
        run's RUNNING) is dispatched at once instead of one commit later. That is safe:
        one execution's writes reach the store in staging order, so a dependent's RUNNING
        (which its action waits for) is never durable before these events, and a failed
        write stops the run (see `_written`). While a command holds the lock the events
        queue behind its commit, as every other commit does."""
        if self._lock.locked():
            await self._commit(events)
        else:
            self._stage(events)

    async def _start_attempt(
        self, step: StepDefinition, decided: _Decided, attempt: int
    ) -> _Start | None:
        """Commit RUNNING if the run is RUNNING and not ending, atomically with the check;
        the parameters as the run's inputs are now (a resume may have changed them since
        the step was decided), or None if the attempt may not start."""
        async with self._lock:
            if self._state.status is not ES.RUNNING or self._stopping:
                return None
            if not self._engine.leases.fresh(self._state.id):
                return None  # the lease is about to expire: wait for a renewal
            run: RunStep | SettleStep | None = decided.run
            if run is None or decided.inputs is not self._state.inputs:
                run = self._decisions.resolve(self._state, step.parameters, step.input_schema)
            lost_started = _lost_attempt_started(self._state.steps[step.id])
            write = self._stage(
                [self._events.step_event(self._state, step.id, SS.RUNNING, attempt=attempt)]
            )
        await _durable(write)  # the action starts only once RUNNING is durable
        return _Start(run, lost_started)

    async def _invoke(
        self,
        step: StepDefinition,
        action_name: str,
        run: RunStep,
        attempt: int,
        output_schema: Mapping[str, Any] | None,
        handler: str = "",
    ) -> AttemptOutcome:
        context = self._action_context(step, attempt, handler)
        actions = self._engine.actions
        limit = self._engine.config.max_output_bytes
        return await invoke_action(
            actions, action_name, step, run, context, output_schema, max_output_bytes=limit
        )

    def _action_context(
        self,
        step: StepDefinition,
        attempt: int,
        handler: str,
        lost_attempt_started: datetime | None = None,
    ) -> ActionContext:
        return ActionContext(
            execution_id=self._state.id,
            step_id=step.id,
            attempt=attempt,
            tenant=self._state.tenant,
            workflow_id=self._state.workflow_id,
            activation=self._decisions.lazy_activation(
                self._state, step.id, with_self=handler == COMPENSATION
            ),
            lost_attempt_started=lost_attempt_started,
            child_started=functools.partial(self._children.__setitem__, (step.id, handler)),
            handler=handler,
        )

    async def _sleep_until_retry(self, step: StepState) -> None:
        if step.next_attempt_at is not None:
            remaining = (step.next_attempt_at - self._engine.clock.now()).total_seconds()
            await asyncio.sleep(max(0.0, remaining))

    async def _commit_retrying(
        self, step: StepDefinition, attempt: int, outcome: AttemptOutcome, delay: float
    ) -> None:
        next_at = self._engine.clock.now() + timedelta(seconds=delay)
        await self._commit(
            [
                self._finished_event(step, attempt, outcome),
                self._events.step_event(
                    self._state, step.id, SS.RETRYING, attempt=attempt, next_attempt_at=next_at
                ),
            ]
        )

    async def _finish_attempts(
        self, step: StepDefinition, attempt: int, outcome: AttemptOutcome
    ) -> None:
        async with self._lock:
            write = self._stage([self._finished_event(step, attempt, outcome)])
            if step.fallback is None:
                # In the same lock hold as the FAILED: no attempt starts after it.
                self._after_final_failure(step.id)
        await _durable(write)
        await self._cancel_timed_out_child(step.id)
        if step.fallback is not None:
            await self._run_fallback(step)

    async def _run_fallback(self, step: StepDefinition) -> None:
        assert step.fallback is not None
        decision = self._decisions.resolve(self._state, step.fallback.parameters, None)
        attempt = self._state.steps[step.id].attempt
        if isinstance(decision, SettleStep):
            outcome = AttemptOutcome(
                SS.FAILED, error=decision.error or missing_input_failure(decision)
            )
        else:
            async with self._slot(step.fallback.action):
                outcome = await self._invoke(
                    step, step.fallback.action, decision, attempt, step.output_schema, FALLBACK
                )
        status = SS.COMPLETED if outcome.status is SS.COMPLETED else SS.FAILED
        event = self._events.step_event(
            self._state,
            step.id,
            status,
            kind=EventKind.STEP_FALLBACK_FINISHED,
            attempt=attempt,
            output=outcome.output,
            error=outcome.error,
            duration=outcome.duration,
            child_execution_id=self._children.pop((step.id, FALLBACK), ""),
        )
        async with self._lock:
            write = self._stage([event])
            if status is SS.FAILED:
                self._after_final_failure(step.id)
        await _durable(write)

    def _after_final_failure(self, step_id: str) -> None:
        """A step failed for good; a fatal failure decides the run's ending (FAILED, unless
        a cancel was accepted first). Called in the lock hold that stages the failure."""
        if not self._decisions.continues(step_id) and self._failure is None:
            step = self._state.steps[step_id]
            error = step.error or Failure("StepFailed", "step failed")
            self._failure = (step_id, error)
            if self._ending is None and self._cancel_reason is None:
                self._ending = ES.FAILED
        self._wake()

    def _failed_for_good(self, step: StepDefinition) -> bool:
        """The step failed and nothing more runs for it: no fallback is left to try (one
        runs only after attempts, so a step failed before running gets none)."""
        current = self._state.steps[step.id]
        if current.status not in FAILED_STEP_STATUSES:
            return False
        return step.fallback is None or current.fallback_used or current.attempt == 0

    # ---- recovery after a restart ------------------------------------------------

    async def _recover_steps(self) -> None:
        """Continue steps that were in flight when the previous engine stopped. Their work
        runs as step tasks, as in a run that never stopped: nothing here waits for an
        action, so dispatch, commands and the workflow timeout go on meanwhile."""
        for step in self._definition.steps:
            current = self._state.steps[step.id]
            if current.status is SS.RUNNING:
                await self._recover_lost_attempt(step, current)
            elif current.status is SS.RETRYING:
                await self._cancel_timed_out_child(step.id)
                self._launch(step, self._drive_step(step))
            elif current.status in FAILED_STEP_STATUSES:
                await self._cancel_timed_out_child(step.id)
                if not self._failed_for_good(step):
                    self._launch(step, self._run_fallback(step))

    async def _recover_lost_attempt(self, step: StepDefinition, current: StepState) -> None:
        """The attempt that was running when the engine died runs again, at once.

        It counts as an attempt (the lost one stays FAILED in the history), but the
        engine's death is not the step's failure, so it never uses up the retry budget:
        the re-attempt runs even when `max_attempts` was reached. A step that keeps
        taking the engine down must not loop for ever: past `max_lost_attempts` lost
        attempts it fails for good with the lost attempt's error.
        """
        lost = AttemptOutcome(
            SS.FAILED, error=Failure(LOST_ATTEMPT_ERROR, "the engine stopped mid-attempt")
        )
        if current.lost_attempts >= self._engine.config.max_lost_attempts:
            self._launch(step, self._finish_attempts(step, current.attempt, lost))
            return
        await self._commit_retrying(step, current.attempt, lost, 0.0)
        self._launch(step, self._drive_step(step))

    # ---- ending the execution --------------------------------------------------------

    def _try_complete(self) -> asyncio.Future[None] | None:
        """Stage COMPLETED(_WITH_ERRORS) once every step settled; the caller holds the lock."""
        if self._tasks or self._stopping:
            return None
        if not all(s.is_settled for s in self._state.steps.values()):
            return None
        failed = any(s.status in FAILED_STEP_STATUSES for s in self._state.steps.values())
        self._ending = ES.COMPLETED_WITH_ERRORS if failed else ES.COMPLETED
        write = self._stage([self._events.execution_event(self._state, self._ending)])
        self._running_gate.set()
        return write

    async def _finish_failed(self, step_id: str, error: Failure) -> None:
        self._ending = ES.FAILED
        if self._definition.on_failure is FailurePolicy.COMPENSATE:
            # Compensation commits as it goes; a stop meanwhile is harmless, because the
            # committed fatal failure decides FAILED again on recovery (see `__init__`).
            await self._stop_steps_and_children("the parent execution failed")
            if cancelled := self._unsettled_cancelled():
                await self._commit(cancelled)
            await self._compensate()
        await self._finish(ES.FAILED, Failure(error.type, f"step {step_id}: {error.message}"))

    async def _finish(self, status: ExecutionStatus, error: Failure | None) -> None:
        """End the run FAILED, TIMED_OUT or CANCELLED; a cancel accepted before wins.

        The unsettled steps' CANCELLED and the run's ending are one commit, so a stop in
        between cannot leave settled steps that a restart would complete. Children are
        told first, durably: a stop before the commit decides the same ending again."""
        if self._cancel_reason is not None and self._ending is None:
            status, error = ES.CANCELLED, Failure("Cancelled", self._cancel_reason)
        self._ending = status
        reason = "the parent execution was cancelled"
        if status is not ES.CANCELLED:
            reason = f"the parent execution ended {status.value}"
        await self._stop_steps_and_children(reason)
        ending = self._events.execution_event(self._state, status, error=error)
        await self._commit([*self._unsettled_cancelled(), ending])
        self._running_gate.set()

    async def _stop_steps_and_children(self, reason: str) -> None:
        await self._cancel_tasks()
        # Cancelling children acts outside this run's ordered writes: only once what
        # decided the ending is durable (a failed write stops the run here instead).
        if self._last_write is not None:
            await _durable(self._last_write)
        await self._engine.cancel_children(self._state.id, reason)

    def _unsettled_cancelled(self) -> list[ExecutionEvent]:
        return [
            self._events.step_event(self._state, step_id, SS.CANCELLED, attempt=step.attempt)
            for step_id, step in self._state.steps.items()
            if not step.is_settled
        ]

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def _compensate(self) -> None:
        for step_id in reversed(self._state.completion_order):
            step = self._definition.step(step_id)
            if step.compensate is None or self._state.steps[step_id].compensated:
                continue
            decision = self._decisions.resolve(self._state, step.compensate.parameters, None)
            if isinstance(decision, SettleStep):
                outcome = AttemptOutcome(
                    SS.FAILED, error=decision.error or missing_input_failure(decision)
                )
            else:
                attempt = self._state.steps[step_id].attempt
                action = step.compensate.action
                async with self._slot(action):
                    outcome = await self._invoke(
                        step, action, decision, attempt, None, COMPENSATION
                    )
            await self._commit(
                [
                    self._events.step_event(
                        self._state,
                        step_id,
                        SS.COMPLETED if outcome.status is SS.COMPLETED else SS.FAILED,
                        kind=EventKind.STEP_COMPENSATION_FINISHED,
                        output=outcome.output,
                        error=outcome.error,
                        duration=outcome.duration,
                        child_execution_id=self._children.pop((step_id, COMPENSATION), ""),
                    )
                ]
            )

    # ---- committing ------------------------------------------------------------------

    async def _commit(self, events: Sequence[ExecutionEvent]) -> None:
        async with self._lock:
            write = self._stage(events)
        await _durable(write)

    async def _commit_locked(self, events: Sequence[ExecutionEvent]) -> None:
        """Commit while holding the lock, through to durability (the rare commands)."""
        await _durable(self._stage(events))

    def _stage(self, events: Sequence[ExecutionEvent]) -> asyncio.Future[None]:
        """Number and apply `events` now, and start writing them; the write is awaited
        apart, so one execution's commits pipeline instead of waiting for each other.

        Staging is synchronous, so whatever a caller decided under the lock and staged
        stays atomic. Writes reach the store in staging order, and the events are
        published only once durable, in order (from the write's completion callback).
        """
        numbered = []
        state = self._state
        for offset, event in enumerate(events, start=1):
            event = evolve(event, sequence=self._state.last_sequence + offset)
            state = apply(state, event)
            numbered.append(event)
        self._state = state
        append = self._engine.store.append
        # A run never leased (no lease keeper: tests, tools) writes as before, so a store
        # wrapped to inject faults keeps the two-argument `append` of the port.
        written = (
            append(state, numbered, epoch=self._epoch) if self._epoch else append(state, numbered)
        )
        write = asyncio.ensure_future(written)
        write.add_done_callback(functools.partial(self._written, state, numbered))
        self._last_write = write
        return write

    def _written(
        self,
        state: ExecutionState,
        numbered: Sequence[ExecutionEvent],
        write: asyncio.Future[None],
    ) -> None:
        if write.cancelled():
            return
        error = write.exception()
        if error is None:
            self._engine.committed(state, numbered)
        elif self._crash is None:
            # Not every write is awaited (see `_commit_pipelined`): the failure stops the run here.
            self._crash = error
            self._wake()

    def _finished_event(
        self, step: StepDefinition, attempt: int, outcome: AttemptOutcome
    ) -> ExecutionEvent:
        return self._events.step_event(
            self._state,
            step.id,
            outcome.status,
            attempt=attempt,
            error=outcome.error,
            output=outcome.output,
            duration=outcome.duration,
            child_execution_id=self._children.pop((step.id, ""), ""),
        )


@dataclass(frozen=True, slots=True)
class _Start:
    """An attempt allowed to start: its parameters (or why they no longer resolve), and
    when the attempt it re-runs started if that one was lost to a stop."""

    run: RunStep | SettleStep
    lost_attempt_started: datetime | None


def _lost_attempt_started(step: StepState) -> datetime | None:
    """When the step's unbroken run of lost attempts began, if a stop lost the previous
    one: read from the committed state, so whichever process re-runs it can take over
    what those attempts left (however many re-runs were lost in turn)."""
    lost = step.error is not None and step.error.type == LOST_ATTEMPT_ERROR
    return step.lost_since if step.status is SS.RETRYING and lost else None


@dataclass(frozen=True, slots=True)
class _Decided:
    """What a step was decided with: parameters resolved from these inputs (None: none
    resolved yet). An attempt re-resolves when the run's inputs changed since."""

    run: RunStep | None
    inputs: Mapping[str, Any]


async def _durable(write: asyncio.Future[None]) -> None:
    """Waits until a staged write is durable, even if the caller is cancelled meanwhile.

    Memory already holds the staged state, so the write must finish (or fail, which
    stops the runner); a cancellation is re-raised once it has.
    """
    try:
        await asyncio.shield(write)
    except asyncio.CancelledError:
        await write
        raise
