"""The reaper end to end over the wire: sensor tick -> run -> cancellations -> one Slack report."""

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from platform_ops.adapters.aws import AwsEnvironmentResource, count_calls
from platform_ops.code_location import build_defs
from platform_ops.reaper import defs as reaper_defs
from platform_ops.sandbox.server import SANDBOX_TOKEN
from platform_ops.vocabulary import format_duration, reap_run_of


def settings_with(world, **reaper):
    return dataclasses.replace(world.settings, reaper=dataclasses.replace(world.settings.reaper, **reaper))


def tick(defs, resources=None, instance=None):
    sensor = defs.resolve_sensor_def("stuck_jobs_sensor")
    with dg.build_sensor_context(instance=instance or dg.DagsterInstance.ephemeral(),  # the watch lives there
                                 resources=resources or defs.resources, sensor_name="stuck_jobs_sensor") as ctx:
        return sensor.evaluate_tick(ctx)


def run(defs, request, instance=None, **kwargs):
    job = defs.resolve_job_def("reap_stuck_jobs")
    return job.execute_in_process(run_config=request.run_config, tags=request.tags, instance=instance, **kwargs)


def run_metadata(result):
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return event.event_specific_data.metadata


def requested_ids(request):
    return request.run_config["ops"]["reap"]["config"]["job_ids"]


def test_tick_requests_one_run_per_queue_with_only_the_stuck_jobs(world):
    staging_stuck = world.stuck("staging", count=3)
    world.stuck("staging", count=2, minutes=30)  # RUNNABLE, under the threshold
    prod_stuck = world.stuck("production", count=2, minutes=125)
    world.submit("production", count=3)  # healthy
    defs = build_defs(world.settings)
    with count_calls() as calls:
        result = tick(defs)
    by_queue = {r.tags["platform_ops/queue"]: r for r in result.run_requests}
    assert sorted(requested_ids(by_queue["ml-staging"])) == sorted(staging_stuck)
    assert sorted(requested_ids(by_queue["ml-production"])) == sorted(prod_stuck)
    assert by_queue["ml-production"].tags["platform_ops/environment"] == "production"
    assert dict(calls) == {"Batch.ListJobs": 2, "STS.AssumeRole": 1}  # the sensor never cancels
    again = tick(defs)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in result.run_requests]
    assert all(j["status"] == "RUNNABLE" for j in world.describe("staging", staging_stuck).values())


def test_tick_with_nothing_stuck_skips_and_says_why(world):
    world.stuck(count=2, minutes=10)
    result = tick(build_defs(world.settings))
    assert result.run_requests == [] and "no stuck jobs among 2 RUNNABLE" in result.skip_message


def test_a_missing_queue_is_reported_and_the_other_queues_still_processed(world):
    env = world.settings.environments["staging"]
    settings = dataclasses.replace(world.settings, environments={
        **world.settings.environments,
        "staging": dataclasses.replace(env, job_queues=("ml-nope", "ml-staging"))})
    defs = build_defs(settings)
    stuck = world.stuck(count=1)
    result = tick(defs)
    assert [requested_ids(r) for r in result.run_requests] == [stuck]
    world.control("reset", {})
    with pytest.raises(Exception, match="staging/ml-nope: ClientException: Job queue ml-nope does not exist"):
        tick(defs)


def test_one_environments_aws_failure_does_not_stop_the_other(world):
    defs = build_defs(world.settings)
    broken = AwsEnvironmentResource(environment="production", account_id="222222222222", region_name="us-east-1",
                                    role_arn="arn:aws:iam::222222222222:role/platform-ops",
                                    endpoint_url="http://127.0.0.1:9", max_attempts=1)
    stuck = world.stuck("staging", count=2)
    result = tick(defs, resources={**defs.resources, "aws_production": broken})
    assert [sorted(requested_ids(r)) for r in result.run_requests] == [sorted(stuck)]
    world.control("reset", {})
    with pytest.raises(Exception, match="production/ml-production: EndpointConnectionError"):
        tick(defs, resources={**defs.resources, "aws_production": broken})


def test_reap_cancels_stuck_jobs_skips_protected_and_reports_once(world):
    stuck = world.stuck(count=3, tags={"metaflow.owner": "alice"})
    protected = world.stuck(count=1, tags={"platform-ops:protect": "quarterly backfill - ask bob",
                                           "metaflow.owner": "bob"})
    defs = build_defs(world.settings)
    [request] = tick(defs).run_requests
    assert sorted(requested_ids(request)) == sorted(stuck + protected)
    before = datetime.now(UTC)
    with dg.instance_for_test() as instance, count_calls() as calls:
        result = run(defs, request, instance=instance)
        posted = reaper_defs.report_message(instance, result.run_id)
        tags = instance.get_run_by_id(result.run_id).tags
    decided_by = datetime.now(UTC)
    assert result.success
    # describe candidates, cancel once (one category, <= 50 ids), describe to verify
    assert dict(calls) == {"Batch.DescribeJobs": 2, "Batch.CancelJobs": 1}
    after = world.describe("staging", stuck + protected)
    # the reason gives the youngest job's age when the run decided: 2h30m on a quick machine, a
    # minute or more later on a slow one; the bounds come from the run's own start and end
    youngest = max(datetime.fromtimestamp(after[j]["createdAt"] / 1000, tz=UTC) for j in stuck)
    minutes = range(int((before - youngest).total_seconds() // 60), int((decided_by - youngest).total_seconds() // 60) + 1)
    reasons = {f"platform-ops reaper: RUNNABLE for {format_duration(timedelta(minutes=m))} > 2h0m "
               f"(MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT) (reap {result.run_id})" for m in minutes}
    assert minutes[0] >= 150 and len({after[j]["statusReason"] for j in stuck}) == 1  # one CancelJobs, one reason
    for job_id in stuck:
        assert after[job_id]["status"] == "FAILED"
        assert after[job_id]["statusReason"] in reasons
        assert reap_run_of(after[job_id]["statusReason"]) == result.run_id  # alerting threads under its report
    assert after[protected[0]]["status"] == "RUNNABLE"
    meta = run_metadata(result)
    assert meta["cancelled"].value == 3
    rows = {r.data["job_id"]: r.data["result"] for r in meta["jobs"].value.records}
    assert rows == {**{j: "cancelled" for j in stuck}, protected[0]: "skipped: protected by tag"}
    assert meta["aws_calls"].value == {"Batch.DescribeJobs": 2, "Batch.CancelJobs": 1}
    assert (tags["platform_ops/cancelled"], tags["platform_ops/candidates"], tags["platform_ops/slack_report"]) == (
        "3", "4", "sent")  # what the run did, beside what it was asked
    [message] = world.messages
    assert message["channel"] == "#ml-platform-alerts"
    assert message["text"].startswith("Reaper: Cancelled 3 stuck jobs in staging / ml-staging")
    body = json.dumps(message["blocks"])
    assert "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT" in body and "1 skipped: protected by tag" in body
    # whose jobs (alice is in slack.owners, bob is not), why one was kept, where to look
    assert "Owners: <@U0ALICE> 3, bob 1." in body
    assert "skipped: protected by tag (quarterly backfill - ask bob)" in body
    region = world.settings.environments["staging"].region
    assert f"<https://{region}.console.aws.amazon.com/batch/home?region={region}#jobs/detail/{stuck[0]}|" in body
    # what alerting threads under and updates: the posted report, by the run that cancelled
    assert posted == {"channel": "#ml-platform-alerts", "ts": message["ts"], "text": message["text"],
                      "blocks": message["blocks"]}


def test_a_reap_retried_after_a_failed_cancel_reports_every_job_it_cancelled_once(world, monkeypatch):
    """An AWS failure that outlasts botocore's attempts fails the op and its retry policy runs it
    again: the retry describes afresh, knows what the first attempt cancelled (the run's record),
    cancels only the rest and reports all of them, once."""
    import platform_ops.reaper.defs as reaper_defs

    monkeypatch.setattr(reaper_defs, "REAP_RETRY", dg.RetryPolicy(max_retries=1))  # no 30 s wait here
    too_big = world.stuck(count=2, minutes=200)  # the oldest: its category's CancelJobs goes first
    world.fault(fault="stuck", remaining=2, created_minutes_ago=150)
    no_capacity = world.submit(count=2)  # CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY: the second CancelJobs
    world.control("aws-faults", {"kind": "fail-operation", "service": "batch", "operation": "CancelJobs",
                                 "match": "INSUFFICIENT_INSTANCE_CAPACITY", "times": 1})
    defs = build_defs(world.settings)
    [request] = tick(defs).run_requests
    with dg.instance_for_test() as instance, count_calls() as calls:
        result = run(defs, request, instance=instance)
    assert result.success
    assert [e.event_type_value for e in result.all_events].count("STEP_UP_FOR_RETRY") == 1
    # attempt 1: describe, CancelJobs (accepted), CancelJobs (refused); attempt 2: describe, one
    # CancelJobs for the two still RUNNABLE, the verifying describe
    assert dict(calls) == {"Batch.DescribeJobs": 3, "Batch.CancelJobs": 3}
    after = world.describe("staging", too_big + no_capacity)
    assert {after[j]["status"] for j in too_big + no_capacity} == {"FAILED"}
    meta = run_metadata(result)
    assert meta["cancelled"].value == 4
    rows = {r.data["job_id"]: (r.data["result"], r.data["category"]) for r in meta["jobs"].value.records}
    assert rows == {**{j: ("cancelled", "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT") for j in too_big},
                    **{j: ("cancelled", "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY") for j in no_capacity}}
    [message] = world.messages
    assert message["text"].startswith("Reaper: Cancelled 4 stuck jobs in staging / ml-staging")


def test_a_job_that_raced_into_starting_is_not_cancelled_and_is_reported(world):
    stuck = world.stuck(count=2)
    defs = build_defs(world.settings)
    [request] = tick(defs).run_requests
    world.set_status("staging", stuck[0], "STARTING")  # placed between the tick and the run
    result = run(defs, request)
    after = world.describe("staging", stuck)
    assert after[stuck[0]]["status"] == "STARTING"
    assert after[stuck[1]]["status"] == "FAILED"
    rows = {r.data["job_id"]: r.data["result"] for r in run_metadata(result)["jobs"].value.records}
    assert rows[stuck[0]] == "not cancelled: moved on to STARTING"


def test_a_retried_job_back_in_runnable_is_not_killed_for_its_first_attempt(world):
    [retried] = world.stuck(minutes=600)
    defs = build_defs(world.settings)
    [request] = tick(defs).run_requests
    world.set_status("staging", retried, "RUNNABLE", attempt_stopped_minutes_ago=15)
    result = run(defs, request)
    assert world.describe("staging", [retried])[retried]["status"] == "RUNNABLE"
    rows = [r.data["result"] for r in run_metadata(result)["jobs"].value.records]
    assert rows == ["skipped: re-entered RUNNABLE after a retry, under the threshold"]


def test_dry_run_reports_and_cancels_nothing(world):
    stuck = world.stuck(count=2)
    defs = build_defs(settings_with(world, dry_run=True))
    [request] = tick(defs).run_requests
    with dg.instance_for_test() as instance, count_calls() as calls:
        result = run(defs, request, instance=instance)
        tags = instance.get_run_by_id(result.run_id).tags
    assert result.success and "Batch.CancelJobs" not in calls
    assert {j["status"] for j in world.describe("staging", stuck).values()} == {"RUNNABLE"}
    assert tags["platform_ops/would_cancel"] == "2" and "platform_ops/cancelled" not in tags  # what it did
    [message] = world.messages
    assert message["text"].startswith("Reaper: Would cancel 2 stuck jobs")


def test_breaker_cancels_none_past_the_cap_and_says_so_loudly(world):
    stuck = world.stuck(count=5)
    defs = build_defs(settings_with(world, max_cancels_per_run=2))
    [request] = tick(defs).run_requests
    result = run(defs, request)
    statuses = [j["status"] for j in world.describe("staging", stuck).values()]
    assert sorted(statuses) == ["FAILED", "FAILED", "RUNNABLE", "RUNNABLE", "RUNNABLE"]
    assert run_metadata(result)["breaker_tripped"].value is True
    [message] = world.messages
    assert "Breaker tripped" in message["text"]
    assert "5 stuck jobs > max_cancels_per_run 2; 3 left RUNNABLE" in json.dumps(message["blocks"])


def test_the_cancel_calls_stay_at_the_floor_for_many_jobs(world):
    stuck = world.stuck(count=120)
    defs = build_defs(settings_with(world, max_cancels_per_run=500))
    [request] = tick(defs).run_requests
    with count_calls() as calls:
        run(defs, request)
    # ceil(120/100) describes + ceil(120/50) cancels + ceil(120/100) verifying describes
    assert dict(calls) == {"Batch.DescribeJobs": 4, "Batch.CancelJobs": 3}
    assert {j["status"] for j in world.describe("staging", stuck[:100]).values()} == {"FAILED"}


def test_slack_429_is_retried_after_retry_after(world):
    world.stuck(count=1)
    world.sandbox.sink.state.faults.append({"kind": "rate_limit", "retry_after": 1})
    defs = build_defs(world.settings)
    [request] = tick(defs).run_requests
    assert run(defs, request).success
    assert len(world.messages) == 1
    assert world.sandbox.sink.state.requests == 2


def test_a_slack_failure_fails_the_run_but_keeps_the_record(world):
    stuck = world.stuck(count=2)
    world.sandbox.sink.state.faults.append({"kind": "error", "error": "channel_not_found"})
    defs = build_defs(world.settings)
    [request] = tick(defs).run_requests
    result = run(defs, request, raise_on_error=False)
    assert not result.success
    meta = run_metadata(result)
    assert meta["cancelled"].value == 2
    assert meta["slack_report"].value == "failed: chat.postMessage to #ml-platform-alerts: channel_not_found"
    assert {j["status"] for j in world.describe("staging", stuck).values()} == {"FAILED"}


def test_unknown_environment_in_run_config_is_a_clear_error(world):
    defs = build_defs(world.settings)
    job = defs.resolve_job_def("reap_stuck_jobs")
    result = job.execute_in_process(
        run_config={"ops": {"reap": {"config": {"environment": "prod", "queue": "ml-production", "job_ids": ["x"]}}}},
        raise_on_error=False)
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "environment 'prod' is not in the settings (known: staging, production)" in failure.message + str(
        failure.event_specific_data.error)


def test_secrets_never_reach_run_logs_or_metadata(world):
    world.stuck(count=1)
    with dg.instance_for_test() as instance:
        defs = build_defs(world.settings)
        [request] = tick(defs, instance=instance).run_requests
        result = run(defs, request, instance=instance)
        records = instance.all_logs(result.run_id)
        dump = "\n".join(str(r) for r in records)
        run_record = str(instance.get_run_by_id(result.run_id))
    assert result.success and len(records) > 5
    for secret in (SANDBOX_TOKEN, "sandbox"):
        assert secret not in run_record
    assert SANDBOX_TOKEN not in dump
    assert SANDBOX_TOKEN not in json.dumps(world.messages)


def _step(world, instance, root="root-run"):
    import logging

    from platform_ops.reaper import defs as reaper
    return reaper.ReapStep(instance, run_id=f"{root}-attempt", root_run_id=root, batch=world.batch("staging"),
                           slack=None, log=logging.getLogger("test"))


def test_a_reap_attempt_runs_without_an_op_and_a_second_one_under_the_same_root_cancels_nothing_again(world):
    """The attempt step alone: the first cancels and records; a later attempt of the same run (a
    retry) finds its cancellations in the record and reports them, sending no CancelJobs."""
    from platform_ops.reaper import core
    from platform_ops.reaper import defs as reaper

    stuck = world.stuck(count=2)
    policy = reaper.resolve_target(world.settings, reaper.ReapConfig(environment="staging", queue="ml-staging",
                                                                     job_ids=stuck))[1]
    instance = dg.DagsterInstance.ephemeral()
    first = reaper.reap_jobs(_step(world, instance), stuck, policy)
    assert first.calls == {"Batch.DescribeJobs": 2, "Batch.CancelJobs": 1}
    assert [sorted(d.job_ids) for d in first.observed] == [sorted(stuck)] * 2  # the decision's, the verifying one
    assert {r.outcome for r in first.results} == {core.Outcome.CANCELLED}
    again = reaper.reap_jobs(_step(world, instance), stuck, policy)
    assert again.calls == {"Batch.DescribeJobs": 1}
    assert {r.job_id: r.outcome for r in again.results} == {j: core.Outcome.CANCELLED for j in stuck}
    other_run = reaper.reap_jobs(_step(world, instance, root="another-run"), stuck, policy)
    assert {r.outcome for r in other_run.results} == {core.Outcome.NOT_CANCELLED}  # not this run's doing
    assert reaper.send_report(world.settings, _step(world, instance), None, needed=False) == (
        core.SlackReport.NOT_NEEDED, "")


def test_a_tick_runs_without_a_sensor_and_keeps_a_cursor_only_for_event_driven_environments(world):
    from platform_ops.reaper import defs as reaper

    stuck = world.stuck("production", count=2, minutes=125)
    world.stuck("staging", count=1, minutes=10)
    resources = world.resources()
    step = reaper.TickStep(dg.DagsterInstance.ephemeral(), lambda environment: resources[f"aws_{environment}"])
    now = datetime.now(UTC)
    requests, cursor, problems, seen = reaper.stuck_jobs_tick(world.settings, step, {}, now)
    assert [sorted(requested_ids(r)) for r in requests] == [sorted(stuck)] and (problems, seen) == ([], 3)
    event_driven = [env.name for env in world.settings.environments.values() if env.event_driven]
    assert cursor == {f"reconciled:{name}": int(now.timestamp() * 1000) for name in event_driven}


def test_the_posted_report_is_kept_once_for_alerting_to_thread_under(world):
    """The report's message is recorded once Slack took it; a later attempt of the same run (its
    post_once finds the report already sent) leaves the record as it was: alerting may have
    updated that message since."""
    from platform_ops.messages import SlackMessage
    from platform_ops.reaper import core
    from platform_ops.reaper import defs as reaper

    instance = dg.DagsterInstance.ephemeral()
    from platform_ops.adapters.slack import PlatformSlackResource

    slack = PlatformSlackResource(token=SANDBOX_TOKEN, base_url=world.sandbox.sink.api_url)
    step = dataclasses.replace(_step(world, instance), slack=slack)
    first = SlackMessage(text="Reaper: first", blocks=({"type": "section", "text": {"type": "mrkdwn", "text": "a"}},))
    assert reaper.send_report(world.settings, step, first, needed=True) == (core.SlackReport.SENT, "")
    [message] = world.messages
    kept = {"channel": world.settings.slack.channel, "ts": message["ts"], "text": "Reaper: first",
            "blocks": list(first.blocks)}
    assert reaper.report_message(instance, "root-run") == kept
    assert list(instance.run_storage.get_cursor_values({"platform_ops/reaper/report-message/root-run"})) == [
        "platform_ops/reaper/report-message/root-run"]  # the key alerting reads
    again = SlackMessage(text="Reaper: second", blocks=())
    assert reaper.send_report(world.settings, step, again, needed=True) == (core.SlackReport.SENT, "")
    assert len(world.messages) == 1 and reaper.report_message(instance, "root-run") == kept
    assert reaper.report_message(instance, "another-run") is None
