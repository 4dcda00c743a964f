"""One attempt of a step's action: its outcome, whatever the action does.

An action's failure (a timeout, an ActionError, any exception, output its schema
rejects, output over the size limit) is the step's failure, never the engine's; secrets
the parameters resolved are kept out of outputs, messages and logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from engine_service.core import references
from engine_service.core.actions import ActionContext, ActionError, ActionRegistry, UnknownAction
from engine_service.core.errors import StorageError
from engine_service.core.model import StepDefinition
from engine_service.core.retry import is_retryable
from engine_service.core.state import Failure, StepStatus
from engine_service.core.step_decisions import (
    AttemptOutcome,
    RunStep,
    failed_outcome,
    schema_problem,
)

log = logging.getLogger(__name__)

SS = StepStatus
# The error type of an attempt that ran past the step's timeout (status TIMED_OUT).
ATTEMPT_TIMEOUT_ERROR = "TimeoutError"
# The default bound on one attempt's output, in bytes of compact JSON. An output travels
# in events to watchers and to analytics (whose requests are at most 4 MiB): in protobuf a
# number-dense JSON output grows up to about 5.5 times, so this keeps any one event well
# under that limit.
MAX_OUTPUT_BYTES = 512 * 1024


async def invoke_action(
    actions: ActionRegistry,
    action_name: str,
    step: StepDefinition,
    run: RunStep,
    context: ActionContext,
    output_schema: Mapping[str, Any] | None,
    *,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
) -> AttemptOutcome:
    """Runs `action_name` with the step's timeout and retry policy."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        action = actions.get(action_name)
        async with asyncio.timeout(step.timeout):
            output = await action(run.parameters, context)
    except TimeoutError:
        failure = Failure(ATTEMPT_TIMEOUT_ERROR, f"attempt exceeded {step.timeout}s")
        retryable = is_retryable(step.retry, failure.type, True)
        return failed_outcome(SS.TIMED_OUT, failure, retryable=retryable, started=started)
    except StorageError:
        # The engine's own store failed inside the action (a child execution's): not the
        # step's failure. The runner stops and the attempt counts as lost.
        raise
    except UnknownAction as exc:
        failure = Failure("UnknownAction", str(exc))
        return failed_outcome(SS.FAILED, failure, retryable=False, started=started)
    except ActionError as exc:
        failure = Failure(exc.error_type, references.redact(str(exc), run.secret_values))
        retryable = is_retryable(step.retry, exc.error_type, exc.retryable)
        return failed_outcome(SS.FAILED, failure, retryable=retryable, started=started)
    except Exception as exc:  # an action's bug is the step's failure, not the engine's
        failure = Failure(type(exc).__name__, references.redact(str(exc), run.secret_values))
        # A traceback would show the raw message: only when no secret could be in it.
        log.warning(
            "action %s of step %s raised %s: %s",
            action_name,
            step.id,
            failure.type,
            failure.message,
            exc_info=not run.secret_values,
        )
        retryable = is_retryable(step.retry, failure.type, True)
        return failed_outcome(SS.FAILED, failure, retryable=retryable, started=started)
    output = references.redact(output, run.secret_values)
    size = output_bytes(output)
    if size is None or size > max_output_bytes:
        failure = _unshippable(size, max_output_bytes)
        return failed_outcome(SS.FAILED, failure, retryable=False, started=started)
    if holds_nul(output):
        # Postgres cannot store it (nor its JSON): the step fails rather than every
        # write of the run, for ever.
        failure = Failure("OutputNotStorable", "the output holds a NUL character")
        return failed_outcome(SS.FAILED, failure, retryable=False, started=started)
    problem = schema_problem(output, output_schema)
    if problem is not None:
        failure = Failure("OutputValidationError", problem)
        return failed_outcome(SS.FAILED, failure, retryable=False, started=started)
    return AttemptOutcome(SS.COMPLETED, output=output, duration=loop.time() - started)


def holds_nul(value: Any) -> bool:
    """Whether a NUL character is in any string or key of `value` (a JSON value already
    bounded in size by `output_bytes`)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, Mapping):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return False


def output_bytes(output: Any) -> int | None:
    """The size of `output` as compact JSON (values JSON lacks counted as their text);
    None for an output no JSON can hold (a cycle, nesting past the interpreter's limit)."""
    try:
        encoded = json.dumps(output, ensure_ascii=False, separators=(",", ":"), default=str)
    except (ValueError, RecursionError):
        return None
    return len(encoded.encode("utf-8"))


def _unshippable(size: int | None, limit: int) -> Failure:
    if size is None:
        return Failure("OutputNotJson", "the output cannot be written as JSON")
    return Failure(
        "OutputTooLarge", f"the output is {size} bytes of JSON, over the limit of {limit}"
    )
