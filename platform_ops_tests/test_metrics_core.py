"""Metrics decisions on real-shaped job records: vectorised summaries, datums, batching."""

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from platform_ops.metrics import core
from platform_ops.observations import BatchJob

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


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
