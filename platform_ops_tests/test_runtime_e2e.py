"""Runs that take too long, over the wire: long_runs_sensor ticked on a real Dagster instance
against the sandbox's Batch and Step Functions (through boto3) and its Slack sink (through
slack_sdk). Durations are shaped by the sandbox (jobs started and run minutes ago, executions
backdated), never waited for."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

import dagster as dg
import pytest

from platform_ops.adapters.aws import count_calls
from platform_ops.code_location import build_defs
from platform_ops.runtime.defs import SENSOR
from platform_ops.sandbox import flows

TRAIN = "SFN-DemoFlow--train--"


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def defs_for(world, **runtime):
    """The sandbox's settings; the history is listed once a test (an hour), however slow the machine."""
    assert world.settings.sensors_running
    runtime = {"history_refresh_minutes": 60, **runtime}
    return build_defs(dataclasses.replace(world.settings, runtime=dataclasses.replace(world.settings.runtime,
                                                                                      **runtime)))


def tick(defs, instance, cursor=None):
    sensor = defs.resolve_sensor_def(SENSOR)
    with dg.build_sensor_context(instance=instance, resources=defs.resources, cursor=cursor, sensor_name=SENSOR,
                                 repository_def=defs.get_repository_def()) as ctx:
        return sensor.evaluate_tick(ctx)


def aws(calls) -> dict[str, int]:
    """The calls the tick made to Batch and Step Functions (STS depends on whether the role was assumed yet)."""
    return {k: v for k, v in calls.items() if not k.startswith("STS.")}


def machines(world) -> dict[str, int]:
    return {name: len(world.resources()[f"aws_{name}"].client("stepfunctions").list_state_machines()["stateMachines"])
            for name in world.settings.environments}


def history(world, count_20=36, count_25=4, environment="staging") -> None:
    """Succeeded train tasks that ran 20 or 25 minutes, some hours ago: p95 of 40 is 25 minutes."""
    world.submit(environment, count=count_20, name=TRAIN, started_minutes_ago=300, ran_minutes=20)
    if count_25:
        world.submit(environment, count=count_25, name=TRAIN, started_minutes_ago=240, ran_minutes=25)


def running(world, minutes: float, environment="staging", owner="alice") -> str:
    """A train task RUNNING for `minutes` already (the sandbox's `running` fault keeps it there)."""
    name = f"{TRAIN}{uuid.uuid4().hex[:6]}"
    world.fault(fault="running", name_prefix=name)
    [job_id] = world.submit(environment, name=name, started_minutes_ago=minutes,
                            tags={"metaflow.owner": owner}, parameters={"metaflow.run_id": "run-7"})
    return job_id


def test_a_long_job_is_warned_once_with_its_owner_and_how_long_it_usually_takes(world, instance):
    defs = defs_for(world)
    history(world)
    slow, fine = running(world, 130), running(world, 40)
    with count_calls() as calls:
        first = tick(defs, instance)
    [message] = world.messages
    assert "step train of DemoFlow" in message["text"] and "running 2h1" in message["text"]
    assert "usually 25m (p95 of 40 runs)" in message["text"] and "<@U0ALICE>" in message["text"]
    buttons = [b for b in message["blocks"] if b["type"] == "actions"][0]["elements"]
    assert buttons[0]["url"].endswith(f"#jobs/detail/{slow}")
    assert buttons[1]["url"] == f"https://metaflow.example.com/DemoFlow/sfn-run-7/train/{slow}"
    assert fine not in json.dumps(world.messages)
    n = machines(world)
    queues = sum(len(e.job_queues) for e in world.settings.environments.values())
    assert aws(calls) == {  # a first tick lists the history (SUCCEEDED) and what runs (RUNNING)
        "SFN.ListStateMachines": len(n), "Batch.ListJobs": 2 * queues, "SFN.ListExecutions": 2 * sum(n.values()),
        "Batch.DescribeJobs": 1}  # the owner and run of the one job warned

    with count_calls() as calls:
        second = tick(defs, instance, first.cursor)
    assert len(world.messages) == 1  # still running, already warned
    assert aws(calls) == {"SFN.ListStateMachines": len(n), "Batch.ListJobs": queues,
                          "SFN.ListExecutions": sum(n.values())}  # the history is kept, not listed again
    assert json.loads(second.cursor)["warned"]["staging"] == [slow]

    world.set_status("staging", slow, "SUCCEEDED")
    third = tick(defs, instance, second.cursor)
    assert json.loads(third.cursor)["warned"]["staging"] == []  # it stopped: forgotten
    tick(defs, instance)  # a lost cursor: the ledger still holds the warning
    assert len(world.messages) == 1


def test_thin_history_warns_nobody_and_the_tick_says_what_it_lacked(world, instance):
    defs = defs_for(world)
    history(world, count_20=3, count_25=0)
    running(world, 600)
    result = tick(defs, instance)
    assert world.messages == []
    assert "not judged, too little history: staging DemoFlow/train: 3 of 5 succeeded runs" in result.skip_message


def test_an_execution_running_long_is_warned_once(world, instance):
    defs = defs_for(world, min_history=3)
    env = world.settings.environments["staging"]
    for i in range(3):
        name = f"usual-{i}-{uuid.uuid4().hex[:6]}"
        world.run_flow("staging", name, width=1)
        world.control("execution-times", {"environment": "staging", "name": name,
                                          "started_minutes_ago": 300 - i * 20, "ran_minutes": 10})
    hung = f"hung-{uuid.uuid4().hex[:6]}"
    world.fault(fault="running", run_id=hung, step="start")
    flows.trigger(world.sandbox.endpoint, env, width=1, name=hung)
    batch = world.batch("staging")
    deadline = time.monotonic() + 120  # a task is submitted within seconds; this is for a very busy machine
    while not batch.list_jobs(jobQueue=env.job_queues[0], jobStatus="RUNNING")["jobSummaryList"]:
        assert time.monotonic() < deadline, "the hung run's start task never ran"
        time.sleep(0.2)
    world.control("execution-times", {"environment": "staging", "name": hung, "started_minutes_ago": 125})

    with count_calls() as calls:
        first = tick(defs, instance)
    [message] = world.messages  # the execution; its start task just began, under min_minutes
    assert "mlplatform.test.feature_x.DemoFlow" in message["text"] and hung in message["text"]
    assert "running 2h" in message["text"] and "usually 10m (p95 of 3 runs)" in message["text"]  # 2h5m + the tick
    assert "<@U0ALICE>" in message["text"]
    buttons = [b for b in message["blocks"] if b["type"] == "actions"][0]["elements"]
    assert buttons[1]["url"] == f"https://metaflow.example.com/DemoFlow/sfn-{hung}"
    assert calls["SFN.DescribeStateMachine"] == 1 and "Batch.DescribeJobs" not in calls  # the owner, once
    tick(defs, instance, first.cursor)
    assert len(world.messages) == 1


def test_a_warning_slack_refused_is_said_on_the_next_tick_once(world, instance):
    defs = defs_for(world)
    history(world)
    running(world, 130)
    world.sandbox.sink.state.faults.append({"kind": "error", "error": "fatal_error",
                                            "when": {"method": "chat.postMessage"}})
    with pytest.raises(Exception, match="Slack"):
        tick(defs, instance)  # the tick fails (the UI shows it) and stores nothing
    assert world.messages == []
    second = tick(defs, instance)
    assert len(world.messages) == 1 and "usually 25m" in world.messages[0]["text"]
    tick(defs, instance, second.cursor)
    tick(defs, instance)
    assert len(world.messages) == 1


def test_one_environment_broken_does_not_stop_the_other(world, instance):
    defs = defs_for(world)
    history(world)
    history(world, environment="production")
    running(world, 130)
    prod_job = running(world, 130, environment="production")
    world.control("aws-faults", {"kind": "deny-assume-role", "account": "222222222222"})
    with pytest.raises(Exception, match="production: .*AccessDenied"):
        tick(defs, instance)
    assert [m["text"] for m in world.messages if "in staging" in m["text"]] and len(world.messages) == 1
    world.sandbox.aws_faults.denied_accounts.clear()
    result = tick(defs, instance)
    assert len(world.messages) == 2 and "in production" in world.messages[1]["text"]
    assert json.loads(result.cursor)["warned"]["production"] == [prod_job]


def test_the_sensor_runs_when_the_settings_say_so_at_its_interval(sandbox_settings):
    sensor = build_defs(sandbox_settings).resolve_sensor_def(SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING  # the sandbox turns sensors on
    assert sensor.minimum_interval_seconds == sandbox_settings.runtime.interval_minutes * 60
    off = dataclasses.replace(sandbox_settings, dagster=dataclasses.replace(sandbox_settings.dagster,
                                                                            sensors_running=False))
    assert build_defs(off).resolve_sensor_def(SENSOR).default_status == dg.DefaultSensorStatus.STOPPED
