"""Platform metrics as Dagster assets (group `platform_metrics`), refreshed on a schedule:
Batch jobs → queue and capacity summaries → CloudWatch metrics → dashboards (+ PNG charts)."""

import base64
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pandas as pd

from platform_ops.adapters import batch, cloudwatch, ecs
from platform_ops.adapters.aws import AwsEnvironmentResource, AwsError, count_calls
from platform_ops.adapters.ledger import Ledger
from platform_ops.metadata import table as metadata_table
from platform_ops.metrics import charts, core
from platform_ops.resources import aws_resource_key
from platform_ops.settings import Settings
from platform_ops.vocabulary import format_duration

GROUP = "platform_metrics"
# A step whose AWS calls still fail after botocore's attempts (a long throttling spell) runs again,
# reading its inputs from the IO manager; each step is idempotent (see cloudwatch_metrics).
METRICS_RETRY = dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def _table(df: pd.DataFrame, limit: int = 200) -> dg.MetadataValue:
    return metadata_table(df.head(limit).to_dict("records"), [str(c) for c in df.columns])


def metrics_defs(settings: Settings) -> dg.Definitions:
    m = settings.metrics
    aws_keys = {aws_resource_key(name) for name in settings.environments}
    status = dg.DefaultScheduleStatus.RUNNING if settings.sensors_running else dg.DefaultScheduleStatus.STOPPED
    # a summary not materialized for metrics.freshness_minutes fails its policy (the daemon evaluates it)
    fresh = dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=m.freshness_minutes))

    def aws(context, name: str) -> AwsEnvironmentResource:
        return getattr(context.resources, aws_resource_key(name))

    @dg.asset(group_name=GROUP, required_resource_keys=aws_keys, io_manager_key="metrics_io_manager",
              kinds={"pandas", "aws"}, description="Batch jobs of every watched queue seen in the window.")
    def batch_jobs(context: dg.AssetExecutionContext) -> pd.DataFrame:
        now = datetime.now(timezone.utc)
        frames, errors = [], []
        with count_calls() as calls:
            for env in settings.environments.values():
                client = aws(context, env.name).client("batch")
                for queue in env.job_queues:
                    try:
                        jobs = [j for status in core.STATUSES for j in batch.iter_jobs(client, queue, status)]
                    except AwsError as exc:
                        if exc.throttled:  # outlasted the client's attempts: the step's retry, not a gap in the data
                            raise
                        errors.append(f"{env.name}/{queue}: {exc}")
                        context.log.error(errors[-1])
                        if exc.request_scoped:
                            continue
                        break
                    frames.append(core.jobs_frame(env.name, jobs))
        df = pd.concat(frames, ignore_index=True) if frames else core.jobs_frame("", [])
        df = core.in_window(df, now - timedelta(hours=m.window_hours)).reset_index(drop=True)
        context.add_output_metadata({
            "jobs": len(df), "by_status": dg.MetadataValue.json(df["status"].value_counts().to_dict()),
            "errors": dg.MetadataValue.json(errors), "aws_calls": dg.MetadataValue.json(dict(calls)),
        })
        return df

    @dg.asset(group_name=GROUP, io_manager_key="metrics_io_manager", kinds={"pandas"}, freshness_policy=fresh,
              description="Per queue: jobs per status, RUNNABLE count and oldest age, wait/run p50/p95/max, "
                          "failure rate, jobs reaped.")
    def batch_queue_summary(context: dg.AssetExecutionContext, batch_jobs: pd.DataFrame) -> pd.DataFrame:
        watched = [(e.name, q) for e in settings.environments.values() for q in e.job_queues]
        summary = core.queue_summary(batch_jobs, datetime.now(timezone.utc), watched)
        lines = [f"| {r.environment} | {r.queue} | {r.RUNNABLE} | {_age(r.oldest_runnable_age_s)} | {r.RUNNING} | "
                 f"{r.FAILED} | {_pct(r.failure_rate)} | {r.reaped} |" for r in summary.itertuples()]
        context.add_output_metadata({
            "summary": _table(summary),
            "overview": dg.MetadataValue.md("| environment | queue | RUNNABLE | oldest | RUNNING | FAILED | "
                                            "failure rate | reaped |\n|---|---|---|---|---|---|---|---|\n"
                                            + "\n".join(lines)),
        })
        return summary

    @dg.asset(group_name=GROUP, required_resource_keys=aws_keys, io_manager_key="metrics_io_manager",
              kinds={"pandas", "aws"}, freshness_policy=fresh,
              description="Per compute environment: container instances and capacity.")
    def ecs_capacity_summary(context: dg.AssetExecutionContext) -> pd.DataFrame:
        now = datetime.now(timezone.utc)
        ledger = Ledger(context.instance, "metrics")
        rows, known, gone, errors, seen = [], [], {}, [], {}
        for env in settings.environments.values():
            try:
                client = aws(context, env.name).client("batch")
                names = sorted({ce for ces in batch.queue_compute_environments(client, env.job_queues).values()
                                for ce in ces})
                clusters = batch.compute_environments(client, names) if names else []
                for ce, cluster in clusters:
                    known.append((env.name, ce, cluster))
                    current = [{"environment": env.name, "compute_environment": ce, "cluster": cluster, **row}
                               for row in ecs.container_instances(aws(context, env.name).client("ecs"), cluster)]
                    rows += current
                    key = f"instances/{env.name}/{ce}"
                    previous = set((ledger.get(key) or {}).get("arns", []))
                    arns = {r["arn"] for r in current}
                    gone[(env.name, ce)] = len(previous - arns)
                    seen[key] = sorted(arns)
            except AwsError as exc:
                if exc.throttled:
                    raise
                errors.append(f"{env.name}: {exc}")
                context.log.error(errors[-1])
        for key, arns in seen.items():  # stored once every read is done: a retried step compares with the same
            ledger.put(key, arns=arns)
        instances = pd.DataFrame(rows, columns=core.INSTANCE_COLUMNS)
        summary = core.capacity_summary(instances, now - timedelta(hours=m.window_hours), gone, known)
        context.add_output_metadata({"summary": _table(summary), "instances": len(instances),
                                     "errors": dg.MetadataValue.json(errors)})
        return summary

    @dg.asset(group_name=GROUP, required_resource_keys=aws_keys, kinds={"aws"},
              description=f"Both summaries as CloudWatch metrics in {m.namespace}, per environment's account.")
    def cloudwatch_metrics(context: dg.AssetExecutionContext, batch_queue_summary: pd.DataFrame,
                           ecs_capacity_summary: pd.DataFrame) -> dg.MaterializeResult:
        # Idempotent under the step's retry: the datums carry the run's time, not the attempt's, and
        # the batches an earlier attempt put are recorded and not put again (no doubled samples).
        now = context.instance.get_run_record_by_id(context.run_id).create_timestamp  # UTC, aware
        datums = core.metric_data(batch_queue_summary, ecs_capacity_summary)
        ledger, key = Ledger(context.instance, "metrics"), f"published/{context.run_id}"
        put = dict(ledger.get(key) or {})  # environment -> batches put
        published = {}
        with count_calls() as calls:
            for env in settings.environments.values():
                mine = core.batches([d.api(now) for d in datums if d.environment == env.name])
                for i in range(put.get(env.name, 0), len(mine)):
                    cloudwatch.put_metric_data(aws(context, env.name).client("cloudwatch"), m.namespace, [mine[i]])
                    put[env.name] = i + 1
                    ledger.put(key, **put)
                if mine:
                    published[env.name] = sum(len(b) for b in mine)
        return dg.MaterializeResult(metadata={
            "metrics_published": sum(published.values()), "by_environment": dg.MetadataValue.json(published),
            "put_metric_data_calls": calls.get("CloudWatch.PutMetricData", 0),
            "metric_names": dg.MetadataValue.json(sorted({d.name for d in datums})),
        })

    @dg.asset(group_name=GROUP, required_resource_keys=aws_keys, kinds={"aws"}, deps=[cloudwatch_metrics],
              description="One CloudWatch dashboard per environment, generated from the metric list; "
                          "the same widgets as PNG charts here.")
    def cloudwatch_dashboards(context: dg.AssetExecutionContext, batch_queue_summary: pd.DataFrame,
                              ecs_capacity_summary: pd.DataFrame) -> dg.MaterializeResult:
        now = datetime.now(timezone.utc)
        put, metadata = [], {}
        for env in settings.environments.values():
            client = aws(context, env.name).client("cloudwatch")
            queues = list(env.job_queues)
            ces = ecs_capacity_summary.loc[ecs_capacity_summary["environment"] == env.name, "compute_environment"]
            name = core.dashboard_name(env.name)
            if cloudwatch.put_dashboard_if_changed(client, name, core.dashboard_body(env.name, env.region, queues, ces,
                                                                                      m.namespace)):
                put.append(name)
            series = cloudwatch.metric_series(client, m.namespace, [
                (f"{q} {metric}", metric, {"Environment": env.name, "JobQueue": q})
                for q in queues for metric in ("RunnableJobs", "OldestRunnableAgeSeconds")],
                now - timedelta(hours=m.chart_hours), now + timedelta(minutes=5))
            png = charts.line_chart(f"{env.name}: RUNNABLE jobs and oldest RUNNABLE age, last {m.chart_hours}h", [
                ("RUNNABLE jobs", {k: v for k, v in series.items() if k.endswith("RunnableJobs")}),
                ("oldest age (s)", {k: v for k, v in series.items() if k.endswith("OldestRunnableAgeSeconds")}),
            ])
            if m.charts_dir:
                path = Path(m.charts_dir) / f"{env.name}-runnable.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(png)
                metadata[f"chart_{env.name}_path"] = dg.MetadataValue.path(str(path.resolve()))
            metadata[f"chart_{env.name}"] = dg.MetadataValue.md(
                f"![{env.name} RUNNABLE](data:image/png;base64,{base64.b64encode(png).decode()})")
        return dg.MaterializeResult(metadata={
            "dashboards": len(settings.environments), "dashboards_put": dg.MetadataValue.json(put), **metadata})

    @dg.asset_check(asset=batch_queue_summary, name="no_runnable_older_than_reaper_threshold",
                    description="Warns when a queue has a RUNNABLE job older than the reaper's threshold.")
    def runnable_age_check(batch_queue_summary: pd.DataFrame) -> dg.AssetCheckResult:
        limits = batch_queue_summary["queue"].map(lambda q: settings.reaper.threshold_minutes(q) * 60)
        late = batch_queue_summary[batch_queue_summary["oldest_runnable_age_s"] > limits]
        return dg.AssetCheckResult(passed=late.empty, severity=dg.AssetCheckSeverity.WARN, metadata={
            "queues": dg.MetadataValue.json({f"{r.environment}/{r.queue}": _age(r.oldest_runnable_age_s)
                                             for r in late.itertuples()})})

    @dg.asset_check(asset=batch_queue_summary, name="failure_rate_under_max",
                    description="Warns when a queue's failure rate in the window exceeds metrics.max_failure_rate.")
    def failure_rate_check(batch_queue_summary: pd.DataFrame) -> dg.AssetCheckResult:
        high = batch_queue_summary[batch_queue_summary["failure_rate"] > m.max_failure_rate]
        return dg.AssetCheckResult(passed=high.empty, severity=dg.AssetCheckSeverity.WARN, metadata={
            "max_failure_rate": m.max_failure_rate,
            "queues": dg.MetadataValue.json({f"{r.environment}/{r.queue}": round(r.failure_rate, 3)
                                             for r in high.itertuples()})})

    refresh = dg.define_asset_job("refresh_platform_metrics", selection=dg.AssetSelection.groups(GROUP),
                                  op_retry_policy=METRICS_RETRY)
    return dg.Definitions(
        assets=[batch_jobs, batch_queue_summary, ecs_capacity_summary, cloudwatch_metrics, cloudwatch_dashboards],
        asset_checks=[runnable_age_check, failure_rate_check],
        jobs=[refresh],
        schedules=[dg.ScheduleDefinition(name="platform_metrics_schedule", job=refresh, cron_schedule=m.cron,
                                         default_status=status)],
    )


def _age(seconds: float) -> str:
    if pd.isna(seconds):
        return "-"
    return format_duration(timedelta(seconds=float(seconds)))


def _pct(rate: float) -> str:
    return "-" if pd.isna(rate) else f"{rate:.0%}"
