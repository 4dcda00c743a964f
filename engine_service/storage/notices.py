"""The notice every append on Postgres sends: `execution_id:first:last:origin`.

`origin` is the sending process's instance id, so a process skips the notices of its own
commits (it published those events to its watchers already, from memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from engine_service.core.state import ExecutionEvent, ExecutionState

NOTIFY_CHANNEL = "stepstream_events"
# A command was stored for an execution (the payload is its id): see `command_store`.
COMMANDS_CHANNEL = "stepstream_commands"


class Notice(NamedTuple):
    execution_id: str
    first: int
    last: int
    origin: str


def notice_payloads(
    batch: Sequence[tuple[ExecutionState, Sequence[ExecutionEvent]]], origin: str
) -> list[str]:
    return [f"{s.id}:{events[0].sequence}:{events[-1].sequence}:{origin}" for s, events in batch]


def parse_notice(payload: str) -> Notice | None:
    execution_id, first, last, origin = [*payload.split(":", 3), "", "", ""][:4]
    if not execution_id or not first.isdigit() or not last.isdigit():
        return None
    return Notice(execution_id, int(first), int(last), origin)
