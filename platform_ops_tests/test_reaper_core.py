"""The reaper's decisions on real-shaped Batch data: no AWS, no Dagster."""

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest

from platform_ops.adapters.batch import job_from_api
from platform_ops.messages import MAX_BLOCKS, MAX_SECTION_CHARS
from platform_ops.observations import CancelResult
from platform_ops.reaper import core

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
MS = lambda dt: int(dt.timestamp() * 1000)  # noqa: E731
POLICY = core.ReapPolicy(threshold=timedelta(hours=2), dry_run=False, max_cancels=50, protect_tag="platform-ops:protect")
RESOURCE = ("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job resource requirement (vCPU/memory/GPU) is "
            "higher than that can be met by the CE(s) attached to the job queue.")


def detail(job_id="0f1e2d3c-0000-4000-8000-000000000003", minutes=134, status="RUNNABLE", reason=RESOURCE,
           tags=None, attempts=None):
    """A DescribeJobs item as AWS returns it for a Metaflow SFN task."""
    return {
        "jobArn": f"arn:aws:batch:us-east-1:111111111111:job/{job_id}",
        "jobName": "SFN-DemoFlow--train--",
        "jobId": job_id,
        "jobQueue": "arn:aws:batch:us-east-1:111111111111:job-queue/ml-staging",
        "status": status,
        "statusReason": reason,
        "createdAt": MS(NOW - timedelta(minutes=minutes)),
        "attempts": attempts or [],
        "dependsOn": [],
        "jobDefinition": "arn:aws:batch:us-east-1:111111111111:job-definition/metaflow_0123abcd:7",
        "parameters": {"metaflow.owner": "alice", "metaflow.flow_name": "DemoFlow", "metaflow.step_name": "train"},
        "tags": tags or {},
        "container": {"vcpus": 96, "memory": 4096},
    }


def jobs(*items):
    return {j.job_id: j for j in (job_from_api(i) for i in items)}


def test_job_from_api_reads_the_fields_the_reaper_needs():
    job = job_from_api(detail(attempts=[{"startedAt": MS(NOW - timedelta(minutes=30)),
                                         "stoppedAt": MS(NOW - timedelta(minutes=20))}]))
    assert job.queue == "ml-staging"
    assert job.job_definition == "metaflow_0123abcd"
    assert job.created_at == NOW - timedelta(minutes=134)
    assert job.last_attempt_stopped_at == NOW - timedelta(minutes=20)
    assert job.detailed and job.attempts == 1
    summary = job_from_api({"jobId": "a", "jobName": "n", "status": "RUNNABLE", "createdAt": MS(NOW)}, "q")
    assert (summary.queue, summary.detailed, summary.tags) == ("q", False, {})


@pytest.mark.parametrize("minutes, expected", [(0, "0m"), (45, "45m"), (134, "2h14m"), (120, "2h0m"), (60 * 50, "2d2h")])
def test_format_duration(minutes, expected):
    assert core.format_duration(timedelta(minutes=minutes)) == expected


def test_stuck_candidates_are_runnable_past_the_threshold_oldest_first():
    found = core.stuck_candidates(
        [job_from_api(detail("young", 119)), job_from_api(detail("old", 500)), job_from_api(detail("edge", 120)),
         job_from_api(detail("running", 900, status="RUNNING"))],
        timedelta(hours=2), NOW)
    assert [j.job_id for j in found] == ["old", "edge"]


def test_a_retried_job_is_judged_from_its_last_attempt_not_its_creation():
    retried = detail("retried", 600, attempts=[{"startedAt": MS(NOW - timedelta(minutes=40)),
                                                "stoppedAt": MS(NOW - timedelta(minutes=30))}])
    assert core.runnable_since(job_from_api(retried)) == NOW - timedelta(minutes=30)
    plan = core.plan_reap(["retried"], jobs(retried), POLICY, NOW)
    assert [d.action for d in plan.decisions] == [core.Outcome.SKIP_RETRIED]


def test_plan_skips_protected_gone_and_moved_on_jobs():
    details = jobs(detail("stuck", 300), detail("protected", 300, tags={"platform-ops:protect": "backfill"}),
                   detail("started", 300, status="STARTING", reason=""))
    plan = core.plan_reap(["stuck", "protected", "started", "gone"], details, POLICY, NOW)
    actions = {d.job_id: d.action for d in plan.decisions}
    assert actions == {"stuck": core.Outcome.CANCEL, "protected": core.Outcome.SKIP_PROTECTED,
                       "started": core.Outcome.SKIP_NOT_RUNNABLE, "gone": core.Outcome.SKIP_GONE}
    assert not plan.breaker_tripped


def test_breaker_cancels_the_oldest_up_to_the_cap_and_none_past_it():
    details = jobs(*[detail(f"j{i}", 200 + i) for i in range(5)])
    plan = core.plan_reap(list(details), details, core.ReapPolicy(timedelta(hours=2), False, 2, "p"), NOW)
    assert plan.breaker_tripped and plan.eligible == 5
    assert sorted(d.job_id for d in plan.with_action(core.Outcome.CANCEL)) == ["j3", "j4"]
    assert len(plan.with_action(core.Outcome.SKIP_BREAKER)) == 3


def test_dry_run_decides_but_plans_no_cancel():
    details = jobs(detail("a", 300))
    plan = core.plan_reap(["a"], details, core.ReapPolicy(timedelta(hours=2), True, 50, "p"), NOW)
    assert [d.action for d in plan.decisions] == [core.Outcome.WOULD_CANCEL]
    assert core.cancel_batches(plan, POLICY.threshold) == []


def test_cancel_reason_reads_like_the_issue_says():
    assert core.cancel_reason(timedelta(minutes=134), timedelta(hours=2), "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT") == (
        "platform-ops reaper: RUNNABLE for 2h14m > 2h0m (MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT)")


def test_cancel_batches_hold_50_ids_one_reason_per_category():
    details = jobs(*[detail(f"r{i:03}", 130 + i) for i in range(120)],
                   *[detail(f"c{i}", 400, reason="CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - Service cannot fulfill")
                     for i in range(3)])
    plan = core.plan_reap(list(details), details, core.ReapPolicy(timedelta(hours=2), False, 500, "p"), NOW)
    batches = core.cancel_batches(plan, POLICY.threshold)
    assert [len(b.job_ids) for b in batches] == [3, 50, 50, 20]  # the oldest job's category first
    assert batches[0].reason == "platform-ops reaper: RUNNABLE for 6h40m > 2h0m (CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY)"
    assert batches[1].reason == "platform-ops reaper: RUNNABLE for 3h20m > 2h0m (MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT)"
    assert batches[3].reason.startswith("platform-ops reaper: RUNNABLE for 2h10m > 2h0m")
    assert sum(len(b.job_ids) for b in batches) == len(set(i for b in batches for i in b.job_ids))


@pytest.mark.parametrize("reason, category", [
    (RESOURCE, "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"),
    ("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - Service cannot fulfill the capacity requested for instance type [p3.2xlarge]",
     "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY"),
    ("MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE - CE(s) associated with the job queue cannot meet the CPU requirement",
     "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE"),
    ("MISCONFIGURATION:SERVICE_ROLE_PERMISSIONS - Batch service role has a permission issue",
     "MISCONFIGURATION:SERVICE_ROLE_PERMISSIONS"),
    ("", core.UNKNOWN),
    ("Something new from AWS", core.UNKNOWN),
])
def test_classify_status_reasons(reason, category):
    assert core.classify(reason) == category
    meaning, fix = core.hint(category)
    assert meaning and fix


def test_verify_reports_a_job_that_raced_into_starting_as_not_cancelled():
    details = jobs(detail("a", 300), detail("b", 300), detail("c", 300))
    plan = core.plan_reap(["a", "b", "c"], details, POLICY, NOW)
    reason = core.cancel_batches(plan, POLICY.threshold)[0].reason
    after = jobs(detail("a", 300, status="FAILED", reason=reason), detail("b", 300, status="STARTING", reason=""))
    results = {r.job_id: r.result for r in core.verify(plan, CancelResult(("a", "b"), {"c": "ClientException: boom"}), after)}
    assert results == {"a": core.Outcome.CANCELLED, "b": "not cancelled: moved on to STARTING",
                       "c": "cancel failed: ClientException: boom"}


def test_report_is_one_message_within_block_kit_limits_even_for_500_jobs():
    details = jobs(*[detail(f"job-{i:04}-" + "x" * 30, 130 + i) for i in range(500)])
    plan = core.plan_reap(list(details), details, core.ReapPolicy(timedelta(hours=2), False, 50, "p"), NOW)
    results = core.verify(plan, CancelResult(tuple(d.job_id for d in plan.with_action(core.Outcome.CANCEL)), {}), {
        d.job_id: job_from_api(detail(d.job_id, 200, status="FAILED", reason="platform-ops reaper: x"))
        for d in plan.with_action(core.Outcome.CANCEL)})
    msg = core.report("staging", "ml-staging", POLICY, plan, results, "http://dagster/runs/abc")
    assert len(msg.blocks) <= MAX_BLOCKS
    assert all(len(b.get("text", {}).get("text", "")) <= MAX_SECTION_CHARS for b in msg.blocks)
    text = "\n".join(b.get("text", {}).get("text", "") for b in msg.blocks)
    assert "*Cancelled 50* of 500" in text
    assert "Breaker tripped" in text and "450 left RUNNABLE" in text
    assert "…and 460 more jobs" in text
    assert "lower the step's @resources/@batch ask" in text
    assert msg.blocks[-1]["type"] == "context" and "http://dagster/runs/abc" in msg.blocks[-1]["elements"][0]["text"]


def test_report_for_a_dry_run_says_nothing_was_cancelled():
    details = jobs(detail("a", 300))
    policy = core.ReapPolicy(timedelta(hours=2), True, 50, "p")
    plan = core.plan_reap(["a"], details, policy, NOW)
    msg = core.report("production", "ml-production", policy, plan, core.verify(plan, None, {}))
    assert msg.text.startswith("Reaper: Would cancel 1 stuck job in production / ml-production")
    assert "Dry run: nothing was cancelled." in msg.blocks[1]["text"]["text"]


def at(minutes_ago):
    return NOW - timedelta(minutes=minutes_ago)


def test_a_describe_settles_the_watch_so_a_lost_terminal_event_cannot_keep_a_job_due():
    watch = {i: ("ml-staging", at(300)) for i in ("gone", "started", "cancelled", "retried", "unchecked")}
    watch["newer"] = ("ml-staging", at(1))  # re-entered RUNNABLE (a later event) after the describe below
    assert core.due(watch, lambda q: POLICY.threshold, NOW) == {
        "ml-staging": ["cancelled", "gone", "retried", "started", "unchecked"]}  # without settling: due forever
    found = jobs(detail("started", 300, status="STARTING", reason=""),
                 detail("cancelled", 300, status="FAILED", reason="platform-ops reaper: RUNNABLE for 5h0m > 2h0m"),
                 detail("retried", 300, attempts=[{"startedAt": MS(at(40)), "stoppedAt": MS(at(30))}]),
                 detail("newer", 300, status="STARTING", reason=""))
    settled = core.settle(watch, ["gone", "started", "cancelled", "retried", "newer"], found, at(5))
    assert settled == {"retried": ("ml-staging", at(30)),  # still RUNNABLE, since its last attempt stopped
                       "unchecked": ("ml-staging", at(300)), "newer": ("ml-staging", at(1))}
    assert core.due(settled, lambda q: POLICY.threshold, NOW) == {"ml-staging": ["unchecked"]}
    assert core.settle({}, ["gone"], {}, NOW) == {}


def test_a_listing_reconciles_its_own_queue_and_only_what_entered_runnable_before_it_began():
    watch = {"listed": ("ml-staging", at(300)), "moved-on": ("ml-staging", at(300)),
             "just-arrived": ("ml-staging", at(1)), "gpu": ("ml-gpu", at(300))}
    assert core.reconcile(watch, "ml-staging", ["listed", "never-watched"], at(2)) == {
        "listed": ("ml-staging", at(300)), "just-arrived": ("ml-staging", at(1)), "gpu": ("ml-gpu", at(300))}
    assert core.reconcile(watch, "ml-gpu", [], NOW) == {k: v for k, v in watch.items() if k != "gpu"}


def test_entries_older_than_the_bound_leave_the_watch():
    watch = {"fresh": ("ml-staging", at(150)), "edge": ("ml-staging", at(72 * 60)),
             "ancient": ("ml-staging", at(72 * 60 + 1))}
    assert core.expire(watch, NOW, timedelta(hours=72)) == {"fresh": ("ml-staging", at(150)),
                                                            "edge": ("ml-staging", at(72 * 60))}


def test_the_watch_survives_its_stored_form_and_the_stored_form_is_plain_json():
    odd = datetime(2026, 11, 28, 9, 1, 2, tzinfo=UTC)
    watch = {"a": ("ml-staging", at(125)), "b": core.Watched("ml-gpu", odd)}
    record = core.watch_record(watch)
    assert record == {"a": ["ml-staging", MS(at(125))], "b": ["ml-gpu", MS(odd)]}
    assert core.watch_from_record(json.loads(json.dumps(record))) == watch
    assert core.watch_from_record(record)["b"].queue == "ml-gpu"


def test_events_add_and_end_watch_entries_and_the_age_bound_applies_to_the_result():
    def event(job_id, status, minutes_ago, queue="ml-staging"):
        return core.JobChange(job_id, queue, status, at(minutes_ago))

    watch = {"old": ("ml-staging", at(80 * 60)), "placed": ("ml-staging", at(130))}
    changes = [event("new", "RUNNABLE", 10), event("placed", "STARTING", 5), event("other", "RUNNABLE", 3, "ml-x")]
    assert core.follow_events(watch, changes, ["ml-staging"], NOW, timedelta(hours=72)) == {
        "new": ("ml-staging", at(10))}


def test_settling_and_reconciling_fold_every_describe_and_listing_in_order():
    watch = {"placed": ("ml-staging", at(300)), "cancelled": ("ml-staging", at(300)), "gpu": ("ml-gpu", at(300)),
             "left": ("ml-gpu", at(300))}
    first = core.Described(["placed"], jobs(detail("placed", 300, status="STARTING", reason="")), at(10))
    second = core.Described(["cancelled"], {}, at(5))  # Batch no longer knows it
    assert core.settle_all(watch, [first, second]) == {"gpu": ("ml-gpu", at(300)), "left": ("ml-gpu", at(300))}
    assert core.reconcile_all(watch, {"ml-gpu": ["gpu"], "ml-staging": ["placed", "cancelled"]}, at(1)) == {
        k: v for k, v in watch.items() if k != "left"}


@pytest.mark.parametrize("event_driven, last_minutes_ago, listed", [
    (False, 1, True),  # polling lists every tick
    (True, None, True),  # never reconciled
    (True, 4, False),  # reconciled 4 minutes ago, interval 5
    (True, 5, True),
])
def test_an_event_driven_environment_is_listed_only_to_reconcile(event_driven, last_minutes_ago, listed):
    last = None if last_minutes_ago is None else at(last_minutes_ago)
    assert core.lists_now(event_driven, last, NOW, timedelta(minutes=5)) is listed


def test_a_retried_attempt_counts_what_an_earlier_one_cancelled_and_does_not_cancel_it_again():
    policy = dataclasses.replace(POLICY, max_cancels=3)
    first = core.plan_attempt(["a", "b", "c", "d"], jobs(*(detail(i, 200 + n) for n, i in enumerate("abcd"))),
                              policy, NOW, {})
    assert first.plan.breaker_tripped and first.done == {}
    [batch] = first.batches
    assert batch.job_ids == ("d", "c", "b") and set(first.sent) == {"b", "c", "d"}
    assert first.sent["d"] == core.SentCancel(batch.reason, "SFN-DemoFlow--train--", RESOURCE.split(" - ")[0],
                                              timedelta(minutes=203), RESOURCE)
    stored = core.sent_from_record(json.loads(json.dumps(core.sent_record(first.sent))))
    assert stored == first.sent
    # the first attempt's CancelJobs took "d" only before it failed; the retry describes afresh
    cancelled = detail("d", 203, status="FAILED", reason=batch.reason)
    fresh = jobs(detail("a", 200), detail("b", 201), detail("c", 202), cancelled)
    retry = core.plan_attempt(["a", "b", "c", "d"], fresh, policy, NOW, stored)
    assert list(retry.done) == ["d"] and retry.done["d"].outcome is core.Outcome.CANCELLED
    assert retry.done["d"].runnable_for == timedelta(minutes=203)
    assert [b.job_ids for b in retry.batches] == [("c", "b")]  # the cap counts "d"
    assert retry.plan.eligible == 4 and retry.plan.breaker_tripped
    assert retry.plan.with_action(core.Outcome.SKIP_BREAKER)[0].job_id == "a"


def test_a_job_failed_for_another_reason_is_not_taken_for_an_earlier_cancel():
    sent = {"x": core.SentCancel("platform-ops reaper: RUNNABLE for 3h0m > 2h0m (UNKNOWN)", "n", "UNKNOWN",
                                 timedelta(hours=3), "")}
    assert core.cancelled_earlier(sent, jobs(detail("x", 180, status="FAILED", reason="Essential container exited"))
                                  ) == {}
    assert core.cancelled_earlier(sent, {}) == {}


def test_result_counts_are_keyed_by_what_the_metadata_shows():
    results = [core.JobResult("a", "", timedelta(0), "", "UNKNOWN", core.Outcome.CANCELLED),
               core.JobResult("b", "", timedelta(0), "", "UNKNOWN", core.Outcome.NOT_CANCELLED, "moved on to STARTING"),
               core.JobResult("c", "", timedelta(0), "", "UNKNOWN", core.Outcome.CANCELLED)]
    assert core.result_counts(results) == {"cancelled": 2, "not cancelled: moved on to STARTING": 1}
    assert core.cancelled_count(results) == 2


# ---- which reap run cancelled a job (alerting threads its failure under that run's report) ----

RUN = "6a118fca-6264-4040-bc98-d6c797428607"


def test_the_cancel_reason_names_its_reap_run_and_the_name_is_read_back():
    from platform_ops.vocabulary import REASON_PREFIX, reap_run_of

    reason = core.cancel_reason(timedelta(minutes=134), timedelta(hours=2), "CAPACITY:X", RUN)
    assert reason == f"platform-ops reaper: RUNNABLE for 2h14m > 2h0m (CAPACITY:X) (reap {RUN})"
    assert reason.startswith(REASON_PREFIX) and reap_run_of(reason) == RUN
    # the suffix survives the 1024 characters Batch keeps, whatever the category's length
    long = core.cancel_reason(timedelta(minutes=134), timedelta(hours=2), "X" * 2000, RUN)
    assert len(long) == core.MAX_REASON_CHARS and reap_run_of(long) == RUN


@pytest.mark.parametrize("text", [
    None, "", "Essential container in task exited",
    f"someone's staging code: cancelled (reap {RUN})",  # the suffix without the reaper's prefix
    f"platform-ops reaper: RUNNABLE for 3h > 2h (reap {RUN}) and more",  # not at the end
    "platform-ops reaper: RUNNABLE for 3h > 2h (reap not-a-run-id)",
    "platform-ops reaper: RUNNABLE for 3h > 2h0m (MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT)",  # before runs were named
])
def test_no_reap_run_is_read_from_any_other_text(text):
    from platform_ops.vocabulary import reap_run_of

    assert reap_run_of(text) is None


def test_every_cancel_an_attempt_sends_names_the_runs_root():
    details = jobs(detail("a", 300), detail("b", 200, reason="CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - no"))
    attempt = core.plan_attempt(["a", "b"], details, POLICY, NOW, {}, RUN)
    assert len(attempt.batches) == 2 and all(b.reason.endswith(f"(reap {RUN})") for b in attempt.batches)
    assert {s.reason for s in attempt.sent.values()} == {b.reason for b in attempt.batches}


# ---- "Batch Job Queue Blocked" events ----

def blocked_event(job_id="j1", at="2026-11-28T10:00:00Z", queue="ml-staging", reason=RESOURCE):
    """The envelope as the AWS Batch User Guide ("Job queue blocked events") shows it."""
    return json.dumps({
        "version": "0", "id": "c8f9c4b5-76e5-d76a-f980-7011e206042b", "detail-type": "Batch Job Queue Blocked",
        "source": "aws.batch", "account": "111111111111", "time": at, "region": "us-east-1",
        "resources": [f"arn:aws:batch:us-east-1:111111111111:job/{job_id}",
                      f"arn:aws:batch:us-east-1:111111111111:job-queue/{queue}"],
        "detail": {**detail(job_id), "jobQueue": f"arn:aws:batch:us-east-1:111111111111:job-queue/{queue}",
                   "statusReason": reason},
    })


def test_queue_blocked_events_are_read_and_nothing_else_is_taken_for_one():
    state_change = json.loads(blocked_event())
    state_change["detail-type"] = "Batch Job State Change"
    bodies = [blocked_event("j2", "2026-11-28T11:00:00Z", reason="x" * 1000), "not json", json.dumps(state_change),
              blocked_event("j1"), json.dumps({"detail-type": "Batch Job Queue Blocked", "source": "aws.batch"})]
    [first, second] = core.queue_blocks_from_events(bodies)
    assert first == core.QueueBlock("ml-staging", "j1", at(120), RESOURCE)
    assert first.category == "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"
    assert (second.job_id, len(second.reason)) == ("j2", core.MAX_BLOCK_REASON_CHARS)  # bounded


def test_a_queue_stays_blocked_since_the_first_event_while_its_job_is_watched():
    first = core.QueueBlock("ml-staging", "j1", at(120), RESOURCE)
    later = core.QueueBlock("ml-staging", "j2", at(30), "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - none left")
    other = core.QueueBlock("not-watched", "j3", at(10), RESOURCE)
    blocks = core.track_blocks({}, [first, later, other], ["ml-staging"])
    assert blocks == {"ml-staging": dataclasses.replace(later, since=at(120))}  # one per watched queue
    assert core.blocks_from_record(json.loads(json.dumps(core.blocks_record(blocks)))) == blocks
    watch = {"j2": ("ml-staging", at(30))}
    assert core.lift_blocks(blocks, watch) == blocks
    assert core.lift_blocks(blocks, {}) == {}  # its job left RUNNABLE (or the watch): no longer known blocked
    assert core.block_changes([later]) == [core.JobChange("j2", "ml-staging", "RUNNABLE", at(30))]
    assert core.block_text(blocks["ml-staging"]) == (
        "queue ml-staging blocked since 2026-11-28 10:00 UTC: CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - none left")


# ---- the report: whose jobs, why one was kept, where to look ----

def test_the_report_names_owners_the_protect_value_the_block_and_links_the_console_escaping_staging_text():
    details = jobs(detail("a" * 36, 300, tags={"metaflow.owner": "alice"}),
                   detail("b" * 36, 250, tags={"metaflow.owner": "<!channel>"}),
                   detail("c" * 36, 200, tags={"platform-ops:protect": "backfill <ask bob> & co",
                                               "metaflow.owner": "bob"}))
    plan = core.plan_reap(list(details), details, POLICY, NOW)
    after = {i: job_from_api(detail(i, 300, status="FAILED", reason=f"platform-ops reaper: x (reap {RUN})"))
             for i in ("a" * 36, "b" * 36)}
    results = core.verify(plan, CancelResult(tuple(after), {}), after)
    block = core.QueueBlock("ml-staging", "a" * 36, at(90), "MISCONFIGURATION:X - <b>too big</b>")
    ctx = core.ReportContext("eu-west-1", {"alice": "U0ALICE"}, block, "http://dagster/runs/r")
    msg = core.report("staging", "ml-staging", POLICY, plan, results, ctx=ctx)
    text = "\n".join(b.get("text", {}).get("text", "") for b in msg.blocks)
    assert "Owners: &lt;!channel&gt; 1, <@U0ALICE> 1, bob 1." in text and "<!channel>" not in text
    assert "skipped: protected by tag (backfill &lt;ask bob&gt; &amp; co) · bob" in text
    assert (f"• <https://eu-west-1.console.aws.amazon.com/batch/home?region=eu-west-1#jobs/detail/{'a' * 36}|"
            f"`SFN-DemoFlow--train--`> `aaaaaaaa` RUNNABLE 5h0m: cancelled · <@U0ALICE>") in text
    assert ("*Batch reported the queue blocked* since 2026-11-28 10:30 UTC by `aaaaaaaa`: "
            "MISCONFIGURATION:X - &lt;b&gt;too big&lt;/b&gt;") in text
    assert "http://dagster/runs/r" in msg.blocks[-1]["elements"][0]["text"]


def test_a_job_that_never_started_has_no_start_even_when_the_api_says_zero():
    """moto answers startedAt=0 for a job cancelled in RUNNABLE; a run time from it would be 56 years."""
    from platform_ops.adapters.batch import job_from_api

    item = {"jobId": "j1", "jobName": "SFN-TrainFlow--train--", "jobQueue": "ml-staging", "status": "FAILED",
            "createdAt": 1_796_000_000_000, "startedAt": 0, "stoppedAt": 1_796_000_600_000}
    job = job_from_api(item)
    assert job.started_at is None and job.stopped_at is not None
