"""What plausible requests are made of: valid whole messages, by field name.

The strings (ids of things that exist) come from the world the test built; the messages
are made here, so that the client process can build the same pools from those strings.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2
from stepstream.v1 import analytics_pb2, engine_pb2, events_pb2, workflow_pb2

from analytics_service.core.events import ExecutionStatus, StepStatus
from tests.fuzz.generator import Pools, Strings
from tests.integration.analytics.wire import to_proto
from tests.integration.engine.helpers import definition, struct
from tests.unit.analytics.builders import T0, execution_event, step_event

ACTIONS = ("noop", "echo", "fail", "transform", "delay", "missing")


def engine_pools(strings: Strings) -> Pools:
    """The pools of engine requests: `strings` as found, and whole messages that are valid."""
    return Pools(
        strings=strings,
        messages={
            "definition": _definition,
            "schedule": lambda rng: engine_pb2.Schedule(
                workflow_id="fz", cron=rng.choice(strings["cron"])
            ),
            "start": lambda rng: engine_pb2.StartExecutionRequest(workflow_id="fz"),
            "inputs": lambda rng: struct({"n": rng.randint(0, 3)}),
        },
    )


def _definition(rng: random.Random) -> workflow_pb2.WorkflowDefinition:
    """A small valid definition: a chain of one to three built-in actions."""
    steps: list[dict[str, Any]] = []
    for index in range(rng.randint(1, 3)):
        action = rng.choice(ACTIONS)
        step: dict[str, Any] = {"id": f"s{index}", "action": action}
        if action == "delay":
            step["parameters"] = {"seconds": rng.choice((0, 0.01))}
        elif action == "transform":
            step["parameters"] = {"expression": "inputs"}
        elif action == "fail":
            step["parameters"] = {"times": 1}
            step["retry"] = {"max_attempts": 2, "initial_interval": "0.01s"}
        if index:
            step["depends_on"] = [f"s{index - 1}"]
        steps.append(step)
    return definition({"id": rng.choice(("fz-a", "fz-b", "fz-c")), "steps": steps})


def analytics_pools(strings: Strings) -> Pools:
    """The pools of analytics requests: `strings` as found, and valid whole messages."""
    selector = analytics_pb2.WorkflowSelector
    return Pools(
        strings=strings,
        messages={
            "batch": a_batch,
            "range": a_range,
            "rule": a_rule,
            "baseline": lambda r: selector(workflow_id="orders", range=a_range(r)),
            "candidate": lambda r: selector(workflow_id="orders", range=a_range(r)),
        },
    )


def a_batch(rng: random.Random) -> events_pb2.EventBatch:
    """Events of one small execution of "orders", some new, some already ingested."""
    execution = f"fz-{rng.randrange(50)}"
    finished = T0 + timedelta(minutes=rng.randrange(60))
    failed = rng.random() < 0.3
    events = [
        step_event(
            execution,
            "charge",
            status=StepStatus.FAILED if failed else StepStatus.COMPLETED,
            error_type="Declined" if failed else "",
            finished_at=finished,
        ),
        execution_event(
            execution,
            status=ExecutionStatus.FAILED if failed else ExecutionStatus.COMPLETED,
            finished_at=finished,
        ),
    ]
    return events_pb2.EventBatch(events=[to_proto(e) for e in events], batch_id=execution)


def a_range(rng: random.Random) -> analytics_pb2.TimeRange:
    start = T0 - timedelta(hours=rng.choice((1, 24)))
    return analytics_pb2.TimeRange(start=_timestamp(start), end=_timestamp(T0 + timedelta(hours=2)))


def a_rule(rng: random.Random) -> analytics_pb2.AlertRule:
    return analytics_pb2.AlertRule(
        name="fuzz",
        workflow_id="orders",
        step_id=rng.choice(("", "charge")),
        metric=analytics_pb2.ALERT_METRIC_FAILURE_RATE,
        comparator=analytics_pb2.COMPARATOR_GREATER_THAN,
        threshold=0.2,
        window=duration_pb2.Duration(seconds=600),
        enabled=True,
    )


def _timestamp(moment: object) -> timestamp_pb2.Timestamp:
    made = timestamp_pb2.Timestamp()
    made.FromDatetime(moment)  # type: ignore[arg-type]
    return made
