"""The EventBridge adapter over the wire, against the sandbox's moto server: rules made the way
Metaflow makes them, and every API call counted."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from metaflow.plugins.aws.step_functions.event_bridge_client import format as metaflow_rule_name

from platform_ops.adapters import eventbridge
from platform_ops.adapters.aws import AwsError, count_calls
from platform_ops.schedules.core import ScheduledStateMachine

CREATED = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def prod(world):
    """The production account's events client (through the assumed role, as the product reaches it)
    and a helper making state machine ARNs there."""
    env = world.settings.environments["production"]
    client = world.resources()["aws_production"].client("events")
    return client, lambda name: f"arn:aws:states:{env.region}:{env.account_id}:stateMachine:{name}"


def metaflow_schedule(client, state_machine_name: str, state_machine_arn: str, cron: str) -> None:
    """What metaflow's EventBridgeClient._set does on `step-functions create` with @schedule."""
    name = metaflow_rule_name(state_machine_name)
    client.put_rule(Name=name, ScheduleExpression=f"cron({cron})", State="ENABLED",
                    Description=f"Metaflow generated rule for {name}")
    client.put_targets(Rule=name, Targets=[{
        "Id": name, "Arn": state_machine_arn, "Input": json.dumps({"Parameters": json.dumps({})}),
        "RoleArn": "arn:aws:iam::222222222222:role/metaflow-events"}])


def test_rule_names_are_metaflows():
    short = "mlplatform.prod.DemoFlow"
    long = "mlplatform.prod.a_very_long_branch_name_for_a_feature.SomeRatherLongFlowName"
    assert eventbridge.rule_name(short) == metaflow_rule_name(short) == short
    assert eventbridge.rule_name(long) == metaflow_rule_name(long) and len(eventbridge.rule_name(long)) == 64


def test_rule_prefixes_cover_long_names_and_list_no_rule_twice():
    long = "mlplatform.prod.a_very_long_branch_name_for_a_feature."
    assert eventbridge.rule_prefixes(["mlplatform.prod.", "mlplatform.prod.b.", "other."]) == ["mlplatform.prod.",
                                                                                              "other."]
    assert eventbridge.rule_prefixes([long]) == [long[:47]]
    assert eventbridge.rule_prefixes(["", "mlplatform."]) == [""]
    assert eventbridge.rule_prefixes([]) == [""]


def test_metaflows_schedule_rules_are_found_and_others_are_not(prod):
    client, arn = prod
    long = "mlplatform.prod.a_very_long_branch_name_for_a_feature.SomeRatherLongFlowName"
    names = ["mlplatform.prod.DemoFlow", "mlplatform.prod.NightlyFlow", "mlplatform.prod.Unscheduled",
             "mlplatform.prod.Retargeted", "mlplatform.prod.Pattern", long]
    machines = {arn(n): CREATED for n in names}
    metaflow_schedule(client, "mlplatform.prod.DemoFlow", arn("mlplatform.prod.DemoFlow"), "0 * * * ? *")
    metaflow_schedule(client, long, arn(long), "0/15 * * * ? *")
    metaflow_schedule(client, "mlplatform.prod.NightlyFlow", arn("mlplatform.prod.NightlyFlow"), "0 2 * * ? *")
    client.disable_rule(Name="mlplatform.prod.NightlyFlow")  # @schedule removed, flow redeployed
    # named like a watched state machine, but starting something else
    metaflow_schedule(client, "mlplatform.prod.Retargeted", arn("mlplatform.prod.SomethingElse"), "0 3 * * ? *")
    # named like one, but an event pattern rule, not a schedule
    client.put_rule(Name="mlplatform.prod.Pattern", EventPattern=json.dumps({"source": ["aws.states"]}))
    # a schedule for a state machine nobody watches
    metaflow_schedule(client, "mlplatform.prod.Unwatched", arn("mlplatform.prod.Unwatched"), "0 4 * * ? *")

    with count_calls() as calls:
        got = eventbridge.scheduled_state_machines(client, machines, prefixes=["mlplatform.prod."])

    assert sorted(got, key=lambda s: s.rule_name) == [
        ScheduledStateMachine(arn("mlplatform.prod.DemoFlow"), "mlplatform.prod.DemoFlow", "cron(0 * * * ? *)",
                              True, CREATED),
        ScheduledStateMachine(arn("mlplatform.prod.NightlyFlow"), "mlplatform.prod.NightlyFlow",
                              "cron(0 2 * * ? *)", False, CREATED),
        ScheduledStateMachine(arn(long), metaflow_rule_name(long), "cron(0/15 * * * ? *)", True, CREATED),
    ]
    # one page of rules; targets only of the enabled schedules named like a watched state machine
    # (DemoFlow, the long one, Retargeted), not of the disabled, pattern or unwatched rules
    assert dict(calls) == {"EventBridge.ListRules": 1, "EventBridge.ListTargetsByRule": 3}


def test_cost_at_200_scheduled_state_machines(prod):
    client, arn = prod
    names = [f"mlplatform.prod.Flow{i:03d}" for i in range(200)]
    for name in names:
        metaflow_schedule(client, name, arn(name), "0 * * * ? *")
    machines = {arn(n): CREATED for n in names}
    known: dict[str, frozenset[str]] = {}

    with count_calls() as first:
        got = eventbridge.scheduled_state_machines(client, machines, ["mlplatform.prod."], known_targets=known)
    with count_calls() as later:
        again = eventbridge.scheduled_state_machines(client, machines, ["mlplatform.prod."], known_targets=known)

    assert {s.state_machine_arn for s in got} == set(machines) and again == got
    assert dict(first) == {"EventBridge.ListRules": 2, "EventBridge.ListTargetsByRule": 200}  # 100 rules a page
    assert dict(later) == {"EventBridge.ListRules": 2}


def test_a_rule_deleted_between_the_calls_is_no_schedule(prod, monkeypatch):
    client, arn = prod
    metaflow_schedule(client, "mlplatform.prod.DemoFlow", arn("mlplatform.prod.DemoFlow"), "0 * * * ? *")
    real = client.get_paginator

    def deleting(operation):
        if operation == "list_targets_by_rule":  # Metaflow's `step-functions delete`, mid-check
            client.remove_targets(Rule="mlplatform.prod.DemoFlow", Ids=["mlplatform.prod.DemoFlow"])
            client.delete_rule(Name="mlplatform.prod.DemoFlow")
        return real(operation)

    monkeypatch.setattr(client, "get_paginator", deleting)
    assert eventbridge.scheduled_state_machines(client, {arn("mlplatform.prod.DemoFlow"): CREATED}) == []


def test_a_refused_call_is_an_aws_error_naming_the_code(world, prod):
    """Until the role grants events:ListTargetsByRule, a check fails in words, not with a stack of botocore."""
    client, arn = prod
    metaflow_schedule(client, "mlplatform.prod.DemoFlow", arn("mlplatform.prod.DemoFlow"), "0 * * * ? *")
    world.control("aws-faults", {"kind": "fail-operation", "service": "events", "operation": "ListTargetsByRule",
                                 "code": "AccessDeniedException"})
    with pytest.raises(AwsError) as err:
        eventbridge.scheduled_state_machines(client, {arn("mlplatform.prod.DemoFlow"): CREATED})
    assert err.value.code == "AccessDeniedException" and not err.value.request_scoped
