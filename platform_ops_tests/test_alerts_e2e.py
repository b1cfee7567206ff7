"""Failure alerts end to end in the sandbox, through boto3 and slack_sdk to the sink:
one message per execution, digest, silence, recovery, exactly once."""

import dataclasses
import json
import urllib.request
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import dagster as dg
import pytest
from slack_sdk import WebClient

from platform_ops.adapters.aws import AwsError, count_calls
from platform_ops.code_location import build_defs
from platform_ops.sandbox.server import SANDBOX_TOKEN
from platform_ops.settings import Silence

OOM = {"fault": "oom", "step": "train", "index": 1}


def alert_settings(world, **alerts):
    """The polling path in every environment (test_alerts_events.py covers the events path)."""
    base = dict(post_interval_seconds=0, retries=0, retry_delay_seconds=0, silences=())
    polled = {name: dataclasses.replace(env, events_queue=None) for name, env in world.settings.environments.items()}
    return dataclasses.replace(world.settings, environments=polled,
                               alerts=dataclasses.replace(world.settings.alerts, **{**base, **alerts}))


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def tick(defs, instance, cursor=None):
    sensor = defs.resolve_sensor_def("failed_executions_sensor")
    with dg.build_sensor_context(instance=instance, resources=defs.resources, cursor=cursor) as ctx:
        return sensor.evaluate_tick(ctx)


def run(defs, request, instance, **kwargs):
    return defs.resolve_job_def("alert_failed_executions").execute_in_process(
        run_config=request.run_config, instance=instance, tags=request.tags, **kwargs)


def metadata(result):
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return event.event_specific_data.metadata


def history_figures(world, environment, name):
    """From the execution's own history: the steps of the Batch tasks submitted, in order, and
    the failed tasks' reasons (exit 137 is the sandbox's out of memory) with their counts."""
    from collections import Counter

    from platform_ops.sandbox import flows
    from platform_ops.sandbox.world import account_client

    env = world.settings.environments[environment]
    sfn = account_client(world.sandbox.endpoint, "stepfunctions", env.account_id, env.region)
    arn = f"arn:aws:states:{env.region}:{env.account_id}:execution:{flows.DEPLOYMENTS[environment].name}:{name}"
    events = sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
    submitted = [json.loads(e["taskSubmittedEventDetails"]["output"])["JobName"].split("--")[1] for e in events
                 if e["type"] == "TaskSubmitted"]
    causes = [json.loads(e["taskFailedEventDetails"]["cause"]) for e in events if e["type"] == "TaskFailed"]
    failed = Counter("out of memory" if c["Attempts"][-1]["Container"]["ExitCode"] == 137 else
                     f"exit {c['Attempts'][-1]['Container']['ExitCode']}" for c in causes)
    return submitted, failed


def alerts_only(world):
    return [m for m in world.messages if not m["text"].startswith("Reaper")]


def test_one_message_per_failed_execution_with_the_drill_down(world, instance):
    world.run_flow("production", "prod-ok", width=2)  # succeeded before: no alert, no recovery
    world.run_flow("production", "prod-oom", width=4, faults=[OOM, {**OOM, "index": 3, "fault": "exit_1"}])
    world.run_flow("staging", "staging-spot", width=2, faults=[{"fault": "spot", "step": "train", "index": 0}])
    defs = build_defs(alert_settings(world))
    result = tick(defs, instance)
    [request] = result.run_requests
    with count_calls() as calls:
        first = run(defs, request, instance)
        assert first.success
    assert len(world.messages) == 2
    by_env = {("production" if "production" in m["text"] else "staging"): m for m in world.messages}
    prod = json.dumps(by_env["production"]["blocks"])
    # The Map fails at the first failed iteration it sees; whether the other injected fault's task
    # had failed (or been submitted) by then is thread timing, on AWS too. So the figures expected
    # are the ones the execution's history proves, the alert's only source (the mixed-reason line
    # itself is pinned in test_alerts_core).
    submitted, failed = history_figures(world, "production", "prod-oom")
    assert submitted[0] == "start" and 2 <= len(submitted) <= 5 and 1 <= sum(failed.values()) <= 2
    assert by_env["production"]["text"].startswith(
        f"DemoFlow failed in production (sfn-prod-oom): {sum(failed.values())} of {len(submitted)} tasks failed")
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(failed.items(), key=lambda rn: (-rn[1], rn[0])))
    assert f"`train`: {sum(failed.values())} of {len(submitted) - 1} failed: {reasons}" in prod
    assert "<@U0ALICE>" in prod and "https://metaflow.example.com/DemoFlow/sfn-prod-oom" in prod
    assert "Killed" in prod or "ValueError" in prod  # the failed task's log tail
    assert "spot/host reclaimed" in by_env["staging"]["text"]
    # per execution: describe, one history page, one log read; no per-job calls
    assert calls["SFN.GetExecutionHistory"] == 2 and calls["SFN.DescribeExecution"] == 2
    assert calls["CloudWatchLogs.GetLogEvents"] <= 2 and "Batch.DescribeJobs" not in calls
    assert request.tags["platform_ops/to_examine"] == "2 failed, 0 recovered"
    links = {k: v.value for k, v in metadata(first).items() if k.startswith("slack: ")}
    assert sorted(links) == ["slack: prod-oom", "slack: staging-spot"]
    with urllib.request.urlopen(links["slack: prod-oom"]) as page:  # a permalink opens the message
        assert page.status == 200 and "sfn-prod-oom" in page.read().decode()
    again = run(defs, request, instance)
    assert metadata(again)["results"].value == {"already announced": 2}
    assert instance.get_run_by_id(again.run_id).tags["platform_ops/sent"] == "0"  # says what the run did
    assert len(world.messages) == 2
    assert SANDBOX_TOKEN not in json.dumps(world.messages)


def test_a_repeated_tick_requests_nothing_new_and_a_lost_cursor_duplicates_nothing(world, instance):
    world.run_flow("production", "once", faults=[OOM])
    defs = build_defs(alert_settings(world))
    first = tick(defs, instance)
    assert len(first.run_requests) == 1
    assert run(defs, first.run_requests[0], instance).success
    again = tick(defs, instance, cursor=first.cursor)
    assert again.run_requests == [] and "no newly failed executions" in again.skip_message
    lost = tick(defs, instance, cursor=None)  # cursor lost: the same failure is seen again
    [request] = lost.run_requests
    assert metadata(run(defs, request, instance))["results"].value == {"already announced": 1}
    assert len(world.messages) == 1


def test_an_execution_that_no_longer_exists_does_not_cost_the_others_their_alert(world, instance):
    """Its state machine was deleted (or it aged out of Step Functions' retention) between the tick
    and the run: it is recorded as gone, the rest of the run goes on, nothing is retried for it."""
    world.run_flow("production", "still-here", faults=[OOM])
    defs = build_defs(alert_settings(world))
    [request] = tick(defs, instance).run_requests
    config = json.loads(json.dumps(request.run_config))
    failures = config["ops"]["alert"]["config"]["failures"]
    gone = {**failures[0], "execution_arn": failures[0]["execution_arn"].rsplit(":", 1)[0] + ":vanished"}
    config["ops"]["alert"]["config"]["failures"] = [gone, *failures]
    result = run(defs, SimpleNamespace(run_config=config, tags=request.tags), instance)
    assert result.success
    assert metadata(result)["results"].value == {"execution no longer exists": 1, "announced": 1}
    assert len(world.messages) == 1 and "still-here" in world.messages[0]["text"]


def test_a_storm_is_one_digest_with_details_in_its_thread(world, instance):
    for i in range(6):
        world.run_flow("production", f"storm-{i}", width=2, faults=[{**OOM, "index": 0}])
    defs = build_defs(alert_settings(world, digest_threshold=5))
    [request] = tick(defs, instance).run_requests
    assert run(defs, request, instance).success
    digest, *replies = world.messages
    assert digest["text"].startswith("6 Metaflow runs failed") and digest["thread_ts"] is None
    assert len(replies) == 6 and {r["thread_ts"] for r in replies} == {digest["ts"]}
    assert sum("storm-" in r["text"] or "DemoFlow failed" in r["text"] for r in replies) == 6


def test_silenced_executions_are_recorded_not_alerted(world, instance):
    world.run_flow("staging", "muted", faults=[OOM])
    world.run_flow("production", "loud", faults=[OOM])
    silence = Silence("mlplatform.test.*", datetime(2099, 1, 1, tzinfo=UTC), "branch deployments")
    defs = build_defs(alert_settings(world, silences=(silence,)))
    [request] = tick(defs, instance).run_requests
    meta = metadata(run(defs, request, instance))
    assert meta["results"].value == {"muted": 1, "announced": 1}
    rows = {r.data["execution"]: r.data for r in meta["executions"].value.records}
    assert rows["muted"]["result"] == "muted" and "branch deployments" in rows["muted"]["detail"]
    assert [m["text"].split(":")[0] for m in world.messages] == ["DemoFlow failed in production (sfn-loud)"]


def test_recovery_is_announced_in_the_failures_thread(world, instance):
    world.run_flow("production", "broken", faults=[OOM])
    defs = build_defs(alert_settings(world))
    first = tick(defs, instance)
    run(defs, first.run_requests[0], instance)
    world.run_flow("production", "fixed", width=2)
    second = tick(defs, instance, cursor=first.cursor)
    [request] = second.run_requests
    assert run(defs, request, instance).success
    failure, recovery = world.messages
    assert recovery["thread_ts"] == failure["ts"]
    assert "Recovered: DemoFlow in production run" in recovery["text"] and "sfn-fixed" in recovery["text"]
    world.run_flow("production", "still-fine", width=2)
    assert tick(defs, instance, cursor=second.cursor).run_requests == []  # nothing open any more


def alert_runs(world, defs, instance, names, cursor=None, **flow):
    """Each name a production run of DemoFlow, then a tick and its alert run (a streak in the making)."""
    requests = []
    for name in names:
        world.run_flow("production", name, **flow)
        result = tick(defs, instance, cursor)
        cursor = result.cursor
        [request] = result.run_requests
        assert run(defs, request, instance).success
        requests.append(request)
    return cursor, requests


def test_a_flow_failing_three_runs_in_a_row_is_one_incident_resolved_by_its_recovery(world, instance):
    """Measured before streaks: 3 top-level messages, the recovery in the third's thread."""
    defs = build_defs(alert_settings(world))
    cursor, requests = alert_runs(world, defs, instance, ["streak-1", "streak-2", "streak-3"], faults=[OOM])
    [top] = [m for m in world.messages if not m["thread_ts"]]
    replies = [m for m in world.messages if m["thread_ts"]]
    assert [r["thread_ts"] for r in replies] == [top["ts"], top["ts"]]
    assert not any(r["reply_broadcast"] for r in replies)  # no channel ping for a further failure
    assert "sfn-streak-2" in replies[0]["text"] and "sfn-streak-3" in replies[1]["text"]
    assert top["text"].startswith("Failing since") and "3 failed runs" in top["text"]
    summary = top["blocks"][0]["text"]["text"]
    assert "3 failed runs" in summary and "last: `streak-3`" in summary
    assert "sfn-streak-1" in json.dumps(top["blocks"][1:])  # the first failure's details stay under it
    assert len(top["edits"]) == 2  # updated in place once per further failure

    assert metadata(run(defs, requests[-1], instance))["results"].value == {"already announced": 1}
    assert len(world.messages) == 3 and len(top["edits"]) == 2  # a re-run counts nothing twice

    alert_runs(world, defs, instance, ["streak-fixed"], cursor, width=2)
    recovery = world.messages[-1]
    assert recovery["thread_ts"] == top["ts"]  # in the first failure's thread
    assert "after 3 failed runs" in recovery["text"]
    assert top["text"].startswith("Resolved after 3 failed runs")
    assert "Resolved* at" in top["blocks"][0]["text"]["text"] and "by `streak-fixed`" in top["blocks"][0]["text"]["text"]


def test_a_streak_reminds_the_channel_every_repeat_interval(world, instance):
    """With a repeat interval shorter than the gap between runs, each further failure's reply is
    also broadcast to the channel, saying how long it has been failing."""
    defs = build_defs(alert_settings(world, repeat_interval_hours=1e-9))
    alert_runs(world, defs, instance, ["remind-1", "remind-2"], faults=[OOM])
    top, reply = world.messages
    assert reply["thread_ts"] == top["ts"] and reply["reply_broadcast"]
    assert reply["text"].startswith(":repeat: Still failing since") and "2 failed runs" in reply["text"]
    history = WebClient(token=SANDBOX_TOKEN, base_url=world.sandbox.sink.api_url).conversations_history(
        channel=top["channel_id"])["messages"]
    assert [m["ts"] for m in history] == [reply["ts"], top["ts"]]  # the reminder shows in the channel


def test_exactly_once_through_a_slack_outage(world, instance):
    for name in ("a", "b", "c"):
        world.run_flow("production", f"outage-{name}", width=2, faults=[{**OOM, "index": 0}])
    defs = build_defs(alert_settings(world))
    [request] = tick(defs, instance).run_requests
    sink = world.sandbox.sink.state
    # the first post goes through, then Slack is down (500s outlast the client's retries)
    only_a = SimpleNamespace(tags=request.tags, run_config={"ops": {"alert": {"config": {
        "failures": request.run_config["ops"]["alert"]["config"]["failures"][:1]}}}})
    first = run(defs, only_a, instance)
    assert first.success and len(world.messages) == 1
    sink.faults.extend([{"kind": "server_error"}] * 30)
    down = run(defs, request, instance, raise_on_error=False)
    assert not down.success and len(world.messages) == 1
    meta = metadata(down)
    assert meta["results"].value == {"already announced": 1, "not sent": 2}
    sink.faults.clear()
    again = run(defs, request, instance)  # the operator re-executes the failed run
    assert again.success
    # one state machine: b and c are further failures of the incident a opened
    assert metadata(again)["results"].value == {"already announced": 1, "announced in its incident's thread": 2}
    texts = [m["text"] for m in world.messages]
    assert len(texts) == 3 and len(set(texts)) == 3


def test_the_alert_op_retries_with_backoff_and_skips_what_went_out(world, instance):
    world.run_flow("production", "flaky", width=2, faults=[{**OOM, "index": 0}])
    defs = build_defs(alert_settings(world, retries=2, retry_delay_seconds=0.1))
    [request] = tick(defs, instance).run_requests
    # one op attempt's worth of 5xx: the post, then the three tries of the lookup that must precede a second post
    world.sandbox.sink.state.faults.extend([{"kind": "server_error"}] * 4)
    result = run(defs, request, instance)
    assert result.success and len(world.messages) == 1
    assert any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)


def test_dagster_run_failures_are_reported_through_the_same_slack_resource(world, instance):
    defs = build_defs(world.settings)
    failed = defs.resolve_job_def("reap_stuck_jobs").execute_in_process(
        run_config={"ops": {"reap": {"config": {"environment": "prod", "queue": "q", "job_ids": ["x"]}}}},
        instance=instance, raise_on_error=False)
    assert not failed.success
    run_record = instance.get_run_by_id(failed.run_id)
    failure_event = next(e for e in instance.all_logs(failed.run_id) if e.dagster_event and
                         e.dagster_event.event_type_value == "PIPELINE_FAILURE").dagster_event
    sensor = defs.resolve_sensor_def("platform_ops_run_failure_sensor")
    ctx = dg.build_run_status_sensor_context(sensor_name=sensor.name, dagster_event=failure_event,
                                             dagster_instance=instance, dagster_run=run_record,
                                             resources=defs.resources).for_run_failure()
    sensor(ctx)
    [message] = world.messages
    assert message["text"].startswith("platform-ops job reap_stuck_jobs failed")
    assert f"/runs/{failed.run_id}" in json.dumps(message["blocks"])
    # why, in the step's own words (the run's failure event only says which steps failed)
    assert "environment 'prod' is not in the settings" in json.dumps(message["blocks"])
    assert "Steps failed" not in message["text"]


# ---- pieces of the wiring alone, with fake clients ----

class FakeStepFunctions:
    """list_state_machines and list_executions as boto3 answers them; a machine named in
    `broken` fails its listing."""

    def __init__(self, machines, executions, broken=()):
        self.machines, self.executions, self.broken = machines, executions, set(broken)

    def list_state_machines(self, **_):
        return {"stateMachines": [{"name": arn.rsplit(":", 1)[-1], "stateMachineArn": arn} for arn in self.machines]}

    def list_executions(self, stateMachineArn, **_):
        if stateMachineArn in self.broken:
            raise AwsError("ThrottlingException", "slow down")
        return {"executions": self.executions.get(stateMachineArn, [])}


def test_a_poll_reads_each_state_machine_and_carries_what_it_could_not():
    from platform_ops.alerts import core
    from platform_ops.alerts.defs import Poll, poll_environment

    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    ok_sm, broken_sm = (f"arn:aws:states:us-east-1:222222222222:stateMachine:mlplatform.prod.{n}" for n in "AB")
    failed = {"executionArn": ok_sm.replace("stateMachine", "execution") + ":e1", "name": "e1",
              "stateMachineArn": ok_sm, "status": "FAILED", "startDate": now - timedelta(minutes=9),
              "stopDate": now - timedelta(minutes=2)}
    sfn = FakeStepFunctions([ok_sm, broken_sm], {ok_sm: [failed]}, broken=[broken_sm])
    alerts = SimpleNamespace(reconcile_interval_seconds=600, initial_lookback_minutes=60, execution_lookback_hours=24)
    poll = Poll(SimpleNamespace(alerts=alerts), lambda name: SimpleNamespace(client=lambda service: sfn), now)
    env = SimpleNamespace(name="production", account_id="222222222222", region="us-east-1",
                          state_machine_prefixes=("mlplatform.prod.",), event_driven=False)
    cursor, problems = core.Cursor({broken_sm: 1_000}), []
    found = poll_environment(poll, env, cursor, problems)
    assert [r.execution_arn for r in found.failures] == [failed["executionArn"]]
    assert cursor.next == {ok_sm: core.to_epoch_ms(failed["stopDate"]), broken_sm: 1_000}
    assert problems == ["production/mlplatform.prod.B: ThrottlingException: slow down"]


def test_a_failure_the_reaper_caused_replies_in_the_reap_reports_thread(world, instance):
    """Inhibition: the run failed because the reaper cancelled its stuck task, so its alert is a
    reply under the reap's report (which then lists it), not a top-level alert of its own."""
    from platform_ops.sandbox import flows
    from platform_ops.sandbox.scenario import wait_until_quiet

    staging = world.settings.environments["staging"]
    world.fault(run_id="reaped", fault="stuck", step="train", index=1, created_minutes_ago=150)
    flows.trigger(world.sandbox.endpoint, staging, width=2, name="reaped")
    wait_until_quiet(world.sandbox)
    defs = build_defs(alert_settings(world))
    with dg.build_sensor_context(instance=instance, resources=defs.resources, sensor_name="stuck_jobs_sensor") as ctx:
        reaps = defs.resolve_sensor_def("stuck_jobs_sensor").evaluate_tick(ctx).run_requests
    assert [r.tags["platform_ops/queue"] for r in reaps] == ["ml-staging"]
    assert defs.resolve_job_def("reap_stuck_jobs").execute_in_process(
        run_config=reaps[0].run_config, tags=reaps[0].tags, instance=instance).success
    wait_until_quiet(world.sandbox)  # the execution fails once its cancelled task's failure arrives
    [request] = tick(defs, instance).run_requests
    assert metadata(run(defs, request, instance))["results"].value == {
        "announced in the thread of the reap that caused it": 1}

    [report] = [m for m in world.messages if not m["thread_ts"]]
    [reply] = [m for m in world.messages if m["thread_ts"]]
    assert report["text"].startswith("Reaper") and reply["thread_ts"] == report["ts"]
    assert "sfn-reaped" in reply["text"] and "cancelled by platform-ops" in json.dumps(reply["blocks"])
    note = report["blocks"][-1]["elements"][0]["text"]
    assert note.startswith("*Runs failed by these cancels*") and "`sfn-reaped`" in note
    assert len(report["edits"]) == 1

    assert metadata(run(defs, request, instance))["results"].value == {"already announced": 1}
    assert len(world.messages) == 2 and len(report["edits"]) == 1  # a re-run notes nothing twice
