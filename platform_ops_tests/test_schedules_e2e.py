"""Missed schedules over the wire: Metaflow-made EventBridge rules in the sandbox's accounts, the
sensor's tick through the product's resources (boto3 through the assumed role, slack_sdk to the
sink), the ledger in a real Dagster instance, every AWS call counted.

The tick's clock is the test's (`schedules_tick(..., now=)`): a fire time hours after the state
machine was deployed is reached without waiting for it. Only the recovery waits, on the wall clock
passing the missed fire time (under a minute), because a start cannot be made in the future.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from metaflow.plugins.aws.step_functions.event_bridge_client import format as metaflow_rule_name

from platform_ops.adapters.aws import count_calls
from platform_ops.resources import build_resources
from platform_ops.sandbox import flows
from platform_ops.schedules.defs import KIND, schedules_tick
from platform_ops.settings import ScheduleSettings

PRODUCTION_SM = flows.DEPLOYMENTS["production"].name
STAGING_SM = flows.DEPLOYMENTS["staging"].name
HOURLY = "cron(0 * * * ? *)"
EVERY_MINUTE = "cron(* * * * ? *)"


def env_of(world, environment):
    return world.settings.environments[environment]


def sm_arn(world, environment, name):
    env = env_of(world, environment)
    return f"arn:aws:states:{env.region}:{env.account_id}:stateMachine:{name}"


def metaflow_schedule(world, environment, name, expression, state="ENABLED"):
    """What Metaflow's EventBridgeClient does on `step-functions create` with @schedule (a disabled
    rule is what it leaves after @schedule is removed and the flow redeployed)."""
    events = world.resources()[f"aws_{environment}"].client("events")
    rule = metaflow_rule_name(name)
    events.put_rule(Name=rule, ScheduleExpression=expression, State=state,
                    Description=f"Metaflow generated rule for {rule}")
    events.put_targets(Rule=rule, Targets=[{"Id": rule, "Arn": sm_arn(world, environment, name),
                                            "Input": json.dumps({"Parameters": json.dumps({})})}])


def created(world, environment, name) -> datetime:
    sfn = world.resources()[f"aws_{environment}"].client("stepfunctions")
    return sfn.describe_state_machine(stateMachineArn=sm_arn(world, environment, name))["creationDate"]


def settings_for(world, *environments, grace=30):
    """The sandbox's settings watching only the flow deployments under test (the sandbox has a
    scheduled deployment of its own, for the demo: sandbox/flows.py)."""
    envs = {n: dataclasses.replace(env_of(world, n), state_machine_prefixes=(flows.DEPLOYMENTS[n].name,))
            for n in environments or ("production",)}
    return dataclasses.replace(world.settings, environments=envs, promotion=None,
                               schedules=ScheduleSettings(grace_minutes=grace))


class Ticks:
    """The sensor's ticks on one Dagster instance, each cursor carried to the next (as the daemon does)."""

    def __init__(self, settings, instance):
        self.settings, self.instance, self.cursor = settings, instance, None
        self.resources = build_resources(settings)
        self.log = Lines()  # what each tick logged (what the UI shows on the tick)

    def __call__(self, now: datetime, cursor=...) -> dg.SensorResult:
        with dg.build_sensor_context(instance=self.instance, resources=self.resources,
                                     cursor=self.cursor if cursor is ... else cursor) as context:
            context.log.addHandler(self.log)
            result = schedules_tick(context, self.settings, now)
        self.cursor = result.cursor
        return result


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def schedule_messages(world):
    return [m for m in world.messages if (m.get("metadata") or {}).get("event_payload", {}).get("kind") == KIND]


def aws_calls(calls):
    return {k: v for k, v in calls.items() if not k.startswith("STS.")}  # AssumeRole: once per cached session


def at(dt: datetime) -> str:
    return f"{dt.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def test_a_missed_schedule_is_announced_once_with_owner_words_and_last_start(world, instance):
    ran = world.run_flow("production", "sched-before", width=1)
    metaflow_schedule(world, "production", PRODUCTION_SM, HOURLY)
    now = created(world, "production", PRODUCTION_SM) + timedelta(hours=3)
    expected = (now - timedelta(minutes=30)).replace(minute=0, second=0, microsecond=0)
    tick = Ticks(settings_for(world), instance)
    with count_calls() as calls:
        tick(now)
    assert aws_calls(calls) == {"SFN.ListStateMachines": 1, "EventBridge.ListRules": 1,
                                "EventBridge.ListTargetsByRule": 1, "SFN.ListExecutions": 1,
                                "SFN.DescribeStateMachine": 1}  # the owner, for the message
    [message] = world.messages
    text = message["text"] + json.dumps(message["blocks"])
    assert PRODUCTION_SM in message["text"] and "production" in message["text"]
    assert "<@U0ALICE>" in message["text"]  # metaflow.owner alice, through slack.owners
    assert "every hour at :00" in text and HOURLY in text
    assert f"last start: {at(ran['startDate'])}" in message["text"]
    assert f"since {at(expected)}" in message["text"]
    urls = [e["url"] for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert any("#/statemachines/view/" + sm_arn(world, "production", PRODUCTION_SM) in u for u in urls)
    assert any(u.endswith(f"#/eventbus/default/rules/{PRODUCTION_SM}") for u in urls)

    with count_calls() as calls:
        tick(now + timedelta(minutes=5))
    assert len(world.messages) == 1  # the miss is open: said once
    assert aws_calls(calls) == {"SFN.ListStateMachines": 1, "EventBridge.ListRules": 1,
                                "SFN.ListExecutions": 1}  # the target is known; only the open miss is asked
    tick(now + timedelta(hours=2), cursor=None)  # a lost cursor, and newer fire times passed
    assert len(world.messages) == 1  # the open miss is in the ledger


def test_the_recovery_is_announced_once_when_it_starts_again(world, instance):
    """In staging: moto 5.2.5 offers every event on the default bus to a schedule rule too, and
    fails on its Step Functions target (AWS never matches an event to a schedule rule), so no
    execution ends in the event-driven production account while a schedule rule is there."""
    metaflow_schedule(world, "staging", STAGING_SM, EVERY_MINUTE)
    first_fire = created(world, "staging", STAGING_SM).replace(second=0, microsecond=0) + timedelta(minutes=1)
    now = first_fire + timedelta(minutes=1)  # its grace (1 minute) over: missed, whatever the wall clock says
    tick = Ticks(settings_for(world, "staging", grace=1), instance)
    tick(now)
    [miss] = world.messages
    assert "last start: never" in miss["text"] and f"since {at(first_fire)}" in miss["text"]
    deadline = time.monotonic() + 120
    while datetime.now(UTC) < first_fire:  # a start answers a fire time at or after it
        assert time.monotonic() < deadline, "the wall clock did not reach the fire time"
        time.sleep(0.5)
    flows.trigger(world.sandbox.endpoint, env_of(world, "staging"), width=1, name="sched-back")
    tick(now)
    assert len(schedule_messages(world)) == 2
    recovery = world.messages[-1]
    assert STAGING_SM in recovery["text"] and "started again" in recovery["text"]
    assert f"missed start of {at(first_fire)}" in recovery["text"]
    tick(now)
    assert len(world.messages) == 2  # said once


def test_a_disabled_rule_is_no_schedule(world, instance):
    metaflow_schedule(world, "production", PRODUCTION_SM, HOURLY, state="DISABLED")
    now = created(world, "production", PRODUCTION_SM) + timedelta(hours=3)
    with count_calls() as calls:
        Ticks(settings_for(world), instance)(now)
    assert world.messages == []
    assert aws_calls(calls) == {"SFN.ListStateMachines": 1, "EventBridge.ListRules": 1}  # no targets, no starts


def test_a_fire_time_before_the_state_machine_existed_is_no_miss(world, instance):
    metaflow_schedule(world, "production", PRODUCTION_SM, HOURLY)
    deployed = created(world, "production", PRODUCTION_SM)
    assert deployed.minute or deployed.second or deployed.microsecond  # the last top of the hour came before it
    Ticks(settings_for(world, grace=1), instance)(deployed + timedelta(minutes=1))
    assert world.messages == []


def test_what_slack_refused_is_said_on_the_next_tick_once(world, instance):
    metaflow_schedule(world, "production", PRODUCTION_SM, HOURLY)
    now = created(world, "production", PRODUCTION_SM) + timedelta(hours=3)
    world.sandbox.sink.state.faults.append({"kind": "error", "error": "fatal_error",
                                            "when": {"method": "chat.postMessage"}})
    tick = Ticks(settings_for(world), instance)
    with pytest.raises(RuntimeError, match="Slack"):  # the tick fails, visibly, and its cursor is not kept
        tick(now)
    assert world.messages == []
    tick(now + timedelta(minutes=5))
    tick(now + timedelta(minutes=10))
    assert len(world.messages) == 1 and PRODUCTION_SM in world.messages[0]["text"]


def test_one_environment_failing_does_not_stop_the_other(world, instance):
    metaflow_schedule(world, "staging", STAGING_SM, HOURLY)
    world.control("aws-faults", {"kind": "deny-assume-role", "account": env_of(world, "production").account_id})
    tick = Ticks(settings_for(world, "staging", "production"), instance)
    with pytest.raises(RuntimeError, match="production: .*AccessDenied"):
        tick(created(world, "staging", STAGING_SM) + timedelta(hours=3))
    [message] = world.messages
    assert STAGING_SM in message["text"] and "staging" in message["text"]


def test_a_rule_aws_would_not_run_is_logged_not_announced(world, instance):
    metaflow_schedule(world, "production", PRODUCTION_SM, "cron(0 10 * * * *)")  # both day fields: AWS refuses it
    now = created(world, "production", PRODUCTION_SM) + timedelta(days=2)
    tick = Ticks(settings_for(world), instance)
    result = tick(now)
    assert world.messages == [] and "1 scheduled state machines checked" in result.skip_reason.skip_message
    assert any("exactly one of day-of-month and day-of-week" in line for line in tick.log.lines), tick.log.lines


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_the_sandboxs_scheduled_deployment_is_missed_within_the_demos_first_ten_minutes(world, instance):
    """The demo's promise: sandbox/flows.py's SCHEDULED deployment, which nothing starts, is
    announced once its first fire time plus the sandbox's grace has passed (about 8 minutes after the
    world is made, under 10), by the sandbox's own settings, and not before."""
    env_name, scheduled = next(iter(flows.SCHEDULED.items()))
    name = scheduled.deployment.name
    deployed = created(world, env_name, name)
    tick = Ticks(world.settings, instance)
    due = deployed.replace(second=0, microsecond=0) + timedelta(minutes=5 + world.settings.schedules.grace_minutes)
    tick(due - timedelta(seconds=1))
    assert schedule_messages(world) == []
    tick(due)
    [message] = schedule_messages(world)
    assert name in message["text"] and "every 5 minutes" in message["text"] and "last start: never" in message["text"]
    assert due + timedelta(minutes=world.settings.schedules.interval_minutes) - deployed < timedelta(minutes=10)
