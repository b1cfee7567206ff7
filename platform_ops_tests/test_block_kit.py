"""Every Slack message platform-ops builds, rendered through the public builders from data shaped
like AWS returns it, passes slack_sdk's own Block Kit models (`Block.parse(b).validate_json()`, and
the same for every element, text and field inside a block, which slack_sdk does not recurse into)
as well as our own limits: our limits are what we believe Slack refuses, slack_sdk is Slack's."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models import JsonObject
from slack_sdk.models.blocks import Block

from platform_ops.adapters.batch import job_from_api
from platform_ops.alerts import core as alerts
from platform_ops.alerts import streaks
from platform_ops.health import core as health
from platform_ops.messages import MAX_BLOCKS, MAX_HEADER_CHARS, MAX_SECTION_CHARS, MAX_TEXT_CHARS, SlackMessage
from platform_ops.observations import CancelResult, Execution
from platform_ops.promotion import core as promotion
from platform_ops.reaper import core as reaper

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
ACCOUNT = "222222222222"
MACHINE = "mlplatform.prod.DemoFlow"
LINKS = alerts.Links("https://metaflow.example.com", "https://dagster.example.com/runs/0f1e2d3c", {"alice": "U0ALICE"})


def slack_sdk_errors(block: dict) -> list[str]:
    """What slack_sdk's models refuse in `block`: its own checks and those of everything inside."""
    parsed = Block.parse(block)
    if parsed is None or type(parsed) is Block:
        return [f"slack_sdk knows no block of type {block.get('type')!r}"]
    errors = []
    for obj in _inside(parsed):
        try:
            obj.validate_json()
        except SlackObjectFormationError as exc:
            errors.append(f"{type(obj).__name__}: {exc}")
    if not errors and parsed.to_dict() != block:  # a key slack_sdk does not model: dropped, or refused by Slack
        errors.append(f"slack_sdk reads the block as {parsed.to_dict()}")
    return errors


def _inside(obj: JsonObject):
    yield obj
    for value in vars(obj).values():
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, JsonObject):
                yield from _inside(item)


def assert_valid(message: SlackMessage) -> None:
    assert message.blocks and len(message.blocks) <= MAX_BLOCKS
    assert 0 < len(message.text) <= MAX_TEXT_CHARS
    problems = {i: errors for i, b in enumerate(message.blocks) if (errors := slack_sdk_errors(b))}
    assert problems == {}, problems


# ---- real-shaped data: Step Functions histories of Metaflow runs, Batch DescribeJobs items ----

def execution(name="e4ecf027-0498-41b8-a309-34dceaf6ebd7", status="FAILED", error="States.TaskFailed", cause="",
              machine=MACHINE) -> Execution:
    return Execution(arn=f"arn:aws:states:us-east-1:{ACCOUNT}:execution:{machine}:{name}", name=name,
                     state_machine_arn=f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:{machine}", status=status,
                     started_at=T0, stopped_at=T0 + timedelta(minutes=7), error=error, cause=cause)


def failed_job(job_id: str, step="train", exit_code: int | None = 1, reason: str | None = None,
               status_reason="Essential container in task exited", flow="DemoFlow") -> dict:
    """A TaskFailed cause: the DescribeJobs job, PascalCase, as Step Functions writes it."""
    container: dict[str, Any] = {"LogStreamName": f"metaflow_0123abcd/default/{job_id}"}
    if exit_code is not None:
        container["ExitCode"] = exit_code
    if reason:
        container["Reason"] = reason
    return {"JobArn": f"arn:aws:batch:us-east-1:{ACCOUNT}:job/{job_id}", "JobId": job_id,
            "JobName": f"SFN-{flow}--{step}--",
            "JobQueue": f"arn:aws:batch:us-east-1:{ACCOUNT}:job-queue/ml-production",
            "Status": "FAILED", "StatusReason": status_reason,
            "Attempts": [{"Container": dict(container), "StatusReason": status_reason} for _ in range(3)],
            "Container": container,
            "Parameters": {"metaflow.owner": "alice", "metaflow.flow_name": flow, "metaflow.step_name": step,
                           "metaflow.run_id": "e4ecf027-0498-41b8-a309-34dceaf6ebd7"}}


def foreach_history(outcomes: list[dict | None], flow="DemoFlow") -> list[dict]:
    """start, then an inline Map over `train` with an iteration per outcome (None: succeeded)."""
    events: list[dict] = []

    def add(kind: str, previous: int, **details: Any) -> int:
        events.append({"id": len(events) + 1, "previousEventId": previous, "type": kind,
                       "timestamp": T0 + timedelta(seconds=len(events)), **details})
        return len(events)

    def task(state: str, previous: int, outcome: dict | None) -> int:
        entered = add("TaskStateEntered", previous, stateEnteredEventDetails={"name": state})
        params = {"JobName": f"SFN-{flow}--{state}--",
                  "Parameters": {"metaflow.step_name": state, "metaflow.owner": "alice", "metaflow.flow_name": flow}}
        scheduled = add("TaskScheduled", entered, taskScheduledEventDetails={
            "resourceType": "batch", "resource": "submitJob.sync", "parameters": json.dumps(params)})
        job_id = outcome["JobId"] if outcome else f"{state}-{len(events):04}"
        submitted = add("TaskSubmitted", scheduled, taskSubmittedEventDetails={
            "resourceType": "batch", "resource": "submitJob.sync",
            "output": json.dumps({"JobId": job_id, "JobName": f"SFN-{flow}--{state}--"})})
        if outcome is None:
            return add("TaskSucceeded", submitted, taskSucceededEventDetails={"resourceType": "batch"})
        return add("TaskFailed", submitted, taskFailedEventDetails={
            "resourceType": "batch", "resource": "submitJob.sync", "error": "States.TaskFailed",
            "cause": json.dumps(outcome)})

    add("ExecutionStarted", 0, executionStartedEventDetails={"input": '{"Parameters": "{}"}'})
    last = task("start", 1, None)
    started = add("MapStateStarted", add("MapStateEntered", last, stateEnteredEventDetails={"name": "*train"}),
                  mapStateStartedEventDetails={"length": len(outcomes)})
    ends = [task("train", add("MapIterationStarted", started, mapIterationStartedEventDetails={"index": i}), o)
            for i, o in enumerate(outcomes)]
    failed = [(end, o) for end, o in zip(ends, outcomes, strict=True) if o is not None]
    if failed:
        map_failed = add("MapStateFailed", add("MapIterationFailed", failed[0][0]))
        add("ExecutionFailed", map_failed, executionFailedEventDetails={
            "error": "States.TaskFailed", "cause": json.dumps(failed[0][1])})
    return events


def incident(outcomes: list[dict | None], ex: Execution | None = None, flow="DemoFlow") -> alerts.Incident:
    return alerts.drill_down(ex or execution(), foreach_history(outcomes, flow), "production")


OOM = "OutOfMemoryError: Container killed due to memory usage"
SPOT = "Host EC2 (instance i-0a1b2c3d4e5f60718) terminated."
MIXED = [None, failed_job("a1", exit_code=137, reason=OOM), failed_job("a2"),
         failed_job("a3", exit_code=137, reason=OOM), failed_job("a4", exit_code=None, status_reason=SPOT), None]
LOG = ["loading features into memory", "Traceback (most recent call last):",
       '  File "flow.py", line 12, in train', "MemoryError: <unable to allocate 12.0 GiB> & more"]


def runnable_job(job_id: str, minutes: int, reason: str) -> dict:
    """A DescribeJobs item (camelCase) of a Metaflow task stuck in RUNNABLE."""
    return {"jobArn": f"arn:aws:batch:us-east-1:{ACCOUNT}:job/{job_id}", "jobName": "SFN-DemoFlow--train--",
            "jobId": job_id, "jobQueue": f"arn:aws:batch:us-east-1:{ACCOUNT}:job-queue/ml-production",
            "status": "RUNNABLE", "statusReason": reason,
            "createdAt": int((T0 - timedelta(minutes=minutes)).timestamp() * 1000), "attempts": [], "dependsOn": [],
            "jobDefinition": f"arn:aws:batch:us-east-1:{ACCOUNT}:job-definition/metaflow_0123abcd:7",
            "parameters": {"metaflow.owner": "alice", "metaflow.flow_name": "DemoFlow", "metaflow.step_name": "train"},
            "tags": {}, "container": {"vcpus": 96, "memory": 4096}}


RESOURCE = ("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job resource requirement (vCPU/memory/GPU) is "
            "higher than that can be met by the CE(s) attached to the job queue.")
CAPACITY = ("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - Service cannot fulfill the capacity requested for instance "
            "type [m5.2xlarge]")


def reap_report(count: int, dry_run: bool = False, max_cancels: int = 50) -> SlackMessage:
    policy = reaper.ReapPolicy(timedelta(hours=2), dry_run, max_cancels, "platform-ops:protect")
    details = {j.job_id: j for j in (job_from_api(runnable_job(f"0f1e2d3c-{i:04}-4000-8000-00000000000{i % 10}",
                                                                130 + i, RESOURCE if i % 3 else CAPACITY))
                                      for i in range(count))}
    plan = reaper.plan_reap(list(details), details, policy, T0)
    cancelled = [d.job_id for d in plan.with_action(reaper.Outcome.CANCEL)]
    errors = {cancelled[0]: "ClientException: Job is not in a cancellable state"} if cancelled else {}
    after = {job_id: job_from_api({**runnable_job(job_id, 200, ""), "status": "FAILED",
                                   "statusReason": "platform-ops reaper: RUNNABLE for 3h > 2h"})
             for job_id in cancelled[1:]}
    results = [dataclasses.replace(r, owner="alice" if i % 2 else "bob <b>") for i, r in
               enumerate(reaper.verify(plan, CancelResult(tuple(cancelled[1:]), errors), after))]
    block = reaper.QueueBlock("ml-production", next(iter(details)), T0 - timedelta(hours=3), RESOURCE)
    return reaper.report("production", "ml-production", policy, plan, results, ctx=reaper.ReportContext(
        "us-east-1", {"alice": "U0ALICE"}, block, "https://dagster.example.com/runs/0f1e2d3c"))


def streak(failures: int = 3) -> streaks.Streak:
    """A streak opened by an incident message, failed on, and read back from the ledger as JSON."""
    start = int(T0.timestamp() * 1000)
    opened = streaks.Streak.opened("1764320400.000100", "1764320400.000100", "e4ecf027", start,
                                   alerts.render_incident(incident(MIXED), LINKS, LOG))
    for i in range(1, failures):
        opened = opened.with_failure(f"run-{i}", start + i * 3_600_000)
    return streaks.Streak.from_record(json.loads(json.dumps(opened.record())))


HOURS_LATER = int((T0 + timedelta(hours=26)).timestamp() * 1000)

PROD_SM = f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:{MACHINE}"


def promotion_announcement(checks: list[promotion.CheckResult], steps: list[promotion.StepResult],
                           kind: str = promotion.Kind.PROMOTION, **target: str) -> SlackMessage | None:
    """An attempt's announcement from its record as S3 stores it (to_dict, JSON)."""
    request = promotion.PromotionRequest("DemoFlow", "mlplatform", "feature_x" if kind == "promotion" else None,
                                         "alice & <!here>", "new model " * 300)
    record = promotion.new_record(kind, request, run_id="0f1e2d3c4b5a6978", started=T0, dagster_user="alice",
                                  target={"state_machine_arn": PROD_SM, **target}, lint_isolation="namespaces")
    record.source = {"state_machine_arn": PROD_SM.replace("prod", "test.feature_x"),
                     "latest_run_arn": f"arn:aws:states:us-east-1:{ACCOUNT}:execution:x:staging-ok"}
    record.checks, record.steps = checks, steps
    promotion.conclude(record, T0.isoformat())
    links = promotion.announcement_links("https://dagster.example.com/runs/0f1e2d3c", "audit",
                                         f"promotions/DemoFlow/{record.promotion_id}.json", PROD_SM)
    return promotion.render_announcement(json.loads(json.dumps(record.to_dict())), links)


PASSED = [promotion.CheckResult(n, True, "ok") for n in ("lint", "naming", "latest staging run")]
DEPLOYED = promotion.StepResult("deploy", True, "updated, published 2", changed=True)

MESSAGES = {
    "incident": lambda: alerts.render_incident(incident(MIXED), LINKS, LOG),
    "incident, unknown owner, no logs": lambda: alerts.render_incident(incident(MIXED), alerts.Links("https://mf")),
    "incident, 300 failed tasks and 200 log lines with fences": lambda: alerts.render_incident(
        incident([failed_job(f"j{i:03}", exit_code=137, reason=OOM) for i in range(300)] + [None] * 3), LINKS,
        [f"line {i} {'x' * 300} ``` & <tag>" for i in range(200)]),
    "incident, 40 failed steps": lambda: alerts.render_incident(dataclasses.replace(
        incident(MIXED), steps=tuple(alerts.StepSummary(f"step_{i}", 10, 1 + i % 3, (("exit 1", 1), (OOM, 2)))
                                     for i in range(40))), LINKS),
    "incident, 40 kB status reason": lambda: alerts.render_incident(
        incident([failed_job("huge", status_reason="x & y " * 7000)]), LINKS),
    "incident, timed out before any job": lambda: alerts.render_incident(alerts.drill_down(
        execution(status="TIMED_OUT", error="States.Timeout", cause="c & " * 20_000),
        foreach_history([])[:1], "production"), LINKS),
    "digest of 80 runs": lambda: alerts.render_digest([incident(MIXED)] * 80, LINKS),
    "recovery": lambda: alerts.render_recovery(execution(status="SUCCEEDED", error=""), "DemoFlow", LINKS),
    "platform-ops run failure": lambda: alerts.render_run_failure(
        "reap_stuck_jobs", "0f1e2d3c-0000", "Traceback ``` " + "boto error & " * 500,
        "https://dagster.example.com/runs/0f1e2d3c"),
    "streak, updated": lambda: streaks.render_update(streak(), HOURS_LATER),
    "streak, resolved": lambda: streaks.render_resolved(streak(), "sfn-run-9", HOURS_LATER),
    "streak, reminder over a digest of 80": lambda: streaks.as_reminder(
        alerts.render_digest([incident(MIXED)] * 80, LINKS), streak(), HOURS_LATER),
    "promotion, promoted": lambda: promotion_announcement(PASSED, [DEPLOYED], version_arn=f"{PROD_SM}:2",
                                                          previous_version_arn=f"{PROD_SM}:1"),
    "promotion, blocked by 40 checks with 40 kB of lint output": lambda: promotion_announcement(
        [promotion.CheckResult(f"definition: rule_{i}", False, "``` <x> & " * 4000) for i in range(40)], []),
    "promotion, failed deploy": lambda: promotion_announcement(
        PASSED, [promotion.StepResult("deploy", False, "AccessDeniedException: " + "y" * 5000)]),
    "promotion, rolled back": lambda: promotion_announcement(
        [promotion.CheckResult("version", True, "restore version 1")], [DEPLOYED], kind=promotion.Kind.ROLLBACK,
        version_arn=f"{PROD_SM}:3", previous_version_arn=f"{PROD_SM}:2", restored_version_arn=f"{PROD_SM}:1"),
    "reap report, 500 jobs, breaker tripped": lambda: reap_report(500),
    "reap report, dry run": lambda: reap_report(3, dry_run=True),
    "reap report, a cancel failed": lambda: reap_report(4),
    "health: failing ticks": lambda: health.problem_message(
        health.Problem(health.ProblemKind.FAILING_TICKS, "failed_executions_sensor", T0, 5,
                       "Traceback (most recent call last):\n" + "  botocore & <ClientError> " * 400),
        "https://dagster.example.com/locations/platform_ops/sensors/failed_executions_sensor"),
    "health: resolved": lambda: health.resolved_message(
        health.Problem(health.ProblemKind.FAILING_RUNS, "reap_stuck_jobs", T0, 3), "1h 20m"),
}


@pytest.mark.parametrize("name", MESSAGES)
def test_every_message_passes_slack_sdks_block_kit_models(name):
    assert_valid(MESSAGES[name]())


def test_the_check_catches_what_slack_would_refuse():
    section = {"type": "section", "text": {"type": "mrkdwn", "text": "x" * MAX_SECTION_CHARS}}
    assert slack_sdk_errors(section) == []
    too_long = {"type": "section", "text": {"type": "mrkdwn", "text": "x" * (MAX_SECTION_CHARS + 1)}}
    assert slack_sdk_errors(too_long) == ["SectionBlock: text attribute cannot exceed 3000 characters"]
    header = {"type": "header", "text": {"type": "plain_text", "text": "x" * (MAX_HEADER_CHARS + 1)}}
    assert slack_sdk_errors(header) == ["HeaderBlock: text attribute cannot exceed 150 characters"]
    # inside a block: slack_sdk's block check alone passes these
    button = {"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text", "text": "x" * 76},
                                               "url": "https://example.com/" + "x" * 3000}]}
    assert Block.parse(button).validate_json() is None
    assert slack_sdk_errors(button) == ["ButtonElement: text attribute cannot exceed 75 characters"]
    assert slack_sdk_errors({"type": "sektion", "text": {"type": "mrkdwn", "text": "x"}}) == [
        "slack_sdk knows no block of type 'sektion'"]
    assert slack_sdk_errors({"type": "section", "text": {"type": "mrkdwn", "text": "x"}, "colour": "red"})


def test_a_message_that_would_be_over_the_limits_is_cut_by_its_builder():
    """The builders cut, rather than Slack refusing the whole alert: a 200-character flow name in
    the header; 80 kB of execution cause, which escaping doubles (& is &amp;), in a section."""
    flow = "Demo" + "Flow" * 49
    message = alerts.render_incident(incident([failed_job("huge", status_reason="x & y " * 7000, flow=flow)],
                                              flow=flow), LINKS)
    assert_valid(message)
    header = message.blocks[0]
    assert len(header["text"]["text"]) == MAX_HEADER_CHARS  # cut
    assert slack_sdk_errors({**header, "text": {**header["text"], "text": f":red_circle: {flow} failed"}})  # uncut
    timed_out = MESSAGES["incident, timed out before any job"]()
    assert_valid(timed_out)
    error = next(b for b in timed_out.blocks if b.get("text", {}).get("text", "").startswith("*Execution error*"))
    assert "c &amp; c" in error["text"]["text"] and len(error["text"]["text"]) == MAX_SECTION_CHARS  # cut
