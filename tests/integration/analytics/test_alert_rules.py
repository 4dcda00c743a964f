"""Alert rules through the RPCs: create, list by pages, update, delete, and bad input."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from stepstream.v1 import analytics_pb2, analytics_pb2_grpc

Stub: TypeAlias = "analytics_pb2_grpc.AnalyticsServiceAsyncStub"


def rule(name: str = "charge failing", **fields: object) -> analytics_pb2.AlertRule:
    values: dict[str, object] = {
        "name": name,
        "workflow_id": "orders",
        "step_id": "charge",
        "metric": analytics_pb2.ALERT_METRIC_FAILURE_RATE,
        "comparator": analytics_pb2.COMPARATOR_GREATER_THAN,
        "threshold": 0.2,
        "window": duration_pb2.Duration(seconds=600),
        "enabled": True,
    }
    values.update(fields)
    return analytics_pb2.AlertRule(**values)  # type: ignore[arg-type]


async def create(stub: Stub, **fields: Any) -> analytics_pb2.AlertRule:
    response = await stub.CreateAlertRule(analytics_pb2.CreateAlertRuleRequest(rule=rule(**fields)))
    return response.rule


async def test_create_list_update_delete(stub: Stub) -> None:
    created = [await create(stub, name=f"rule {i}") for i in range(5)]
    assert all(r.id and r.state == analytics_pb2.ALERT_STATE_OK for r in created)
    assert created[0].tenant == "default"

    first = await stub.ListAlertRules(analytics_pb2.ListAlertRulesRequest(page_size=3))
    second = await stub.ListAlertRules(
        analytics_pb2.ListAlertRulesRequest(page_size=3, page_token=first.next_page_token)
    )
    assert len(first.rules) == 3
    assert second.next_page_token == ""
    assert sorted(r.id for r in [*first.rules, *second.rules]) == sorted(r.id for r in created)

    updated = await stub.UpdateAlertRule(
        analytics_pb2.UpdateAlertRuleRequest(rule_id=created[0].id, threshold=0.5, enabled=False)
    )
    assert updated.rule.threshold == 0.5
    assert updated.rule.enabled is False
    assert updated.rule.name == "rule 0"

    await stub.DeleteAlertRule(analytics_pb2.DeleteAlertRuleRequest(rule_id=created[0].id))
    remaining = await stub.ListAlertRules(analytics_pb2.ListAlertRulesRequest())
    assert created[0].id not in {r.id for r in remaining.rules}
    assert len(remaining.rules) == 4


async def test_rules_of_another_tenant_are_invisible(stub: Stub) -> None:
    theirs = await create(stub, tenant="acme")
    mine = await stub.ListAlertRules(analytics_pb2.ListAlertRulesRequest())
    assert mine.rules == []
    acme = await stub.ListAlertRules(analytics_pb2.ListAlertRulesRequest(tenant="acme"))
    assert [r.id for r in acme.rules] == [theirs.id]


@pytest.mark.parametrize(
    "call",
    [
        lambda stub: stub.DeleteAlertRule(analytics_pb2.DeleteAlertRuleRequest(rule_id="nope")),
        lambda stub: stub.UpdateAlertRule(
            analytics_pb2.UpdateAlertRuleRequest(rule_id="nope", threshold=1)
        ),
    ],
)
async def test_unknown_rules_are_not_found(stub: Stub, call: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(stub)  # type: ignore[operator]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_invalid_rules_name_every_bad_field(stub: Stub) -> None:
    bad = rule(
        name=" ",
        metric=analytics_pb2.ALERT_METRIC_UNSPECIFIED,
        window=duration_pb2.Duration(seconds=5),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateAlertRule(analytics_pb2.CreateAlertRuleRequest(rule=bad))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    details = error_details_pb2.BadRequest()
    assert status is not None
    assert status.details[0].Unpack(details)
    assert [v.field for v in details.field_violations] == ["rule.metric"]

    no_metric_issue = rule(name=" ", window=duration_pb2.Duration(seconds=5), webhook_url="ftp://x")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateAlertRule(analytics_pb2.CreateAlertRuleRequest(rule=no_metric_issue))
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    assert status.details[0].Unpack(details)
    assert {v.field for v in details.field_violations} == {
        "rule.name",
        "rule.window",
        "rule.webhook_url",
    }
