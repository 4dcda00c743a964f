"""What one schedule left behind: the input of the invariants."""

from __future__ import annotations

from dataclasses import dataclass

from engine_service.core.commands import Command
from engine_service.core.state import ExecutionEvent, ExecutionState, ExecutionStatus
from tests.sim.faults import Fault
from tests.sim.probe import Ledger
from tests.sim.workflows import Scenario


@dataclass
class CommandLog:
    kind: str
    target: str
    root: int
    process: str
    issued: float
    local: bool
    result: str = "pending"
    returned: float | None = None
    status: ExecutionStatus | None = None


@dataclass
class Record:
    """Everything a schedule left behind, for the invariants."""

    scenario: Scenario
    faults: tuple[Fault, ...]
    roots: list[str | None]
    executions: dict[str, ExecutionState]
    events: dict[str, list[ExecutionEvent]]
    commands: list[CommandLog]
    stored_commands: list[Command]  # as decided at the end
    # command id -> when it was durably stored, by which process
    command_stored: dict[str, tuple[float, str]]
    ledger: Ledger
    problems: list[tuple[str, str]]  # (invariant, detail) seen by the world itself
    fault_log: list[tuple[float, str]]
    ended: float
    commits: tuple[int, ...]  # per process slot
    # The store's `step_attempts` rows, status by (execution, step, attempt, kind): SQL only.
    attempt_rows: dict[tuple[str, str, int, str], str] | None = None
