"""The generated contract: stubs import, every RPC exists, every message survives the wire."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from stepstream.v1 import (
    analytics_pb2,
    analytics_pb2_grpc,
    engine_pb2,
    engine_pb2_grpc,
    events_pb2,
    worker_pb2,
    worker_pb2_grpc,
    workflow_pb2,
)

CONTRACT_RPCS: dict[type, list[str]] = {
    engine_pb2_grpc.EngineServiceServicer: [
        "RegisterWorkflow",
        "GetWorkflow",
        "ListWorkflows",
        "ValidateWorkflow",
        "StartExecution",
        "GetExecution",
        "ListExecutions",
        "CancelExecution",
        "PauseExecution",
        "ResumeExecution",
        "WatchExecution",
        "WatchExecutions",
        "RunAndWatch",
        "CreateSchedule",
        "ListSchedules",
        "UpdateSchedule",
        "DeleteSchedule",
    ],
    worker_pb2_grpc.WorkerServiceServicer: ["PollTasks", "CompleteTask", "FailTask", "Heartbeat"],
    analytics_pb2_grpc.AnalyticsServiceServicer: [
        "IngestEvents",
        "GetWorkflowMetrics",
        "GetStepMetrics",
        "GetMostFailedSteps",
        "GetTimeSeries",
        "GetTrend",
        "GetPerformanceReport",
        "CompareWorkflows",
        "GetErrorBreakdown",
        "GetSystemOverview",
        "ExportCsv",
        "CreateAlertRule",
        "ListAlertRules",
        "UpdateAlertRule",
        "DeleteAlertRule",
        "WatchAlerts",
    ],
}

STREAMING = {
    # rpc name -> (client streaming, server streaming)
    "WatchExecution": (False, True),
    "WatchExecutions": (False, True),
    "RunAndWatch": (False, True),
    "PollTasks": (False, True),
    "IngestEvents": (True, False),
    "ExportCsv": (False, True),
    "WatchAlerts": (False, True),
}

MODULES: list[ModuleType] = [workflow_pb2, events_pb2, engine_pb2, worker_pb2, analytics_pb2]
SERVICES = {
    "EngineService": engine_pb2,
    "WorkerService": worker_pb2,
    "AnalyticsService": analytics_pb2,
}


@pytest.mark.parametrize(
    ("servicer", "rpc"),
    [(servicer, rpc) for servicer, rpcs in CONTRACT_RPCS.items() for rpc in rpcs],
)
def test_every_contract_rpc_exists_on_the_generated_servicer(servicer: type, rpc: str) -> None:
    assert inspect.isfunction(getattr(servicer, rpc, None)), f"{servicer.__name__}.{rpc}"


@pytest.mark.parametrize(("service", "module"), SERVICES.items())
def test_services_declare_exactly_the_contract_rpcs(service: str, module: ModuleType) -> None:
    descriptor = module.DESCRIPTOR.services_by_name[service]
    servicer = next(s for s in CONTRACT_RPCS if s.__name__ == f"{service}Servicer")
    assert sorted(m.name for m in descriptor.methods) == sorted(CONTRACT_RPCS[servicer])
    for method in descriptor.methods:
        expected = STREAMING.get(method.name, (False, False))
        assert (method.client_streaming, method.server_streaming) == expected, method.name


def _all_messages() -> list[type[Message]]:
    found: list[type[Message]] = []

    def collect(holder: object, descriptors: Mapping[str, pb_descriptor.Descriptor]) -> None:
        for name, desc in descriptors.items():
            if desc.GetOptions().map_entry:
                continue
            cls = getattr(holder, name)
            found.append(cls)
            collect(cls, desc.nested_types_by_name)

    for module in MODULES:
        collect(module, module.DESCRIPTOR.message_types_by_name)
    return found


def _sample_scalar(field: Any, seed: int) -> object:
    kind = field.type
    if kind == field.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values if v.number != 0]
        return values[seed % len(values)]
    if kind in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
        return 1.5 + seed
    if kind == field.TYPE_BOOL:
        return True
    if kind == field.TYPE_STRING:
        return f"{field.name}-{seed}"
    if kind == field.TYPE_BYTES:
        return f'{field.name},\n"{seed}"'.encode()
    return 7 + seed


def _fill(message: Message, depth: int = 0) -> None:
    """Give every field of `message` a non-default value, recursing into messages."""
    seen_oneofs: set[str] = set()
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and not oneof.name.startswith("_"):
            if oneof.name in seen_oneofs:
                continue
            seen_oneofs.add(oneof.name)
        _fill_field(message, field, depth)


def _fill_field(message: Message, field: Any, depth: int) -> None:
    target = getattr(message, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        if value_field.message_type is None:
            target["k"] = _sample_scalar(value_field, 1)
        else:
            _fill(target["k"], depth + 1)
        return
    if field.message_type is not None:
        if field.message_type.full_name == struct_pb2.Struct.DESCRIPTOR.full_name:
            sample = {"n": 1.0, "s": "x", "nested": {"list": [1.0, "two", None, True]}}
            (target.add() if _is_repeated(field) else target).update(sample)
        elif field.message_type.full_name == duration_pb2.Duration.DESCRIPTOR.full_name:
            (target.add() if _is_repeated(field) else target).FromMilliseconds(1500)
        elif field.message_type.full_name == timestamp_pb2.Timestamp.DESCRIPTOR.full_name:
            (target.add() if _is_repeated(field) else target).FromSeconds(1_700_000_000)
        elif depth < 4:
            _fill(target.add() if _is_repeated(field) else target, depth + 1)
        return
    if _is_repeated(field):
        target.extend([_sample_scalar(field, 0), _sample_scalar(field, 1)])
    else:
        setattr(message, field.name, _sample_scalar(field, 0))


def _is_repeated(field: Any) -> bool:
    return bool(field.is_repeated)


@pytest.mark.parametrize("message_class", _all_messages(), ids=lambda c: c.DESCRIPTOR.full_name)
def test_message_round_trips_through_bytes_with_every_field(message_class: type[Message]) -> None:
    original = message_class()
    _fill(original)
    decoded = message_class.FromString(original.SerializeToString())
    assert decoded == original
    for field in message_class.DESCRIPTOR.fields:
        if field.containing_oneof is not None and not field.containing_oneof.name.startswith("_"):
            continue
        if _is_repeated(field):
            assert len(getattr(decoded, field.name)) > 0, field.name
        else:
            assert (
                decoded.HasField(field.name) if field.message_type else getattr(decoded, field.name)
            ), field.name


def test_every_enum_starts_with_an_unspecified_zero() -> None:
    for module in MODULES:
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            zero = enum.values_by_number[0]
            assert zero.name.endswith("_UNSPECIFIED"), enum.full_name


def test_the_package_is_stepstream_v1() -> None:
    for module in MODULES:
        assert module.DESCRIPTOR.package == "stepstream.v1"
