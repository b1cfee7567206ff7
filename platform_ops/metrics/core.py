"""Platform metrics, decided: job tables, queue and capacity summaries, CloudWatch datums and
dashboards. Pure pandas over observations; no AWS, no Dagster. Vectorised: no per-row loops.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from platform_ops.observations import BatchJob
from platform_ops.vocabulary import REASON_PREFIX as REAPER_PREFIX
from platform_ops.vocabulary import AfterReadError, format_duration
from platform_ops.vocabulary import after_read_error as _after_read_error

STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
ACTIVE = STATUSES[:5]
JOB_COLUMNS = ["environment", "queue", "job_id", "name", "job_definition", "status", "status_reason",
               "created_at", "started_at", "stopped_at", "flow", "step"]

# Metaflow's Batch job names: SFN-<Flow>--<step>-- (Step Functions), <user>-<Flow>-<run>-<step>-<task>-<retry>
_SFN_NAME = re.compile(r"^SFN-(?P<flow>[A-Za-z_][A-Za-z0-9_]*)--(?P<step>[A-Za-z_][A-Za-z0-9_]*)--")
_LOCAL_NAME = re.compile(r"^[^-]+-(?P<flow>[A-Z][A-Za-z0-9_]*)-[^-]+-(?P<step>[a-z_][a-z0-9_]*)-[^-]+-\d+$")


def jobs_frame(environment: str, jobs: Iterable[BatchJob]) -> pd.DataFrame:
    """One row per job; flow and step parsed from Metaflow's job names where they follow them."""
    rows = [(environment, j.queue, j.job_id, j.name, j.job_definition, j.status, j.status_reason,
             j.created_at, j.started_at, j.stopped_at) for j in jobs]
    df = pd.DataFrame(rows, columns=JOB_COLUMNS[:-2])
    for col in ("created_at", "started_at", "stopped_at"):
        df[col] = pd.to_datetime(df[col], utc=True)
    names = df["name"].astype("string")
    parsed = names.str.extract(_SFN_NAME).combine_first(names.str.extract(_LOCAL_NAME))
    df["flow"] = parsed.get("flow", pd.Series(pd.NA, index=df.index, dtype="string"))
    df["step"] = parsed.get("step", pd.Series(pd.NA, index=df.index, dtype="string"))
    return df[JOB_COLUMNS]


def in_window(df: pd.DataFrame, start: datetime) -> pd.DataFrame:
    """Active jobs, and finished jobs that stopped (or were created) since `start`."""
    start = pd.Timestamp(start)
    active = df["status"].isin(ACTIVE)
    recent = df["stopped_at"].ge(start) | (df["stopped_at"].isna() & df["created_at"].ge(start))
    return df[active | recent]


SUMMARY_COLUMNS = ["environment", "queue", *STATUSES, "runnable", "oldest_runnable_age_s", "wait_p50_s",
                   "wait_p95_s", "wait_max_s", "run_p50_s", "run_p95_s", "run_max_s", "finished", "failure_rate",
                   "reaped"]


def queue_summary(jobs: pd.DataFrame, now: datetime, queues: Iterable[tuple[str, str]] = ()) -> pd.DataFrame:
    """Per environment and queue: jobs per status now, RUNNABLE count and oldest age, wait and run
    time percentiles of jobs finished in the window, failure rate, jobs reaped. Watched queues
    with no jobs get a row of zeros."""
    keys = ["environment", "queue"]
    now = pd.Timestamp(now)
    df = jobs.assign(
        wait_s=(jobs["started_at"] - jobs["created_at"]).dt.total_seconds(),
        run_s=(jobs["stopped_at"] - jobs["started_at"]).dt.total_seconds(),
        runnable_age_s=(now - jobs["created_at"]).dt.total_seconds().where(jobs["status"] == "RUNNABLE"),
        finished=jobs["status"].isin(["SUCCEEDED", "FAILED"]),
        failed=jobs["status"] == "FAILED",
        reaped=(jobs["status"] == "FAILED") & jobs["status_reason"].fillna("").str.startswith(REAPER_PREFIX),
    )
    counts = pd.crosstab([df["environment"], df["queue"]], df["status"]).reindex(columns=list(STATUSES), fill_value=0)
    finished = df[df["finished"]]
    grouped = df.groupby(keys)
    fin = finished.groupby(keys)
    summary = pd.concat([
        counts,
        grouped["runnable_age_s"].max().rename("oldest_runnable_age_s"),
        fin["wait_s"].quantile(0.5).rename("wait_p50_s"), fin["wait_s"].quantile(0.95).rename("wait_p95_s"),
        fin["wait_s"].max().rename("wait_max_s"),
        fin["run_s"].quantile(0.5).rename("run_p50_s"), fin["run_s"].quantile(0.95).rename("run_p95_s"),
        fin["run_s"].max().rename("run_max_s"),
        grouped["finished"].sum().rename("finished"), grouped["failed"].sum().rename("failed_n"),
        grouped["reaped"].sum().rename("reaped"),
    ], axis=1)
    wanted = pd.MultiIndex.from_tuples(list(queues), names=keys) if queues else None
    if wanted is not None:
        summary = summary.reindex(summary.index.union(wanted))
    summary[list(STATUSES) + ["finished", "failed_n", "reaped"]] = (
        summary[list(STATUSES) + ["finished", "failed_n", "reaped"]].fillna(0).astype(int))
    summary["runnable"] = summary["RUNNABLE"]
    summary["failure_rate"] = (summary["failed_n"] / summary["finished"].where(summary["finished"] > 0)).astype(float)
    return summary.reset_index()[SUMMARY_COLUMNS]


# Batch's blocking reasons read "CATEGORY:CODE - text" (AWS Batch User Guide, "Jobs stuck in a
# RUNNABLE status"); a RUNNABLE job's statusReason carries it while it blocks its queue.
BLOCKING_REASON = r"^[A-Z_]+:[A-Z_]+ - "
BLOCK_COLUMNS = ["environment", "queue", "blocked", "since", "reason", "source"]


def queue_blocks(jobs: pd.DataFrame, reported: Mapping[tuple[str, str], tuple[datetime, str]],
                 queues: Iterable[tuple[str, str]]) -> pd.DataFrame:
    """Per watched (environment, queue), whether Batch says it is blocked, since when and why: a
    "Batch Job Queue Blocked" event the reaper keeps (`reported`, known at once where events
    flow), else the oldest RUNNABLE job whose statusReason is a blocking reason (each refresh)."""
    keys = ["environment", "queue"]
    runnable = jobs[(jobs["status"] == "RUNNABLE")
                    & jobs["status_reason"].fillna("").astype(str).str.match(BLOCKING_REASON)]
    oldest = runnable.sort_values("created_at").groupby(keys).first()
    seen = pd.DataFrame({"since": oldest["created_at"], "reason": oldest["status_reason"], "source": "job status"})
    events = pd.DataFrame([(e, q, pd.Timestamp(since), reason, "queue blocked event")
                           for (e, q), (since, reason) in reported.items()],
                          columns=[*keys, "since", "reason", "source"]).set_index(keys)
    both = events.combine_first(seen) if not events.empty else seen
    wanted = pd.MultiIndex.from_tuples(list(queues), names=keys)
    out = both.reindex(wanted) if len(wanted) else both
    out["blocked"] = out["reason"].notna()
    return out.reset_index()[BLOCK_COLUMNS]


CAPACITY_COLUMNS = ["environment", "compute_environment", "cluster", "active", "draining", "registered_in_window",
                    "deregistered", "registered_vcpu", "remaining_vcpu", "registered_memory_mib",
                    "remaining_memory_mib"]


def capacity_summary(instances: pd.DataFrame, window_start: datetime,
                     gone: Mapping[tuple[str, str], int] | None = None,
                     environments: Iterable[tuple[str, str, str]] = ()) -> pd.DataFrame:
    """Per compute environment, from one row per container instance (environment,
    compute_environment, cluster, arn, status, registered_at, registered/remaining CPU units and
    memory); `gone` counts instances seen last time and missing now."""
    keys = ["environment", "compute_environment", "cluster"]
    df = instances.assign(
        is_active=instances["status"] == "ACTIVE",
        is_draining=instances["status"] == "DRAINING",
        new=pd.to_datetime(instances["registered_at"], utc=True) >= pd.Timestamp(window_start),
    )
    g = df.groupby(keys)
    out = pd.concat([
        g["is_active"].sum().rename("active"), g["is_draining"].sum().rename("draining"),
        g["new"].sum().rename("registered_in_window"),
        (g["registered_cpu"].sum() / 1024).rename("registered_vcpu"),
        (g["remaining_cpu"].sum() / 1024).rename("remaining_vcpu"),
        g["registered_memory"].sum().rename("registered_memory_mib"),
        g["remaining_memory"].sum().rename("remaining_memory_mib"),
    ], axis=1)
    wanted = list(environments)
    if wanted:
        out = out.reindex(out.index.union(pd.MultiIndex.from_tuples(wanted, names=keys)))
    out = out.fillna(0)
    out = out.reset_index()
    gone = gone or {}
    out["deregistered"] = [gone.get((e, c), 0)
                           for e, c in zip(out["environment"], out["compute_environment"], strict=True)]
    ints = ["active", "draining", "registered_in_window", "deregistered", "registered_memory_mib",
            "remaining_memory_mib"]
    out[ints] = out[ints].astype(int)
    return out[CAPACITY_COLUMNS]


def instances_gone(previous: Mapping[tuple[str, str], Iterable[str]],
                   current: Mapping[tuple[str, str], Iterable[str]]) -> dict[tuple[str, str], int]:
    """Per (environment, compute environment) read this time, how many container instances seen
    last time are missing now; one not read this time gets no count (a failed read is no
    deregistration)."""
    return {key: len(set(previous.get(key, ())) - set(arns)) for key, arns in current.items()}


def after_read_error(request_scoped: bool, throttled: bool) -> AfterReadError:
    """A throttle that outlasted the client's attempts says nothing of the queue: the step fails
    for its retry policy rather than publish a gap; any other error is recorded and skipped."""
    return AfterReadError.RETRY_STEP if throttled else _after_read_error(request_scoped)


INSTANCE_COLUMNS = ["environment", "compute_environment", "cluster", "arn", "status", "registered_at",
                    "registered_cpu", "remaining_cpu", "registered_memory", "remaining_memory"]


# ---- CloudWatch ----

NAMESPACE = "PlatformOps/Batch"
QUEUE_METRICS = {  # metric name -> (summary column, unit)
    **{s: (s, "Count") for s in STATUSES},  # aws-batch-runtime-monitoring's vocabulary
    "RunnableJobs": ("runnable", "Count"),
    "OldestRunnableAgeSeconds": ("oldest_runnable_age_s", "Seconds"),
    "ReapedJobs": ("reaped", "Count"),
    "WaitTimeP95Seconds": ("wait_p95_s", "Seconds"),
    "RunTimeP95Seconds": ("run_p95_s", "Seconds"),
    "FailureRate": ("failure_rate", "None"),
}
CAPACITY_METRICS = {
    "RegisterContainerInstance": ("registered_in_window", "Count"),
    "DeregisterContainerInstance": ("deregistered", "Count"),
    "ActiveContainerInstances": ("active", "Count"),
    "DrainingContainerInstances": ("draining", "Count"),
    "RegisteredVcpu": ("registered_vcpu", "Count"),
    "RemainingVcpu": ("remaining_vcpu", "Count"),
    "RegisteredMemoryMiB": ("registered_memory_mib", "Megabytes"),
    "RemainingMemoryMiB": ("remaining_memory_mib", "Megabytes"),
}


@dataclass(frozen=True)
class Datum:
    environment: str
    name: str
    dimensions: tuple[tuple[str, str], ...]
    value: float
    unit: str

    def api(self, timestamp: datetime) -> dict:
        return {"MetricName": self.name, "Dimensions": [{"Name": k, "Value": v} for k, v in self.dimensions],
                "Value": self.value, "Unit": self.unit, "Timestamp": timestamp}


def _datums(frame: pd.DataFrame, metrics: Mapping[str, tuple[str, str]], dimension: str, column: str) -> list[Datum]:
    out = []
    for name, (col, unit) in metrics.items():
        values = pd.to_numeric(frame[col], errors="coerce").astype(float)
        ok = np.isfinite(values.to_numpy())  # CloudWatch rejects NaN and inf
        for env, key, value in zip(frame.loc[ok, "environment"], frame.loc[ok, column], values[ok], strict=True):
            out.append(Datum(env, name, (("Environment", env), (dimension, key)), float(value), unit))
    return out


def metric_data(queues: pd.DataFrame, capacity: pd.DataFrame) -> list[Datum]:
    """Bounded cardinality: Environment plus JobQueue or ComputeEnvironment, nothing per job."""
    return (_datums(queues, QUEUE_METRICS, "JobQueue", "queue")
            + _datums(capacity, CAPACITY_METRICS, "ComputeEnvironment", "compute_environment"))


@dataclass(frozen=True)
class Publish:
    """One environment's PutMetricData calls; the first `start` an earlier attempt already put."""

    environment: str
    batches: list[list[dict]]
    start: int = 0

    @property
    def datums(self) -> int:
        return sum(len(b) for b in self.batches)


def publish_plan(datums: Iterable[Datum], environments: Iterable[str], timestamp: datetime,
                 put: Mapping[str, int]) -> list[Publish]:
    """Per environment (its own account), the calls to make. The same datums and `timestamp` give
    the same batches on every attempt, so `put` (environment -> batches already put) says what is
    left: a retried step doubles no sample."""
    datums = list(datums)
    return [Publish(env, batches([d.api(timestamp) for d in datums if d.environment == env]), put.get(env, 0))
            for env in environments]


MAX_DATUMS_PER_CALL = 1000
MAX_BYTES_PER_CALL = 1_000_000


def batches(datums: list[dict], max_count: int = MAX_DATUMS_PER_CALL, max_bytes: int = MAX_BYTES_PER_CALL,
            ) -> list[list[dict]]:
    """PutMetricData calls: at most 1000 datums and 1 MB each (payload size estimated as JSON,
    with headroom for the query encoding)."""
    calls: list[list[dict]] = []
    current: list[dict] = []
    size = 0
    for d in datums:
        cost = len(json.dumps(d, default=str)) * 2
        if current and (len(current) >= max_count or size + cost > max_bytes):
            calls.append(current)
            current, size = [], 0
        current.append(d)
        size += cost
    if current:
        calls.append(current)
    return calls


def dashboard_body(environment: str, region: str, queues: Iterable[str], compute_environments: Iterable[str],
                   namespace: str = NAMESPACE) -> str:
    """One dashboard per environment, generated from the metric list (stable JSON: unchanged
    input gives an identical body, so an unchanged dashboard is not re-put)."""
    queues, ces = sorted(set(queues)), sorted(set(compute_environments))
    widgets = []

    def widget(title: str, metrics: list[list], stat: str = "Maximum", y: int = 0, x: int = 0) -> None:
        widgets.append({"type": "metric", "x": x, "y": y, "width": 12, "height": 6, "properties": {
            "title": title, "region": region, "stat": stat, "period": 300, "view": "timeSeries",
            "metrics": metrics}})

    def per(metric: str, dim: str, keys: list[str]) -> list[list]:
        return [[namespace, metric, "Environment", environment, dim, k, {"label": f"{k} {metric}"}] for k in keys]

    layout = [
        ("Jobs by state", [[namespace, s, "Environment", environment, "JobQueue", q, {"label": f"{q} {s}"}]
                           for q in queues for s in STATUSES]),
        ("RUNNABLE jobs", per("RunnableJobs", "JobQueue", queues)),
        ("Oldest RUNNABLE age (s)", per("OldestRunnableAgeSeconds", "JobQueue", queues)),
        ("Wait time p95 (s)", per("WaitTimeP95Seconds", "JobQueue", queues)),
        ("Run time p95 (s)", per("RunTimeP95Seconds", "JobQueue", queues)),
        ("Failure rate", per("FailureRate", "JobQueue", queues)),
        ("Jobs reaped", per("ReapedJobs", "JobQueue", queues)),
        ("Instances registered / deregistered",
         [[namespace, m, "Environment", environment, "ComputeEnvironment", c, {"label": f"{c} {m}"}]
          for c in ces for m in ("RegisterContainerInstance", "DeregisterContainerInstance")]),
        ("Capacity (vCPU)", [[namespace, m, "Environment", environment, "ComputeEnvironment", c,
                              {"label": f"{c} {m}"}] for c in ces for m in ("RegisteredVcpu", "RemainingVcpu")]),
    ]
    for i, (title, metrics) in enumerate(layout):
        if metrics:
            widget(title, metrics, y=(i // 2) * 6, x=(i % 2) * 12)
    return json.dumps({"widgets": widgets}, sort_keys=True)


def dashboard_name(environment: str) -> str:
    return f"platform-ops-{environment}"


CHART_METRICS = ("RunnableJobs", "OldestRunnableAgeSeconds")


def chart_queries(environment: str, queues: Iterable[str]) -> list[tuple[str, str, dict[str, str]]]:
    """The series a chart reads back: (label, metric, dimensions) per queue and charted metric."""
    return [(f"{q} {metric}", metric, {"Environment": environment, "JobQueue": q})
            for q in queues for metric in CHART_METRICS]


def chart_panels(series: Mapping[str, list]) -> list[tuple[str, dict[str, list]]]:
    """The chart's panels, (y label, {series label: points}), from what `chart_queries` read."""
    return [("RUNNABLE jobs", {k: v for k, v in series.items() if k.endswith("RunnableJobs")}),
            ("oldest age (s)", {k: v for k, v in series.items() if k.endswith("OldestRunnableAgeSeconds")})]


# ---- checks and how their numbers read ----

def late_queues(summary: pd.DataFrame, threshold_s: Callable[[str], float]) -> pd.DataFrame:
    """The rows whose oldest RUNNABLE job is older than its queue's threshold (seconds)."""
    return summary[summary["oldest_runnable_age_s"] > summary["queue"].map(threshold_s)]


def failing_queues(summary: pd.DataFrame, max_rate: float) -> pd.DataFrame:
    """The rows whose failure rate in the window exceeds `max_rate` (no finished job: not failing)."""
    return summary[summary["failure_rate"] > max_rate]


def age_text(seconds: float) -> str:
    return "-" if pd.isna(seconds) else format_duration(timedelta(seconds=float(seconds)))


def pct_text(rate: float) -> str:
    return "-" if pd.isna(rate) else f"{rate:.0%}"


def overview_markdown(summary: pd.DataFrame) -> str:
    """The queue summary as the short table an operator scans first."""
    lines = [f"| {r.environment} | {r.queue} | {r.RUNNABLE} | {age_text(r.oldest_runnable_age_s)} | {r.RUNNING} | "
             f"{r.FAILED} | {pct_text(r.failure_rate)} | {r.reaped} |" for r in summary.itertuples()]
    return ("| environment | queue | RUNNABLE | oldest | RUNNING | FAILED | failure rate | reaped |\n"
            "|---|---|---|---|---|---|---|---|\n" + "\n".join(lines))
