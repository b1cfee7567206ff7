"""Event-driven mode in the sandbox: Step Functions status changes and Batch job state changes
reach the stack's SQS queue through EventBridge; aws_events_sensor drains it and requests the same
alert and reap runs the polling sensors would; polling reconciles later and nothing is announced
or cancelled twice."""

import dataclasses
import json
from datetime import UTC

import dagster as dg
import pytest

from platform_ops.adapters.aws import count_calls
from platform_ops.alerts import core
from platform_ops.code_location import build_defs
from platform_ops.reaper import core as reaper_core

OOM = {"fault": "oom", "step": "train", "index": 0}


def event_settings(world):
    envs = dict(world.settings.environments)
    envs["production"] = dataclasses.replace(envs["production"], events_queue="platform-ops-events")
    alerts = dataclasses.replace(world.settings.alerts, post_interval_seconds=0, retries=0, retry_delay_seconds=0,
                                 silences=())
    return dataclasses.replace(world.settings, environments=envs, alerts=alerts)


def tick(defs, instance, name, cursor=None):
    with dg.build_sensor_context(instance=instance, resources=defs.resources, cursor=cursor) as ctx:
        return defs.resolve_sensor_def(name).evaluate_tick(ctx)


def run(defs, request, instance):
    return defs.resolve_job_def("alert_failed_executions").execute_in_process(
        run_config=request.run_config, instance=instance, tags=request.tags)


def queue_depth(world):
    sqs = world.resources()["aws_production"].client("sqs")
    url = sqs.get_queue_url(QueueName="platform-ops-events")["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                                                   "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(v) for v in attrs["Attributes"].values())


def test_a_failure_arrives_by_event_and_reconciliation_announces_nothing_twice(world):
    world.run_flow("production", "ev-oom", width=2, faults=[OOM])
    defs = build_defs(event_settings(world))
    assert "aws_events_sensor" in {s.name for s in defs.get_repository_def().sensor_defs}
    with dg.instance_for_test() as instance:
        with count_calls() as calls:
            first = tick(defs, instance, "aws_events_sensor")
        assert set(calls) <= {"SQS.GetQueueUrl", "SQS.ReceiveMessage", "STS.AssumeRole"}  # no Step Functions polling
        [request] = first.run_requests
        failures = request.run_config["ops"]["alert"]["config"]["failures"]
        assert [f["execution_arn"].rsplit(":", 1)[-1] for f in failures] == ["ev-oom"]
        pending = json.loads(first.cursor)["pending"]["production"]
        assert pending and queue_depth(world) == len(pending)  # received, not deleted yet
        assert run(defs, request, instance).success
        assert len(world.messages) == 1 and "ev-oom" in world.messages[0]["text"]

        second = tick(defs, instance, "aws_events_sensor", first.cursor)
        assert not second.run_requests and queue_depth(world) == 0  # the first tick's messages are gone

        reconcile = tick(defs, instance, "failed_executions_sensor")  # polling sees the same failure
        [again] = reconcile.run_requests
        assert run(defs, again, instance).success
        assert len(world.messages) == 1  # the ledger: announced once
        later = tick(defs, instance, "failed_executions_sensor", reconcile.cursor)
        with count_calls() as calls:
            tick(defs, instance, "failed_executions_sensor", later.cursor)
        assert not any(k.startswith("SFN.") and "222222222222" in k for k in calls)
        assert calls["SFN.ListStateMachines"] == 1  # staging only: production waits for its reconcile interval


def test_a_tick_that_fails_before_returning_loses_nothing(world):
    """Messages are deleted only on the tick after the one that requested their run: a lost
    cursor (the tick's result never stored) means they come back, and the run key is the same."""
    world.run_flow("production", "ev-lost", width=1, faults=[OOM])
    defs = build_defs(event_settings(world))
    with dg.instance_for_test() as instance:
        first = tick(defs, instance, "aws_events_sensor")
        assert queue_depth(world) > 0
        sqs = world.resources()["aws_production"].client("sqs")
        url = sqs.get_queue_url(QueueName="platform-ops-events")["QueueUrl"]
        for receipt in json.loads(first.cursor)["pending"]["production"]:  # visibility timeout runs out
            sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=receipt, VisibilityTimeout=0)
        retried = tick(defs, instance, "aws_events_sensor")  # cursor lost
        assert [r.run_key for r in retried.run_requests] == [r.run_key for r in first.run_requests]


@pytest.mark.parametrize("bodies, announced, other", [
    ([], 0, 0),
    (["not json", json.dumps({"detail-type": "Batch Job State Change", "detail": {"jobId": "j"}})], 0, 2),
])
def test_events_that_are_not_execution_stops_are_counted_not_used(bodies, announced, other):
    executions, skipped = core.executions_from_events(bodies)
    assert (len(executions), skipped) == (announced, other)


def test_a_redelivered_event_is_one_execution():
    detail = {"executionArn": "arn:aws:states:us-east-1:2:execution:sm:e1", "stateMachineArn":
              "arn:aws:states:us-east-1:2:stateMachine:sm", "name": "e1", "status": "FAILED",
              "startDate": 1_795_850_000_000, "stopDate": 1_795_850_060_000, "error": "States.TaskFailed"}
    body = json.dumps({"id": "a", "detail-type": core.EXECUTION_EVENT, "detail": detail})
    running = json.dumps({"id": "b", "detail-type": core.EXECUTION_EVENT, "detail": {**detail, "stopDate": None,
                                                                                     "status": "RUNNING"}})
    executions, skipped = core.executions_from_events([body, body, running])
    assert skipped == 1 and [(e.name, e.status, e.error) for e in executions] == [("e1", "FAILED", "States.TaskFailed")]
    assert executions[0].stopped_at.isoformat() == "2026-11-28T07:14:20+00:00"


def job_event(job_id, status, at, queue="arn:aws:batch:us-east-1:2:job-queue/ml-production"):
    return json.dumps({"id": f"{job_id}-{status}", "detail-type": reaper_core.JOB_EVENT, "time": at,
                       "detail": {"jobId": job_id, "jobName": "train-3", "jobQueue": queue, "status": status,
                                  "createdAt": 1_795_800_000_000}})


def test_the_runnable_watch_follows_each_jobs_last_transition():
    from datetime import datetime, timedelta

    bodies = [
        job_event("stuck", "RUNNABLE", "2026-11-28T10:00:00Z"),
        job_event("stuck", "RUNNABLE", "2026-11-28T10:05:00Z"),  # delivered again, later: keeps 10:00
        job_event("started", "RUNNABLE", "2026-11-28T10:00:00Z"),
        job_event("started", "STARTING", "2026-11-28T10:30:00Z"),
        job_event("retried", "RUNNING", "2026-11-28T09:00:00Z"),
        job_event("retried", "RUNNABLE", "2026-11-28T11:50:00Z"),  # re-entered after a failed attempt
        job_event("elsewhere", "RUNNABLE", "2026-11-28T10:00:00Z", queue="arn:aws:batch:us-east-1:2:job-queue/other"),
        "not json",
        json.dumps({"detail-type": reaper_core.JOB_EVENT, "time": "2026-11-28T10:00:00", "detail": {"jobId": "x"}}),
    ]
    changes, other = reaper_core.job_changes_from_events(bodies)
    assert other == 2 and [c.job_id for c in changes][:2] == ["retried", "stuck"]  # in the order they happened
    watch = reaper_core.track_runnable({}, changes, ["ml-production"])
    at = lambda hh_mm: datetime.fromisoformat(f"2026-11-28T{hh_mm}:00+00:00")  # noqa: E731
    assert watch == {"stuck": ("ml-production", at("10:00")), "retried": ("ml-production", at("11:50"))}
    now = at("12:00")
    due = reaper_core.due(watch, lambda queue: timedelta(hours=2), now)
    assert due == {"ml-production": ["stuck"]}
    later, _ = reaper_core.job_changes_from_events([job_event("stuck", "FAILED", "2026-11-28T12:01:00Z")])
    assert reaper_core.track_runnable(watch, later, ["ml-production"]) == {"retried": ("ml-production", at("11:50"))}
    assert now.tzinfo is UTC


def test_stuck_jobs_arrive_by_event_and_are_reaped_once(world):
    """RUNNABLE transitions build the reaper's watch; the jobs past the threshold get the same reap
    run the listing would request, without listing; their cancel events empty the watch."""
    stuck = world.stuck("production", count=3)
    young = world.stuck("production", count=1, minutes=30)
    placed = world.stuck("production", count=1)
    world.set_status("production", placed[0], "STARTING")  # placed before any tick: never requested
    retried = world.stuck("production", count=1, minutes=600)
    world.set_status("production", retried[0], "RUNNABLE", attempt_stopped_minutes_ago=5)
    defs = build_defs(event_settings(world))
    with dg.instance_for_test() as instance:
        with count_calls() as calls:
            first = tick(defs, instance, "aws_events_sensor")
        assert not any(k.startswith("Batch.") for k in calls)  # no listing
        [request] = first.run_requests
        assert request.job_name == "reap_stuck_jobs"
        assert sorted(request.run_config["ops"]["reap"]["config"]["job_ids"]) == sorted(stuck)
        reap = defs.resolve_job_def("reap_stuck_jobs")
        result = reap.execute_in_process(run_config=request.run_config, instance=instance, tags=request.tags)
        assert result.output_for_node("reap")["cancelled"] == 3
        # reconciliation lists by createdAt, a coarser cut that takes the retried job; its run re-checks
        # the job's last attempt and leaves it alone
        polled = {r.tags["platform_ops/queue"]: r for r in tick(defs, instance, "stuck_jobs_sensor").run_requests}
        reconcile = polled["ml-production"]
        assert sorted(reconcile.run_config["ops"]["reap"]["config"]["job_ids"]) == retried
        again = reap.execute_in_process(run_config=reconcile.run_config, instance=instance, tags=reconcile.tags)
        assert again.output_for_node("reap")["cancelled"] == 0
        second = tick(defs, instance, "aws_events_sensor", first.cursor)
        assert not second.run_requests  # the cancels' FAILED events left the watch with the young job only
        watch = {k: v for k, v in world.describe("production", stuck + young + placed + retried).items()}
        assert [watch[i]["status"] for i in stuck] == ["FAILED"] * 3
        assert watch[young[0]]["status"] == watch[retried[0]]["status"] == "RUNNABLE"
        assert watch[placed[0]]["status"] == "STARTING"


def lose_events(world):
    """What EventBridge or SQS never delivered: every message now visible in the queue is taken
    and deleted here, so the sensor never sees it."""
    sqs = world.resources()["aws_production"].client("sqs")
    url = sqs.get_queue_url(QueueName="platform-ops-events")["QueueUrl"]
    lost = 0
    while True:
        batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        if not batch:
            return lost
        sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                                                        for i, m in enumerate(batch)])
        lost += len(batch)


def reaped_ids(result):
    return sorted(i for r in result.run_requests if r.job_name == "reap_stuck_jobs"
                  for i in r.run_config["ops"]["reap"]["config"]["job_ids"])


def test_a_reap_run_takes_jobs_whose_terminal_event_was_lost_off_the_watch(world):
    """Two watched jobs move on (one is placed, one is cancelled by the run) and neither event
    arrives: the run's own describes settle the watch, so the next tick requests nothing."""
    placed, stuck = world.stuck("production", count=2)
    defs = build_defs(event_settings(world))
    with dg.instance_for_test() as instance:
        first = tick(defs, instance, "aws_events_sensor")
        [request] = first.run_requests
        assert reaped_ids(first) == sorted([placed, stuck])
        world.set_status("production", placed, "STARTING")
        assert lose_events(world) >= 1
        result = defs.resolve_job_def("reap_stuck_jobs").execute_in_process(
            run_config=request.run_config, instance=instance, tags=request.tags)
        assert result.output_for_node("reap")["cancelled"] == 1
        assert world.describe("production", [stuck])[stuck]["status"] == "FAILED"
        assert lose_events(world) >= 1  # the cancel's FAILED event never arrives either
        second = tick(defs, instance, "aws_events_sensor", first.cursor)
        assert not second.run_requests, second.skip_reason


def test_a_reconciling_listing_takes_jobs_whose_terminal_event_was_lost_off_the_watch(world):
    """Without the placed job's STARTING event the watch keeps asking for it; the reconciling
    listing does not show it and it leaves the watch, while the job still stuck stays."""
    placed, stuck = world.stuck("production", count=2)
    defs = build_defs(event_settings(world))
    with dg.instance_for_test() as instance:
        first = tick(defs, instance, "aws_events_sensor")
        world.set_status("production", placed, "STARTING")
        assert lose_events(world) >= 1
        second = tick(defs, instance, "aws_events_sensor", first.cursor)
        assert reaped_ids(second) == sorted([placed, stuck])  # the lost event: still due
        polled = tick(defs, instance, "stuck_jobs_sensor")  # no cursor: production is reconciled now
        assert reaped_ids(polled) == [stuck]
        third = tick(defs, instance, "aws_events_sensor", second.cursor)
        assert reaped_ids(third) == [stuck]


def test_watch_entries_past_the_age_bound_are_dropped(world):
    """A job RUNNABLE longer than reaper.watch_max_age_hours (its terminal event lost long ago,
    say) is not requested from the watch; the listing still finds a job that is really there."""
    settings = event_settings(world)
    settings = dataclasses.replace(settings, reaper=dataclasses.replace(settings.reaper, watch_max_age_hours=3))
    [recent] = world.stuck("production", count=1, minutes=150)
    [ancient] = world.stuck("production", count=1, minutes=4 * 60)
    defs = build_defs(settings)
    with dg.instance_for_test() as instance:
        first = tick(defs, instance, "aws_events_sensor")
        assert reaped_ids(first) == [recent]
        assert sorted(reaped_ids(tick(defs, instance, "stuck_jobs_sensor"))) == sorted([ancient, recent])
        assert reaped_ids(tick(defs, instance, "aws_events_sensor", first.cursor)) == [recent]


def test_events_hand_work_on_through_the_capabilities_public_wiring():
    """Alerting and the reaper decide what events mean; events only reads the queues."""
    import ast
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "platform_ops" / "events" / "defs.py"
    imported = {(node.module, alias.name) for node in ast.walk(ast.parse(source.read_text()))
                if isinstance(node, ast.ImportFrom) and node.module for alias in node.names}
    capabilities = {(m, n) for m, n in imported if m.split(".")[1:2] in (["alerts"], ["reaper"])}
    assert capabilities and all(m.endswith(".defs") and not n.startswith("_") for m, n in capabilities), capabilities
    assert ("platform_ops.alerts.defs", "alert_request") in capabilities


def test_events_and_polling_seeing_the_same_stuck_jobs_make_one_reap_run(world):
    """Dagster skips a run key only per sensor: at start-up the events sensor asked for a reap and
    the reconciling listing asked for the same jobs again. Each sensor now drops a key any run
    has, so the situation makes one run whichever sensor saw it first."""
    from platform_ops.sandbox.daemon import RUN_KEY_TAG, Daemon

    stuck = world.stuck("production", count=2)
    defs = build_defs(event_settings(world))
    with dg.instance_for_test() as instance:
        daemon = Daemon(defs, instance, dedupe=False)  # launches whatever is asked: no key is skipped for us
        [(request, job_name)] = daemon.tick("aws_events_sensor")
        assert sorted(request.run_config["ops"]["reap"]["config"]["job_ids"]) == sorted(stuck)
        assert request.tags["platform_ops/requested_by"] == "aws_events_sensor"
        # the daemon stores the requested run at once; the run coordinator starts it later
        instance.create_run_for_job(defs.resolve_job_def(job_name), run_config=request.run_config,
                                    tags={**request.tags, RUN_KEY_TAG: request.run_key})
        polled = daemon.tick("stuck_jobs_sensor")  # no cursor: production is reconciled now, its jobs still RUNNABLE
        assert [r.tags["platform_ops/queue"] for r, _ in polled] == []
        assert daemon.tick("aws_events_sensor") == []  # nor does the events sensor ask again
        assert daemon.ticks_failed == 0
        [run] = instance.get_runs(dg.RunsFilter(job_name="reap_stuck_jobs"))
        assert run.tags[RUN_KEY_TAG] == request.run_key


def test_a_request_is_dropped_only_for_a_key_some_run_already_has():
    from platform_ops.sensors import RUN_KEY_TAG, not_yet_requested

    with dg.instance_for_test() as instance:
        @dg.op
        def noop():
            pass

        @dg.job
        def some_job():
            noop()

        some_job.execute_in_process(instance=instance, tags={RUN_KEY_TAG: "taken"})
        keyed = [dg.RunRequest(run_key="taken"), dg.RunRequest(run_key="free"), None, dg.RunRequest()]
        assert [r.run_key for r in not_yet_requested(instance, keyed)] == ["free", None]


BLOCKED = ("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job resource requirement (vCPU/memory/GPU) is higher "
           "than that can be met by the CE(s) attached to the job queue.")


def test_a_blocked_queue_is_known_at_once_reported_with_its_reap_and_lifted_when_its_job_goes(world):
    """The sandbox's Batch publishes "Batch Job Queue Blocked" (the User Guide's shape) when its
    scheduler cannot place a job; the stack's rule brings it to the events queue."""
    from platform_ops.reaper import defs as reaper_defs

    stuck = world.stuck("production", count=2)  # no instance type fits: Batch says they block the queue
    defs = build_defs(event_settings(world))
    with dg.instance_for_test() as instance:
        first = tick(defs, instance, "aws_events_sensor")
        [block] = reaper_defs.queue_blocks(instance, "production").values()
        assert (block.queue, block.reason) == ("ml-production", BLOCKED) and block.job_id in stuck
        [request] = first.run_requests
        result = defs.resolve_job_def("reap_stuck_jobs").execute_in_process(
            run_config=request.run_config, instance=instance, tags=request.tags)
        assert result.output_for_node("reap")["cancelled"] == 2
        [report] = [m for m in world.messages if m["text"].startswith("Reaper:")]
        body = json.dumps(report["blocks"])
        assert "Batch reported the queue blocked" in body and "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job" in body
        meta = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"][0].event_specific_data.metadata
        assert meta["queue_blocked"].value.startswith(f"queue ml-production blocked since {block.since:%Y-%m-%d %H:%M}")
        assert reaper_defs.queue_blocks(instance, "production") == {}  # its job was cancelled: not blocked now
