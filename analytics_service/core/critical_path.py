"""Which chain of steps determined an execution's end-to-end time, across executions.

In one execution the chain ends at the step that finished last and walks back, each time to
the dependency that finished last; that dependency is what the step waited for. The
reported chain is the one that was critical in most executions.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from analytics_service.core.events import StepAttemptFact
from analytics_service.core.reports import CriticalPath


@dataclass(frozen=True)
class StepSpan:
    """A step of one execution, from its first attempt's start to its last one's finish."""

    step_id: str
    started_at: datetime
    finished_at: datetime
    depends_on: tuple[str, ...]


def step_spans(facts: Iterable[StepAttemptFact]) -> dict[str, StepSpan]:
    spans: dict[str, StepSpan] = {}
    for fact in sorted(facts, key=lambda f: (f.step_id, f.attempt)):
        earlier = spans.get(fact.step_id)
        started = fact.started_at if earlier is None else min(earlier.started_at, fact.started_at)
        finished = (
            fact.finished_at if earlier is None else max(earlier.finished_at, fact.finished_at)
        )
        spans[fact.step_id] = StepSpan(fact.step_id, started, finished, fact.depends_on)
    return spans


def _latest(candidates: Iterable[StepSpan]) -> StepSpan | None:
    # Ties go to the greatest step id so that the answer does not depend on input order.
    return max(candidates, key=lambda span: (span.finished_at, span.step_id), default=None)


def execution_chain(spans: dict[str, StepSpan]) -> tuple[tuple[str, ...], float]:
    """The critical chain of one execution, first step first, and its wall time in seconds."""
    current = _latest(spans.values())
    if current is None:
        return (), 0.0
    last = current
    chain = [current]
    visited = {current.step_id}
    while True:
        parents = (spans[d] for d in current.depends_on if d in spans and d not in visited)
        parent = _latest(parents)
        if parent is None:
            break
        chain.append(parent)
        visited.add(parent.step_id)
        current = parent
    chain.reverse()
    elapsed = (last.finished_at - chain[0].started_at).total_seconds()
    return tuple(span.step_id for span in chain), max(elapsed, 0.0)


def critical_path(facts: Iterable[StepAttemptFact]) -> CriticalPath:
    by_execution: dict[str, list[StepAttemptFact]] = defaultdict(list)
    for fact in facts:
        by_execution[fact.execution_id].append(fact)
    chains: Counter[tuple[str, ...]] = Counter()
    elapsed: dict[tuple[str, ...], float] = defaultdict(float)
    for execution_facts in by_execution.values():
        chain, seconds = execution_chain(step_spans(execution_facts))
        if chain:
            chains[chain] += 1
            elapsed[chain] += seconds
    if not chains:
        return CriticalPath()
    chain, count = max(chains.items(), key=lambda item: (item[1], elapsed[item[0]], item[0]))
    return CriticalPath(
        step_ids=chain,
        average_duration=elapsed[chain] / count,
        share=count / len(by_execution),
    )
