"""Metrics decisions on real-shaped job records: vectorised summaries, datums, batching."""

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from platform_ops.metrics import core
from platform_ops.observations import BatchJob
from platform_ops.vocabulary import AfterReadError

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def ago(minutes):
    return NOW - timedelta(minutes=minutes)


def job(job_id, status, created, started=None, stopped=None, queue="ml-staging", reason="", name="SFN-DemoFlow--train--"):
    return BatchJob(job_id, name, status, ago(created), queue=queue, status_reason=reason,
                    started_at=None if started is None else ago(started),
                    stopped_at=None if stopped is None else ago(stopped), job_definition="metaflow_sandbox")


JOBS = [
    job("r1", "RUNNABLE", 150), job("r2", "RUNNABLE", 30),
    job("s1", "SUCCEEDED", 60, started=50, stopped=40), job("s2", "SUCCEEDED", 60, started=40, stopped=10),
    job("f1", "FAILED", 60, started=58, stopped=57, reason="Essential container in task exited"),
    job("f2", "FAILED", 200, stopped=5, reason="platform-ops reaper: RUNNABLE for 3h15m > 2h0m (X)"),
    job("old", "SUCCEEDED", 3000, started=2990, stopped=2980),
    job("p1", "RUNNING", 20, started=10, queue="ml-production", name="alice-ScoringFlow-17-score-99-0"),
]


def test_jobs_frame_parses_metaflow_names():
    df = core.jobs_frame("staging", JOBS)
    assert list(df.columns) == core.JOB_COLUMNS
    assert df.loc[df.job_id == "r1", ["flow", "step"]].values.tolist() == [["DemoFlow", "train"]]
    assert df.loc[df.job_id == "p1", ["flow", "step"]].values.tolist() == [["ScoringFlow", "score"]]
    other = core.jobs_frame("staging", [job("x", "RUNNING", 1, name="backfill-2026")])
    assert other["flow"].isna().all()


def test_window_keeps_active_and_recently_finished_jobs():
    df = core.in_window(core.jobs_frame("staging", JOBS), ago(24 * 60))
    assert "old" not in set(df.job_id) and {"r1", "r2", "s1", "f2", "p1"} <= set(df.job_id)


def test_queue_summary_matches_a_hand_count():
    df = core.in_window(core.jobs_frame("staging", JOBS), ago(24 * 60))
    s = core.queue_summary(df, NOW, [("staging", "ml-staging"), ("staging", "ml-empty")]).set_index("queue")
    q = s.loc["ml-staging"]
    assert (q.RUNNABLE, q.SUCCEEDED, q.FAILED, q.runnable, q.reaped, q.finished) == (2, 2, 2, 2, 1, 4)
    assert q.oldest_runnable_age_s == 150 * 60
    waits = [600, 1200, 120]  # s1, s2, f1 (f2 never started: no wait, no run time)
    assert q.wait_p50_s == np.percentile(waits, 50) and q.wait_p95_s == np.percentile(waits, 95)
    assert q.wait_max_s == 1200 and q.run_max_s == 1800
    assert q.failure_rate == 0.5
    empty = s.loc["ml-empty"]
    assert empty.RUNNABLE == 0 and empty.finished == 0 and np.isnan(empty.failure_rate)
    assert s.loc["ml-production"].RUNNING == 1


def test_summary_is_vectorised_enough_for_a_million_records():
    n = 1_000_000
    rng = np.random.default_rng(7)
    created = pd.Timestamp(NOW) - pd.to_timedelta(rng.integers(0, 86400, n), unit="s")
    df = pd.DataFrame({
        "environment": "staging", "queue": rng.choice(["a", "b", "c"], n), "job_id": np.arange(n).astype(str),
        "name": "SFN-F--s--", "job_definition": "d", "status": rng.choice(core.STATUSES, n),
        "status_reason": "", "created_at": created,
        "started_at": created + pd.to_timedelta(rng.integers(0, 600, n), unit="s"),
        "stopped_at": created + pd.to_timedelta(rng.integers(600, 1200, n), unit="s"), "flow": "F", "step": "s"})
    s = core.queue_summary(df, NOW)
    assert s[list(core.STATUSES)].to_numpy().sum() == n


def test_capacity_summary_counts_and_converts():
    instances = pd.DataFrame([
        ("staging", "ce", "cl", "i1", "ACTIVE", ago(10), 4096, 1024, 7482, 1000),
        ("staging", "ce", "cl", "i2", "DRAINING", ago(3000), 4096, 4096, 7482, 7482),
    ], columns=core.INSTANCE_COLUMNS)
    s = core.capacity_summary(instances, ago(24 * 60), {("staging", "ce"): 2},
                              [("staging", "ce", "cl"), ("production", "ce2", "cl2")]).set_index("compute_environment")
    assert (s.loc["ce"].active, s.loc["ce"].draining, s.loc["ce"].registered_in_window, s.loc["ce"].deregistered) == (1, 1, 1, 2)
    assert (s.loc["ce"].registered_vcpu, s.loc["ce"].remaining_vcpu, s.loc["ce"].remaining_memory_mib) == (8, 5, 8482)
    assert s.loc["ce2"].active == 0


def test_metric_data_has_bounded_dimensions_and_no_nan():
    df = core.in_window(core.jobs_frame("staging", JOBS), ago(24 * 60))
    queues = core.queue_summary(df, NOW, [("staging", "ml-empty")])
    capacity = core.capacity_summary(pd.DataFrame(columns=core.INSTANCE_COLUMNS), NOW, {}, [("staging", "ce", "cl")])
    datums = core.metric_data(queues, capacity)
    assert all(np.isfinite(d.value) for d in datums)
    assert {tuple(k for k, _ in d.dimensions) for d in datums} == {("Environment", "JobQueue"),
                                                                   ("Environment", "ComputeEnvironment")}
    names = {d.name for d in datums}
    assert {"RUNNABLE", "FAILED", "RunnableJobs", "OldestRunnableAgeSeconds", "ReapedJobs", "WaitTimeP95Seconds",
            "RunTimeP95Seconds", "FailureRate", "RegisterContainerInstance", "DeregisterContainerInstance"} <= names
    assert not any(d.name == "FailureRate" and dict(d.dimensions)["JobQueue"] == "ml-empty" for d in datums)


def test_put_metric_data_batches_by_count_and_size():
    small = [{"MetricName": "m", "Value": 1.0}] * 2500
    assert [len(b) for b in core.batches(small)] == [1000, 1000, 500]
    big = [{"MetricName": "m" * 200, "Value": 1.0, "Dimensions": [{"Name": "x", "Value": "y" * 250}] * 30}] * 200
    calls = core.batches(big)
    assert len(calls) > 1 and all(len(json.dumps(c)) * 2 <= core.MAX_BYTES_PER_CALL for c in calls)


def test_dashboard_body_is_stable_and_covers_every_queue():
    a = core.dashboard_body("staging", "us-east-1", ["q2", "q1"], ["ce"])
    assert a == core.dashboard_body("staging", "us-east-1", ["q1", "q2", "q1"], ["ce"])
    body = json.loads(a)
    titles = [w["properties"]["title"] for w in body["widgets"]]
    assert "RUNNABLE jobs" in titles and "Instances registered / deregistered" in titles
    metrics = [m for w in body["widgets"] for m in w["properties"]["metrics"]]
    assert {m[5] for m in metrics if m[4] == "JobQueue"} == {"q1", "q2"}


def test_instances_gone_counts_only_what_left_a_compute_environment_read_this_time():
    previous = {("staging", "ce"): ["arn:i1", "arn:i2", "arn:i3"], ("production", "ce2"): ["arn:p1"]}
    current = {("staging", "ce"): ["arn:i3", "arn:i4"], ("staging", "new-ce"): ["arn:n1"]}
    # production was not read (its read failed): no count, rather than one deregistration
    assert core.instances_gone(previous, current) == {("staging", "ce"): 2, ("staging", "new-ce"): 0}
    assert core.instances_gone({}, {}) == {}


@pytest.mark.parametrize("request_scoped, throttled, after", [
    (True, False, AfterReadError.NEXT_QUEUE), (False, False, AfterReadError.NEXT_ENVIRONMENT),
    (True, True, AfterReadError.RETRY_STEP), (False, True, AfterReadError.RETRY_STEP)])
def test_a_read_error_skips_a_queue_or_an_environment_and_a_throttle_fails_the_step(request_scoped, throttled, after):
    assert core.after_read_error(request_scoped, throttled) is after


def test_a_publish_plan_resumes_after_the_batches_an_earlier_attempt_put():
    datums = [core.Datum(env, f"M{i}", (("Environment", env),), float(i), "Count")
              for env in ("staging", "production") for i in range(5)]
    plan = core.publish_plan(datums, ["staging", "production", "empty"], NOW, {"staging": 2})
    assert [(p.environment, len(p.batches), p.start, p.datums) for p in plan] == [
        ("staging", 1, 2, 5), ("production", 1, 0, 5), ("empty", 0, 0, 0)]
    [[first, *_]] = plan[0].batches
    assert first["Timestamp"] == NOW and first["Dimensions"] == [{"Name": "Environment", "Value": "staging"}]
    assert core.publish_plan(datums, ["staging"], NOW, {}) == core.publish_plan(datums, ["staging"], NOW, {})


def test_the_checks_pick_late_and_failing_queues_and_their_numbers_read_short():
    summary = core.queue_summary(core.jobs_frame("staging", JOBS), NOW, [("staging", "ml-gpu")])
    late = core.late_queues(summary, lambda queue: 120 * 60)
    assert list(late["queue"]) == ["ml-staging"]  # r1 has waited 150 minutes; ml-gpu has nothing
    assert list(core.late_queues(summary, lambda queue: 151 * 60)["queue"]) == []
    assert list(core.failing_queues(summary, 0.5)["queue"]) == []  # ml-staging: 2 of 5 finished failed
    assert list(core.failing_queues(summary, 0.3)["queue"]) == ["ml-staging"]
    assert (core.age_text(150 * 60), core.age_text(float("nan")), core.pct_text(0.4), core.pct_text(np.nan)) == (
        "2h30m", "-", "40%", "-")
    overview = core.overview_markdown(summary).splitlines()
    assert overview[0].startswith("| environment | queue | RUNNABLE | oldest |") and len(overview) == 2 + len(summary)
    assert "| staging | ml-staging | 2 | 2h30m | 0 | 2 | 40% | 1 |" in overview


def test_chart_panels_split_what_the_chart_queries_read_back():
    queries = core.chart_queries("staging", ["ml-staging", "ml-gpu"])
    dims = {"Environment": "staging", "JobQueue": "ml-staging"}
    assert queries[:2] == [("ml-staging RunnableJobs", "RunnableJobs", dims),
                           ("ml-staging OldestRunnableAgeSeconds", "OldestRunnableAgeSeconds", dims)]
    series = {label: [(NOW, 1.0)] for label, _, _ in queries}
    [(runnable, jobs_series), (oldest, ages)] = core.chart_panels(series)
    assert sorted(jobs_series) == ["ml-gpu RunnableJobs", "ml-staging RunnableJobs"]
    assert sorted(ages) == ["ml-gpu OldestRunnableAgeSeconds", "ml-staging OldestRunnableAgeSeconds"]


def test_a_queue_is_blocked_by_batchs_word_from_an_event_first_else_from_a_runnable_jobs_reason():
    too_big = "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job resource requirement is higher than the CE(s)"
    jobs = core.jobs_frame("staging", [
        job("young", "RUNNABLE", 30, reason="CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - none left"),
        job("old", "RUNNABLE", 150, reason=too_big),
        job("plain", "RUNNABLE", 400, queue="ml-gpu"),  # RUNNABLE without a blocking reason
        job("done", "FAILED", 300, stopped=10, queue="ml-gpu", reason=too_big),  # no longer blocks anything
        job("ours", "RUNNABLE", 300, queue="ml-cpu", reason="platform-ops reaper: RUNNABLE for 5h > 2h (X)"),
    ])
    watched = [("staging", "ml-staging"), ("staging", "ml-gpu"), ("staging", "ml-cpu"), ("staging", "ml-arm")]
    polled = core.queue_blocks(jobs, {}, watched).set_index("queue")
    assert list(polled["blocked"]) == [True, False, False, False]  # one row per watched queue, in order
    assert (polled.loc["ml-staging", "reason"], polled.loc["ml-staging", "since"]) == (too_big, pd.Timestamp(ago(150)))
    assert polled.loc["ml-staging", "source"] == "job status"
    reported = {("staging", "ml-gpu"): (ago(5), "CAPACITY:X - y"), ("staging", "ml-staging"): (ago(20), "EVENT:Z - z")}
    evented = core.queue_blocks(jobs, reported, watched).set_index("queue")
    assert list(evented["blocked"]) == [True, True, False, False]
    assert tuple(evented.loc["ml-staging", ["reason", "source"]]) == ("EVENT:Z - z", "queue blocked event")
    assert list(core.queue_blocks(core.jobs_frame("", []), {}, watched[:1])["blocked"]) == [False]
