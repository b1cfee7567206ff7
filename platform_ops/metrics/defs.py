"""Platform metrics as Dagster assets (group `platform_metrics`), refreshed on a schedule:
Batch jobs → queue and capacity summaries → CloudWatch metrics → dashboards (+ PNG charts).

Every decision is `metrics.core`'s; the functions here read (adapters), call it, publish
(adapters) and record, each taking a small step object so it runs without an asset.
"""

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from platform_ops.adapters import batch, cloudwatch, ecs
from platform_ops.adapters.aws import AwsEnvironmentResource, AwsError, count_calls
from platform_ops.adapters.ledger import Ledger
from platform_ops.metadata import table as metadata_table
from platform_ops.metrics import charts, core
from platform_ops.reaper.defs import queue_blocks as reported_blocks
from platform_ops.resources import aws_for, aws_resource_key
from platform_ops.settings import EnvironmentSettings, Settings
from platform_ops.vocabulary import AfterReadError

GROUP = "platform_metrics"
LEDGER = "metrics"  # the ledger namespace of the instances seen and the batches published
# A step whose AWS calls still fail after botocore's attempts (a long throttling spell) runs again,
# reading its inputs from the IO manager; each step is idempotent (see publish_metrics).
METRICS_RETRY = dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def _table(df: pd.DataFrame, limit: int = 200) -> dg.MetadataValue:
    return metadata_table(df.head(limit).to_dict("records"), [str(c) for c in df.columns])


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class MetricsStep:
    """What a metrics step uses of Dagster: the instance (the ledger), the run, the log, each
    environment's AWS resource."""

    instance: dg.DagsterInstance
    run_id: str
    log: Any
    aws: Callable[[str], AwsEnvironmentResource]


def metrics_step(context: dg.AssetExecutionContext) -> MetricsStep:
    return MetricsStep(context.instance, context.run.run_id, context.log, lambda name: aws_for(context, name))


def _read_failed(step: MetricsStep, errors: list[str], where: str, exc: AwsError) -> AfterReadError:
    """Record a failed read unless it fails the step (then raise it for the retry policy)."""
    after = core.after_read_error(exc.request_scoped, exc.throttled)
    if after is AfterReadError.RETRY_STEP:
        raise exc
    errors.append(f"{where}: {exc}")
    step.log.error(errors[-1])
    return after


def read_jobs(settings: Settings, step: MetricsStep, now: datetime) -> tuple[pd.DataFrame, list[str], dict]:
    """Every watched queue's jobs in the window, what could not be read, the AWS calls taken."""
    frames, errors = [], []
    with count_calls() as calls:
        for env in settings.environments.values():
            client = step.aws(env.name).client("batch")
            for queue in env.job_queues:
                try:
                    jobs = [j for status in core.STATUSES for j in batch.iter_jobs(client, queue, status)]
                except AwsError as exc:
                    if _read_failed(step, errors, f"{env.name}/{queue}", exc) is AfterReadError.NEXT_ENVIRONMENT:
                        break
                    continue
                frames.append(core.jobs_frame(env.name, jobs))
    df = pd.concat(frames, ignore_index=True) if frames else core.jobs_frame("", [])
    df = core.in_window(df, now - timedelta(hours=settings.metrics.window_hours)).reset_index(drop=True)
    return df, errors, dict(calls)


@dataclass
class CapacityRead:
    """Container instances read: their rows, the (environment, compute environment, cluster)
    read, each compute environment's instance ARNs, what could not be read."""

    rows: list[dict] = field(default_factory=list)
    known: list[tuple[str, str, str]] = field(default_factory=list)
    arns: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def read_environment_capacity(step: MetricsStep, env: EnvironmentSettings, read: CapacityRead) -> None:
    """The environment's compute environments (from its queues) and their container instances."""
    aws = step.aws(env.name)
    client = aws.client("batch")
    names = sorted({ce for ces in batch.queue_compute_environments(client, env.job_queues).values() for ce in ces})
    for ce, cluster in batch.compute_environments(client, names) if names else []:
        read.known.append((env.name, ce, cluster))
        current = [{"environment": env.name, "compute_environment": ce, "cluster": cluster, **row}
                   for row in ecs.container_instances(aws.client("ecs"), cluster)]
        read.rows += current
        read.arns[(env.name, ce)] = sorted(r["arn"] for r in current)


def capacity(settings: Settings, step: MetricsStep, now: datetime) -> tuple[pd.DataFrame, CapacityRead]:
    """Per compute environment, its instances and capacity, with how many instances left since
    the last refresh; what was seen is stored once every read is done, so a retried step
    compares with the same."""
    read, ledger = CapacityRead(), Ledger(step.instance, LEDGER)
    for env in settings.environments.values():
        try:
            read_environment_capacity(step, env, read)
        except AwsError as exc:
            _read_failed(step, read.errors, env.name, exc)
    key = "instances/{}/{}".format
    previous = {k: (ledger.get(key(*k)) or {}).get("arns", []) for k in read.arns}
    gone = core.instances_gone(previous, read.arns)
    for k, arns in read.arns.items():
        ledger.put(key(*k), arns=arns)
    instances = pd.DataFrame(read.rows, columns=core.INSTANCE_COLUMNS)
    window_start = now - timedelta(hours=settings.metrics.window_hours)
    return core.capacity_summary(instances, window_start, gone, read.known), read


def publish_metrics(settings: Settings, step: MetricsStep, queues: pd.DataFrame, capacity_summary: pd.DataFrame
                    ) -> dict[str, Any]:
    """Both summaries to CloudWatch, per environment's account. Idempotent under the step's retry:
    the datums carry the run's time, not the attempt's, and the batches an earlier attempt put
    are recorded and not put again (no doubled samples)."""
    m = settings.metrics
    now = step.instance.get_run_record_by_id(step.run_id).create_timestamp  # UTC, aware
    datums = core.metric_data(queues, capacity_summary)
    ledger, key = Ledger(step.instance, LEDGER), f"published/{step.run_id}"
    put = dict(ledger.get(key) or {})  # environment -> batches put
    published = {}
    with count_calls() as calls:
        for plan in core.publish_plan(datums, settings.environments, now, put):
            for i in range(plan.start, len(plan.batches)):
                cloudwatch.put_metric_data(step.aws(plan.environment).client("cloudwatch"), m.namespace,
                                           [plan.batches[i]])
                put[plan.environment] = i + 1
                ledger.put(key, **put)
            if plan.batches:
                published[plan.environment] = plan.datums
    return {
        "metrics_published": dg.MetadataValue.int(sum(published.values())),
        "by_environment": dg.MetadataValue.json(published),
        "put_metric_data_calls": dg.MetadataValue.int(calls.get("CloudWatch.PutMetricData", 0)),
        "metric_names": dg.MetadataValue.json(sorted({d.name for d in datums})),
    }


def publish_dashboard(settings: Settings, step: MetricsStep, env: EnvironmentSettings, ces: list[str],
                      now: datetime) -> tuple[bool, dict[str, Any]]:
    """The environment's dashboard (put only when its body changed) and its chart as metadata
    (and a file, where metrics.charts_dir is set)."""
    m = settings.metrics
    client = step.aws(env.name).client("cloudwatch")
    body = core.dashboard_body(env.name, env.region, list(env.job_queues), ces, m.namespace)
    changed = cloudwatch.put_dashboard_if_changed(client, core.dashboard_name(env.name), body)
    series = cloudwatch.metric_series(client, m.namespace, core.chart_queries(env.name, env.job_queues),
                                      now - timedelta(hours=m.chart_hours), now + timedelta(minutes=5))
    png = charts.line_chart(f"{env.name}: RUNNABLE jobs and oldest RUNNABLE age, last {m.chart_hours}h",
                            core.chart_panels(series))
    metadata = {}
    if m.charts_dir:
        path = Path(m.charts_dir) / f"{env.name}-runnable.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        metadata[f"chart_{env.name}_path"] = dg.MetadataValue.path(str(path.resolve()))
    metadata[f"chart_{env.name}"] = dg.MetadataValue.md(
        f"![{env.name} RUNNABLE](data:image/png;base64,{base64.b64encode(png).decode()})")
    metadata[f"dashboard_{env.name}"] = dg.MetadataValue.url(
        f"https://{env.region}.console.aws.amazon.com/cloudwatch/home?region={env.region}"
        f"#dashboards/dashboard/{core.dashboard_name(env.name)}")
    return changed, metadata


def publish_dashboards(settings: Settings, step: MetricsStep, capacity_summary: pd.DataFrame) -> dict[str, Any]:
    now, put, metadata = _now(), [], {}
    for env in settings.environments.values():
        ces = capacity_summary.loc[capacity_summary["environment"] == env.name, "compute_environment"]
        changed, charted = publish_dashboard(settings, step, env, list(ces), now)
        if changed:
            put.append(core.dashboard_name(env.name))
        metadata.update(charted)
    return {"dashboards": dg.MetadataValue.int(len(settings.environments)),
            "dashboards_put": dg.MetadataValue.json(put), **metadata}


def blocks(settings: Settings, instance: dg.DagsterInstance, jobs: pd.DataFrame) -> pd.DataFrame:
    """Per watched queue, whether Batch says it is blocked (`core.queue_blocks`); event-driven
    environments add the "Batch Job Queue Blocked" events the reaper's watch keeps."""
    reported = {(env.name, b.queue): (b.since, b.reason) for env in settings.environments.values()
                if env.event_driven for b in reported_blocks(instance, env.name).values()}
    watched = [(e.name, q) for e in settings.environments.values() for q in e.job_queues]
    return core.queue_blocks(jobs, reported, watched)


def summary_metadata(summary: pd.DataFrame, blocked: pd.DataFrame) -> dict[str, Any]:
    """The summary as the UI shows it: tables, and per queue numbers (RUNNABLE count, oldest age
    in seconds, blocked 0/1) that the asset's Plots tab draws across materializations."""
    metadata: dict[str, Any] = {"summary": _table(summary),
                                "overview": dg.MetadataValue.md(core.overview_markdown(summary))}
    for r in summary.itertuples():  # one row per watched queue: a handful
        age = 0.0 if pd.isna(r.oldest_runnable_age_s) else float(r.oldest_runnable_age_s)
        metadata[f"runnable/{r.environment}/{r.queue}"] = dg.MetadataValue.int(int(r.runnable))
        metadata[f"oldest_runnable_age_s/{r.environment}/{r.queue}"] = dg.MetadataValue.float(round(age, 1))
    for r in blocked.itertuples():
        metadata[f"blocked/{r.environment}/{r.queue}"] = dg.MetadataValue.int(int(r.blocked))
    now_blocked = blocked[blocked["blocked"]].assign(since=lambda df: df["since"].map(lambda t: t.isoformat()))
    metadata["blocked_queues"] = dg.MetadataValue.int(len(now_blocked))
    metadata["blocked"] = _table(now_blocked[["environment", "queue", "since", "reason", "source"]])
    return metadata


def _read_assets(settings: Settings, fresh: dg.FreshnessPolicy) -> list[dg.AssetsDefinition]:
    aws_keys = {aws_resource_key(name) for name in settings.environments}

    @dg.asset(group_name=GROUP, required_resource_keys=aws_keys, io_manager_key="metrics_io_manager",
              kinds={"pandas", "aws"}, description="Batch jobs of every watched queue seen in the window.")
    def batch_jobs(context: dg.AssetExecutionContext) -> pd.DataFrame:
        df, errors, calls = read_jobs(settings, metrics_step(context), _now())
        context.add_output_metadata({
            "jobs": dg.MetadataValue.int(len(df)),
            "by_status": dg.MetadataValue.json(df["status"].value_counts().to_dict()),
            "errors": dg.MetadataValue.json(errors), "aws_calls": dg.MetadataValue.json(calls),
        })
        return df

    @dg.asset(group_name=GROUP, io_manager_key="metrics_io_manager", kinds={"pandas"}, freshness_policy=fresh,
              description="Per queue: jobs per status, RUNNABLE count and oldest age, wait/run p50/p95/max, "
                          "failure rate, jobs reaped; whether Batch says the queue is blocked, and why.")
    def batch_queue_summary(context: dg.AssetExecutionContext, batch_jobs: pd.DataFrame) -> pd.DataFrame:
        watched = [(e.name, q) for e in settings.environments.values() for q in e.job_queues]
        summary = core.queue_summary(batch_jobs, _now(), watched)
        context.add_output_metadata(summary_metadata(summary, blocks(settings, context.instance, batch_jobs)))
        return summary

    @dg.asset(group_name=GROUP, required_resource_keys=aws_keys, io_manager_key="metrics_io_manager",
              kinds={"pandas", "aws"}, freshness_policy=fresh,
              description="Per compute environment: container instances and capacity.")
    def ecs_capacity_summary(context: dg.AssetExecutionContext) -> pd.DataFrame:
        summary, read = capacity(settings, metrics_step(context), _now())
        context.add_output_metadata({"summary": _table(summary), "instances": len(read.rows),
                                     "errors": dg.MetadataValue.json(read.errors)})
        return summary

    return [batch_jobs, batch_queue_summary, ecs_capacity_summary]


def _cloudwatch_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    aws_keys = {aws_resource_key(name) for name in settings.environments}

    @dg.asset(group_name=GROUP, required_resource_keys=aws_keys, kinds={"aws"},
              description=f"Both summaries as CloudWatch metrics in {settings.metrics.namespace}, "
                          "per environment's account.")
    def cloudwatch_metrics(context: dg.AssetExecutionContext, batch_queue_summary: pd.DataFrame,
                           ecs_capacity_summary: pd.DataFrame) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=publish_metrics(settings, metrics_step(context), batch_queue_summary,
                                                             ecs_capacity_summary))

    @dg.asset(group_name=GROUP, required_resource_keys=aws_keys, kinds={"aws"}, deps=[cloudwatch_metrics],
              description="One CloudWatch dashboard per environment, generated from the metric list; "
                          "the same widgets as PNG charts here.")
    def cloudwatch_dashboards(context: dg.AssetExecutionContext, batch_queue_summary: pd.DataFrame,
                              ecs_capacity_summary: pd.DataFrame) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=publish_dashboards(settings, metrics_step(context),
                                                                ecs_capacity_summary))

    return [cloudwatch_metrics, cloudwatch_dashboards]


def _checks(settings: Settings, summary_asset: dg.AssetsDefinition) -> list[dg.AssetChecksDefinition]:
    m = settings.metrics

    @dg.asset_check(asset=summary_asset, name="no_runnable_older_than_reaper_threshold",
                    description="Warns when a queue has a RUNNABLE job older than the reaper's threshold.")
    def runnable_age_check(batch_queue_summary: pd.DataFrame) -> dg.AssetCheckResult:
        late = core.late_queues(batch_queue_summary, lambda q: settings.reaper.threshold_minutes(q) * 60)
        return dg.AssetCheckResult(passed=late.empty, severity=dg.AssetCheckSeverity.WARN, metadata={
            "queues": dg.MetadataValue.json({f"{r.environment}/{r.queue}": core.age_text(r.oldest_runnable_age_s)
                                             for r in late.itertuples()})})

    @dg.asset_check(asset=summary_asset, name="failure_rate_under_max",
                    description="Warns when a queue's failure rate in the window exceeds metrics.max_failure_rate.")
    def failure_rate_check(batch_queue_summary: pd.DataFrame) -> dg.AssetCheckResult:
        high = core.failing_queues(batch_queue_summary, m.max_failure_rate)
        return dg.AssetCheckResult(passed=high.empty, severity=dg.AssetCheckSeverity.WARN, metadata={
            "max_failure_rate": m.max_failure_rate,
            "queues": dg.MetadataValue.json({f"{r.environment}/{r.queue}": round(r.failure_rate, 3)
                                             for r in high.itertuples()})})

    return [runnable_age_check, failure_rate_check]


def metrics_defs(settings: Settings) -> dg.Definitions:
    m = settings.metrics
    status = dg.DefaultScheduleStatus.RUNNING if settings.sensors_running else dg.DefaultScheduleStatus.STOPPED
    # a summary not materialized for metrics.freshness_minutes fails its policy (the daemon evaluates it)
    fresh = dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=m.freshness_minutes))
    read = _read_assets(settings, fresh)
    refresh = dg.define_asset_job("refresh_platform_metrics", selection=dg.AssetSelection.groups(GROUP),
                                  op_retry_policy=METRICS_RETRY)
    return dg.Definitions(
        assets=[*read, *_cloudwatch_assets(settings)],
        asset_checks=_checks(settings, read[1]),
        jobs=[refresh],
        schedules=[dg.ScheduleDefinition(name="platform_metrics_schedule", job=refresh, cron_schedule=m.cron,
                                         default_status=status)],
    )
