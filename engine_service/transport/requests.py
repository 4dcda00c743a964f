"""Checks on the shape of requests, and their conversion into engine queries.

Each check names the offending field, so clients get a `BadRequest` field violation
instead of a failure deeper in the engine.
"""

from __future__ import annotations

from collections.abc import Iterable

from stepstream.v1 import engine_pb2

from engine_service.core.errors import InvalidArgument, Problem
from engine_service.core.state import ExecutionStatus
from engine_service.core.store import ExecutionQuery, WorkflowQuery
from engine_service.transport.mapping import execution_status_from_proto, from_timestamp


class RequestCheck:
    """Collects every problem of a request, then raises them together."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def required(self, value: str, field: str) -> RequestCheck:
        if not value.strip():
            self.problems.append(Problem(field, "is required"))
        return self

    def non_negative(self, value: int, field: str) -> RequestCheck:
        if value < 0:
            self.problems.append(Problem(field, f"must not be negative, got {value}"))
        return self

    def statuses(self, values: Iterable[int], field: str) -> frozenset[ExecutionStatus]:
        found: set[ExecutionStatus] = set()
        for index, value in enumerate(values):
            status = execution_status_from_proto(value)
            if status is None:
                self.problems.append(Problem(f"{field}[{index}]", f"not a status: {value}"))
            else:
                found.add(status)
        return frozenset(found)

    def done(self) -> None:
        if self.problems:
            raise InvalidArgument(problems=self.problems)


def execution_query(request: engine_pb2.ListExecutionsRequest, tenant: str) -> ExecutionQuery:
    check = RequestCheck().non_negative(request.page_size, "page_size")
    statuses = check.statuses(request.statuses, "statuses")
    after = from_timestamp(request.created_after) if request.HasField("created_after") else None
    before = from_timestamp(request.created_before) if request.HasField("created_before") else None
    if after is not None and before is not None and after >= before:
        check.problems.append(Problem("created_before", "must be later than created_after"))
    check.done()
    return ExecutionQuery(
        tenant=tenant,
        workflow_id=request.workflow_id,
        statuses=statuses,
        created_after=after,
        created_before=before,
        parent_execution_id=request.parent_execution_id,
        page_size=request.page_size,
        page_token=request.page_token,
    )


def workflow_query(request: engine_pb2.ListWorkflowsRequest, tenant: str) -> WorkflowQuery:
    RequestCheck().non_negative(request.page_size, "page_size").done()
    return WorkflowQuery(
        tenant=tenant,
        labels=dict(request.labels),
        all_versions=request.all_versions,
        page_size=request.page_size,
        page_token=request.page_token,
    )
