"""Metaflow-shaped Step Functions runs in the sandbox behave as on AWS: a Map of
batch:submitJob.sync tasks really submits jobs, in the state machine's own account, and a failed
task fails the execution with States.TaskFailed carrying the job JSON as cause."""

import json
import re
import time

import pytest

from platform_ops.sandbox import flows
from platform_ops.sandbox.world import account_client


def sfn(world, environment):
    env = world.settings.environments[environment]
    return account_client(world.sandbox.endpoint, "stepfunctions", env.account_id, env.region)


def execution_arn(world, environment, name):
    env = world.settings.environments[environment]
    return f"arn:aws:states:{env.region}:{env.account_id}:execution:{flows.DEPLOYMENTS[environment].name}:{name}"


DEADLINE = 120  # seconds: a condition that holds takes well under one; this is for a busy machine


def wait_for(world, environment, name, until=lambda d: d["status"] != "RUNNING"):
    client, arn = sfn(world, environment), execution_arn(world, environment, name)
    deadline = time.monotonic() + DEADLINE
    while not until(description := client.describe_execution(executionArn=arn)):
        assert time.monotonic() < deadline, f"{name}: still {description['status']} after {DEADLINE} s"
        time.sleep(0.2)
    return description


def history(world, environment, name):
    return sfn(world, environment).get_execution_history(
        executionArn=execution_arn(world, environment, name), maxResults=1000)["events"]


def submitted_jobs(events):
    return [json.loads(e["taskSubmittedEventDetails"]["output"])["JobId"]
            for e in events if e["type"] == "TaskSubmitted"]


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_a_foreach_run_submits_every_task_and_succeeds(world, environment):
    flows.trigger(world.sandbox.endpoint, world.settings.environments[environment], width=3, name="ok-run")
    assert wait_for(world, environment, "ok-run")["status"] == "SUCCEEDED"
    submitted = [json.loads(e["taskSubmittedEventDetails"]["output"])
                 for e in history(world, environment, "ok-run") if e["type"] == "TaskSubmitted"]
    assert len(submitted) == 1 + 3 + 2  # start, 3 x train, join, end
    jobs = world.describe(environment, [s["JobId"] for s in submitted])
    assert {j["jobName"] for j in jobs.values()} == {f"SFN-DemoFlow--{s}--" for s in ("start", "train", "join", "end")}
    assert all(j["status"] == "SUCCEEDED" for j in jobs.values())
    env = world.settings.environments[environment]
    assert all(f":{env.account_id}:job-queue/{env.job_queues[0]}" in j["jobQueue"] for j in jobs.values())
    assert {j["parameters"]["metaflow.run_id"] for j in jobs.values()} == {"ok-run"}


def test_a_failed_task_fails_the_execution_with_the_job_json_as_cause(world):
    world.fault(fault="oom", run_id="oom-run", step="train", index=1)
    flows.trigger(world.sandbox.endpoint, world.settings.environments["production"], width=3, name="oom-run")
    description = wait_for(world, "production", "oom-run")
    assert description["status"] == "FAILED"
    assert description["error"] == "States.TaskFailed"
    cause = json.loads(description["cause"])
    assert cause["JobName"] == "SFN-DemoFlow--train--"
    assert cause["Status"] == "FAILED"
    assert cause["JobQueue"] == "arn:aws:batch:us-east-1:222222222222:job-queue/ml-production"
    assert cause["Attempts"][-1]["Container"]["ExitCode"] == 137
    assert cause["Parameters"]["metaflow.owner"] == "alice"
    types = [e["type"] for e in history(world, "production", "oom-run")]
    assert "MapIterationFailed" in types and types.count("TaskFailed") >= 1
    failed = [e for e in history(world, "production", "oom-run") if e["type"] == "TaskFailed"][0]
    assert failed["taskFailedEventDetails"]["error"] == "States.TaskFailed"


def test_a_stuck_task_keeps_the_run_waiting_until_cancelled_then_it_fails_with_the_reason(world):
    world.fault(fault="stuck", run_id="stuck-run", step="train", index=0, created_minutes_ago=150)
    flows.trigger(world.sandbox.endpoint, world.settings.environments["staging"], width=2, name="stuck-run")
    deadline = time.monotonic() + DEADLINE
    while not (stuck := world.batch().list_jobs(jobQueue="ml-staging", jobStatus="RUNNABLE")["jobSummaryList"]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # the task waits on a job that cannot start: once its submission is in the history, the run is
    # RUNNING with nothing failed, however long anything took (no sleep stands in for "waited")
    while stuck[0]["jobId"] not in submitted_jobs(events := history(world, "staging", "stuck-run")):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert not [e for e in events if e["type"] in ("TaskFailed", "MapIterationFailed", "ExecutionFailed")]
    assert sfn(world, "staging").describe_execution(
        executionArn=execution_arn(world, "staging", "stuck-run"))["status"] == "RUNNING"
    world.batch().cancel_job(jobId=stuck[0]["jobId"], reason="platform-ops reaper: RUNNABLE for 2h30m > 2h0m (X)")
    description = wait_for(world, "staging", "stuck-run")
    assert description["status"] == "FAILED"
    assert json.loads(description["cause"])["StatusReason"] == "platform-ops reaper: RUNNABLE for 2h30m > 2h0m (X)"


def test_a_reset_stops_the_runs_of_the_world_it_wipes(world):
    """moto's reset keeps its interpreter threads: a run cut short used to go on polling Batch for
    a job that was gone and, once a poll failed, announce its failure into the next world (the
    fault suite's throttled row then alerted on an execution nobody could describe). Now reset
    returns only once every run has stopped, and their ends publish nothing."""
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    world.fault(fault="stuck", run_id="wiped", step="train", index=0, created_minutes_ago=150)
    env = world.settings.environments["production"]  # event-driven: an end would be published
    flows.trigger(world.sandbox.endpoint, env, width=1, name="wiped")
    deadline = time.monotonic() + DEADLINE
    while "wiped" not in [j["parameters"].get("metaflow.run_id") for j in world.describe(
            "production", [s["jobId"] for s in world.batch("production").list_jobs(
                jobQueue="ml-production", jobStatus="RUNNABLE")["jobSummaryList"]] or ["none"]).values()]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    [running] = [ex for machine in stepfunctions_parser_backends[env.account_id][env.region].state_machines
                 for ex in machine.executions if ex.name == "wiped"]
    world.control("reset", {})
    assert running.exec_status.value != "RUNNING"  # stopped (moto records the cut-short poll as FAILED)
    sqs = world.resources()["aws_production"].client("sqs")
    url = sqs.get_queue_url(QueueName="platform-ops-events")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "0"
    machine = execution_arn(world, "production", "x").replace(":execution:", ":stateMachine:").rsplit(":", 1)[0]
    assert sfn(world, "production").list_executions(stateMachineArn=machine)["executions"] == []


def test_execution_history_pages_like_aws(world):
    """GetExecutionHistory: maxResults (default 100, at most 1000) with nextToken; reverseOrder."""
    flows.trigger(world.sandbox.endpoint, world.settings.environments["staging"], width=3, name="paged")
    wait_for(world, "staging", "paged")
    client, arn = sfn(world, "staging"), execution_arn(world, "staging", "paged")
    everything = client.get_execution_history(executionArn=arn, maxResults=1000)["events"]
    pages, kwargs = [], {"executionArn": arn, "maxResults": 7}
    while True:
        page = client.get_execution_history(**kwargs)
        pages.append(page["events"])
        if "nextToken" not in page:
            break
        kwargs["nextToken"] = page["nextToken"]
    assert [e["id"] for p in pages for e in p] == [e["id"] for e in everything]
    assert all(len(p) == 7 for p in pages[:-1]) and len(pages) == -(-len(everything) // 7)
    newest = client.get_execution_history(executionArn=arn, maxResults=1, reverseOrder=True)["events"][0]
    assert newest["type"] == "ExecutionSucceeded"


def test_published_versions_are_listed_newest_first_and_stay_describable(world):
    """CreateStateMachine/UpdateStateMachine with publish=True make numbered versions;
    ListStateMachineVersions lists them newest first; each version keeps its own definition."""
    client = sfn(world, "production")
    definition = {"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}}
    created = client.create_state_machine(name="mlplatform.prod.VersionedFlow", definition=json.dumps(definition),
                                          roleArn="arn:aws:iam::222222222222:role/mf-sfn", publish=True,
                                          versionDescription="promotion p-1")
    definition["States"]["A"]["Comment"] = "v2"
    client.update_state_machine(stateMachineArn=created["stateMachineArn"], definition=json.dumps(definition),
                                publish=True, versionDescription="promotion p-2")
    versions = client.list_state_machine_versions(stateMachineArn=created["stateMachineArn"])["stateMachineVersions"]
    assert [v["stateMachineVersionArn"].rsplit(":", 1)[-1] for v in versions] == ["2", "1"]
    first = client.describe_state_machine(stateMachineArn=versions[1]["stateMachineVersionArn"])
    assert "Comment" not in json.loads(first["definition"])["States"]["A"]
    page = client.list_state_machine_versions(stateMachineArn=created["stateMachineArn"], maxResults=1)
    assert len(page["stateMachineVersions"]) == 1 and "nextToken" in page


def test_an_unnamed_execution_gets_a_uuid_name_as_on_aws(world):
    """`step-functions trigger` starts runs without a name; AWS names them with a UUID, which
    becomes Metaflow's run id (`$$.Execution.Name`)."""
    client = sfn(world, "production")
    definition = {"StartAt": "A", "States": {"A": {"Type": "Pass", "Parameters": {"run.$": "$$.Execution.Name"},
                                                   "End": True}}}
    created = client.create_state_machine(name="mlplatform.prod.UnnamedFlow", definition=json.dumps(definition),
                                          roleArn="arn:aws:iam::222222222222:role/mf-sfn")
    arn = client.start_execution(stateMachineArn=created["stateMachineArn"], input="{}")["executionArn"]
    name = arn.rsplit(":", 1)[-1]
    assert re.fullmatch(r"[0-9a-f-]{36}", name), arn
    deadline = time.monotonic() + DEADLINE
    while (done := client.describe_execution(executionArn=arn))["status"] == "RUNNING":
        assert time.monotonic() < deadline, f"{arn} still RUNNING after {DEADLINE} s"
        time.sleep(0.1)
    assert json.loads(done["output"]) == {"run": name}
