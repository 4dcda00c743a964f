"""EngineService: each RPC checks the request's shape, calls the engine, maps the result.

Errors are raised, never set on the context: the ErrorInterceptor turns them into
statuses.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio
from stepstream.v1 import engine_pb2, engine_pb2_grpc, events_pb2

from engine_service.core.definitions import validate_definition
from engine_service.core.engine import Engine
from engine_service.core.scheduler import ScheduleService
from engine_service.core.state import ExecutionEvent
from engine_service.transport import mapping, responses
from engine_service.transport.offload import CpuLane
from engine_service.transport.requests import RequestCheck, execution_query, workflow_query
from engine_service.transport.schedule_requests import (
    schedule_changes,
    schedule_query,
    schedule_spec,
)
from engine_service.transport.streams import EventStreams
from engine_service.transport.tenancy import Tenancy

Context = aio.ServicerContext[Any, Any]


async def _batch(events: list[ExecutionEvent], lane: CpuLane) -> events_pb2.EventBatch:
    return await responses.batch(events, uuid.uuid4().hex, lane)


class EngineServicer(engine_pb2_grpc.EngineServiceServicer):
    def __init__(
        self, engine: Engine, streams: EventStreams, tenancy: Tenancy, lane: CpuLane
    ) -> None:
        self._engine = engine
        self._streams = streams
        self._tenancy = tenancy
        self._lane = lane
        self._schedules = ScheduleService(engine)

    # ---- workflows -------------------------------------------------------------------

    async def RegisterWorkflow(
        self, request: engine_pb2.RegisterWorkflowRequest, context: Context
    ) -> engine_pb2.RegisterWorkflowResponse:
        tenant = self._tenancy.named(request.definition.tenant, context)
        data = await mapping.definition_from_proto_off_loop(request.definition, self._lane)
        stored = await self._engine.register_workflow(data, tenant)
        return engine_pb2.RegisterWorkflowResponse(
            workflow=await responses.definition(stored, self._lane)
        )

    async def GetWorkflow(
        self, request: engine_pb2.GetWorkflowRequest, context: Context
    ) -> engine_pb2.GetWorkflowResponse:
        check = RequestCheck().required(request.workflow_id, "workflow_id")
        check.non_negative(request.version, "version").done()
        tenant = self._tenancy.named(request.tenant, context)
        found = await self._engine.get_workflow(tenant, request.workflow_id, request.version)
        return engine_pb2.GetWorkflowResponse(
            workflow=await responses.definition(found, self._lane)
        )

    async def ListWorkflows(
        self, request: engine_pb2.ListWorkflowsRequest, context: Context
    ) -> engine_pb2.ListWorkflowsResponse:
        query = workflow_query(request, self._tenancy.named(request.tenant, context))
        page = await self._engine.list_workflows(query)
        items, token = await responses.definition_page(page, request.page_token, self._lane)
        return engine_pb2.ListWorkflowsResponse(workflows=items, next_page_token=token)

    async def ValidateWorkflow(
        self, request: engine_pb2.ValidateWorkflowRequest, context: Context
    ) -> engine_pb2.ValidateWorkflowResponse:
        tenant = self._tenancy.named(request.definition.tenant, context)
        data = {
            **await mapping.definition_from_proto_off_loop(request.definition, self._lane),
            "tenant": tenant,
        }
        limits = self._engine.config.definition_limits
        # CPU work on untrusted input (seconds for the largest definitions): off the loop.
        problems, plan, stages = await asyncio.to_thread(validate_definition, data, limits=limits)
        return engine_pb2.ValidateWorkflowResponse(
            valid=not problems,
            problems=[
                engine_pb2.ValidationProblem(path=p.path, message=p.message) for p in problems
            ],
            plan=plan,
            stages=[engine_pb2.PlanStage(step_ids=stage) for stage in stages],
        )

    # ---- executions ------------------------------------------------------------------

    async def StartExecution(
        self, request: engine_pb2.StartExecutionRequest, context: Context
    ) -> engine_pb2.StartExecutionResponse:
        state, created = await self._start(request, context)
        return engine_pb2.StartExecutionResponse(
            execution=await responses.execution(state, self._lane), created=created
        )

    async def _start(
        self, request: engine_pb2.StartExecutionRequest, context: Context
    ) -> tuple[Any, bool]:
        check = RequestCheck().required(request.workflow_id, "workflow_id")
        check.non_negative(request.version, "version").done()
        return await self._engine.start_execution(
            self._tenancy.named(request.tenant, context),
            request.workflow_id,
            version=request.version,
            inputs=await mapping.struct_to_dict_off_loop(request.inputs, self._lane),
            idempotency_key=request.idempotency_key,
        )

    async def GetExecution(
        self, request: engine_pb2.GetExecutionRequest, context: Context
    ) -> engine_pb2.GetExecutionResponse:
        check = RequestCheck().required(request.execution_id, "execution_id")
        check.non_negative(request.at_sequence, "at_sequence").done()
        state = await self._engine.get_execution(
            request.execution_id,
            tenant=await self._owner(request.execution_id, context),
            at_sequence=request.at_sequence,
        )
        return engine_pb2.GetExecutionResponse(
            execution=await responses.execution(state, self._lane)
        )

    async def ListExecutions(
        self, request: engine_pb2.ListExecutionsRequest, context: Context
    ) -> engine_pb2.ListExecutionsResponse:
        query = execution_query(request, self._tenancy.named(request.tenant, context))
        page = await self._engine.list_executions(query)
        items, token = await responses.execution_page(page, request.page_token, self._lane)
        return engine_pb2.ListExecutionsResponse(executions=items, next_page_token=token)

    async def CancelExecution(
        self, request: engine_pb2.CancelExecutionRequest, context: Context
    ) -> engine_pb2.CancelExecutionResponse:
        RequestCheck().required(request.execution_id, "execution_id").done()
        state = await self._engine.cancel_execution(
            request.execution_id,
            tenant=await self._owner(request.execution_id, context),
            reason=request.reason,
        )
        return engine_pb2.CancelExecutionResponse(
            execution=await responses.execution(state, self._lane)
        )

    async def PauseExecution(
        self, request: engine_pb2.PauseExecutionRequest, context: Context
    ) -> engine_pb2.PauseExecutionResponse:
        RequestCheck().required(request.execution_id, "execution_id").done()
        state = await self._engine.pause_execution(
            request.execution_id, tenant=await self._owner(request.execution_id, context)
        )
        return engine_pb2.PauseExecutionResponse(
            execution=await responses.execution(state, self._lane)
        )

    async def ResumeExecution(
        self, request: engine_pb2.ResumeExecutionRequest, context: Context
    ) -> engine_pb2.ResumeExecutionResponse:
        RequestCheck().required(request.execution_id, "execution_id").done()
        state = await self._engine.resume_execution(
            request.execution_id,
            tenant=await self._owner(request.execution_id, context),
            inputs=await mapping.struct_to_dict_off_loop(request.inputs, self._lane),
        )
        return engine_pb2.ResumeExecutionResponse(
            execution=await responses.execution(state, self._lane)
        )

    async def _owner(self, execution_id: str, context: Context) -> str | None:
        """The tenant the engine checks a call by execution id against; None: no check.

        An execution of a tenant the caller may not use is NOT_FOUND, worded as for an id
        that does not exist.
        """
        allowed = self._tenancy.caller_tenants(context)
        if allowed is None:
            return None
        if len(allowed) == 1:
            (only,) = allowed
            return only  # the engine hides every other tenant's executions
        state = await self._engine.get_execution(execution_id)
        self._tenancy.require_visible(context, state.tenant, kind="execution", key=execution_id)
        return state.tenant

    # ---- streams ---------------------------------------------------------------------

    async def WatchExecution(
        self, request: engine_pb2.WatchExecutionRequest, context: Context
    ) -> AsyncIterator[engine_pb2.WatchExecutionResponse]:
        check = RequestCheck().required(request.execution_id, "execution_id")
        check.non_negative(request.after_sequence, "after_sequence").done()
        tenant = await self._owner(request.execution_id, context)
        events = self._streams.watch_execution(
            request.execution_id, request.after_sequence, tenant=tenant
        )
        async for batch in events:
            yield engine_pb2.WatchExecutionResponse(batch=await _batch(batch, self._lane))

    async def WatchExecutions(
        self, request: engine_pb2.WatchExecutionsRequest, context: Context
    ) -> AsyncIterator[engine_pb2.WatchExecutionsResponse]:
        check = RequestCheck()
        statuses = check.statuses(request.statuses, "statuses")
        check.done()
        tenant = self._tenancy.named(request.tenant, context)
        async for batch in self._streams.watch_executions(tenant, request.workflow_id, statuses):
            yield engine_pb2.WatchExecutionsResponse(batch=await _batch(batch, self._lane))

    async def RunAndWatch(
        self, request: engine_pb2.RunAndWatchRequest, context: Context
    ) -> AsyncIterator[engine_pb2.RunAndWatchResponse]:
        state, _ = await self._start(request.start, context)
        yield engine_pb2.RunAndWatchResponse(execution=await responses.execution(state, self._lane))
        async for batch in self._streams.watch_execution(state.id, 0, tenant=None):
            yield engine_pb2.RunAndWatchResponse(batch=await _batch(batch, self._lane))

    # ---- schedules ------------------------------------------------------------------

    async def CreateSchedule(
        self, request: engine_pb2.CreateScheduleRequest, context: Context
    ) -> engine_pb2.CreateScheduleResponse:
        tenant = self._tenancy.named(request.schedule.tenant, context)
        inputs = await mapping.struct_to_dict_off_loop(request.schedule.inputs, self._lane)
        created = await self._schedules.create(schedule_spec(request, tenant, inputs))
        return engine_pb2.CreateScheduleResponse(
            schedule=await responses.schedule(created, self._lane)
        )

    async def ListSchedules(
        self, request: engine_pb2.ListSchedulesRequest, context: Context
    ) -> engine_pb2.ListSchedulesResponse:
        query = schedule_query(request, self._tenancy.named(request.tenant, context))
        page = await self._schedules.list(query)
        items, token = await responses.schedule_page(page, request.page_token, self._lane)
        return engine_pb2.ListSchedulesResponse(schedules=items, next_page_token=token)

    async def UpdateSchedule(
        self, request: engine_pb2.UpdateScheduleRequest, context: Context
    ) -> engine_pb2.UpdateScheduleResponse:
        inputs = (
            await mapping.struct_to_dict_off_loop(request.inputs, self._lane)
            if request.HasField("inputs")
            else None
        )
        changes = schedule_changes(request, inputs)
        tenant = await self._schedule_tenant(request.schedule_id, context)
        updated = await self._schedules.update(request.schedule_id, changes, tenant=tenant)
        return engine_pb2.UpdateScheduleResponse(
            schedule=await responses.schedule(updated, self._lane)
        )

    async def DeleteSchedule(
        self, request: engine_pb2.DeleteScheduleRequest, context: Context
    ) -> engine_pb2.DeleteScheduleResponse:
        RequestCheck().required(request.schedule_id, "schedule_id").done()
        tenant = await self._schedule_tenant(request.schedule_id, context)
        await self._schedules.delete(request.schedule_id, tenant=tenant)
        return engine_pb2.DeleteScheduleResponse()

    async def _schedule_tenant(self, schedule_id: str, context: Context) -> str:
        """The schedule's tenant; NOT_FOUND, as for a missing id, if the caller may not
        use it."""
        schedule = await self._schedules.get(schedule_id)
        self._tenancy.require_visible(context, schedule.tenant, kind="schedule", key=schedule_id)
        return schedule.tenant
