"""Reaper wiring: `stuck_jobs_sensor` finds candidates, job `reap_stuck_jobs` acts on them.

The sensor only lists (cheap, every minute) and never cancels; the run re-describes every
candidate, decides, cancels, verifies, records and reports.
"""

import hashlib
from datetime import datetime, timedelta, timezone

import dagster as dg

from platform_ops.adapters import batch
from platform_ops.adapters.aws import AwsEnvironmentResource, AwsError, count_calls
from platform_ops.adapters.slack import SlackError
from platform_ops.metadata import table as metadata_table
from platform_ops.observations import CancelResult
from platform_ops.reaper import core
from platform_ops.resources import aws_resource_key, dagster_run_url
from platform_ops.settings import Settings


class ReapConfig(dg.Config):
    """Which jobs to look at; the sensor fills it in, an operator can too (Launchpad)."""

    environment: str
    queue: str
    job_ids: list[str]


def _policy(settings: Settings, queue: str) -> core.ReapPolicy:
    r = settings.reaper
    return core.ReapPolicy(
        threshold=timedelta(minutes=r.threshold_minutes(queue)),
        dry_run=r.dry_run,
        max_cancels=r.max_cancels_per_run,
        protect_tag=r.protect_tag,
    )


def _run_key(environment: str, queue: str, job_ids: list[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(job_ids)).encode()).hexdigest()[:20]
    return f"reap:{environment}:{queue}:{digest}"


def _table(results: list[core.JobResult]) -> dg.MetadataValue:
    return metadata_table(
        ({**vars(r), "runnable_for": core.format_duration(r.runnable_for)} for r in results),
        ["job_id", "name", "runnable_for", "category", "result", "status_reason"])


def reaper_defs(settings: Settings) -> dg.Definitions:
    aws_keys = {aws_resource_key(name) for name in settings.environments}

    @dg.op(required_resource_keys=aws_keys | {"slack"}, out=dg.Out(dict))
    def reap(context: dg.OpExecutionContext, config: ReapConfig):
        """Describe, decide, cancel, verify, report: one Slack message per run."""
        env = settings.environments.get(config.environment)
        if env is None:
            raise dg.Failure(f"environment {config.environment!r} is not in the settings "
                             f"(known: {', '.join(settings.environments)})")
        if config.queue not in env.job_queues:
            raise dg.Failure(f"queue {config.queue!r} is not watched in {env.name} "
                             f"(job_queues: {', '.join(env.job_queues)})")
        policy = _policy(settings, config.queue)
        aws: AwsEnvironmentResource = getattr(context.resources, aws_resource_key(env.name))
        client = aws.client("batch")
        with count_calls() as calls:
            details = batch.describe_jobs(client, config.job_ids)
            plan = core.plan_reap(config.job_ids, details, policy, datetime.now(timezone.utc))
            cancel_result = after = None
            batches = core.cancel_batches(plan, policy.threshold)
            if batches:
                accepted, errors = [], {}
                for b in batches:
                    r = batch.cancel_jobs(client, b.job_ids, b.reason)
                    accepted.extend(r.accepted)
                    errors.update(r.errors)
                cancel_result = CancelResult(tuple(accepted), errors)
                after = batch.describe_jobs(client, [i for b in batches for i in b.job_ids])
            results = core.verify(plan, cancel_result, after or {})
        message = core.report(env.name, config.queue, policy, plan, results,
                              dagster_run_url(settings, context.run_id))
        counts = {k: sum(1 for r in results if r.result == k) for k in {r.result for r in results}}
        cancelled = counts.get(core.CANCELLED, 0)
        if plan.breaker_tripped:
            context.log.error(f"Breaker tripped: {plan.eligible} stuck jobs > max_cancels_per_run "
                              f"{policy.max_cancels}; cancelled none past the cap")
        slack_error = None
        if core.worth_reporting(plan, results):
            try:
                context.resources.slack.post(settings.slack.channel, message)
            except SlackError as exc:  # the report must not hide what was done: record, then fail
                slack_error = str(exc)
        metadata = {
            "environment": env.name,
            "queue": config.queue,
            "dry_run": policy.dry_run,
            "threshold": core.format_duration(policy.threshold),
            "candidates": len(config.job_ids),
            "cancelled": cancelled,
            "breaker_tripped": plan.breaker_tripped,
            "results": dg.MetadataValue.json(counts),
            "jobs": _table(results),
            "aws_calls": dg.MetadataValue.json(dict(calls)),
            "slack_report": ("failed: " + slack_error if slack_error else
                             "sent" if core.worth_reporting(plan, results) else "not needed: nothing acted on"),
        }
        yield dg.Output({"cancelled": cancelled, "results": counts}, metadata=metadata)
        if slack_error:
            raise dg.Failure(f"the reaper's Slack report was not sent ({slack_error}); "
                             "what was cancelled is in this run's metadata")

    @dg.job(name="reap_stuck_jobs", executor_def=dg.in_process_executor, tags={"platform_ops/kind": "reaper"},
            description="Cancel Batch jobs stuck in RUNNABLE past the threshold (never RUNNING ones).")
    def reap_stuck_jobs():
        reap()

    @dg.sensor(
        name="stuck_jobs_sensor",
        job=reap_stuck_jobs,
        minimum_interval_seconds=settings.reaper.interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING if settings.sensors_running else dg.DefaultSensorStatus.STOPPED,
        required_resource_keys=aws_keys,
        description="Lists RUNNABLE jobs of every watched queue; requests one reap run per queue with stuck jobs.",
    )
    def stuck_jobs_sensor(context: dg.SensorEvaluationContext):
        now = datetime.now(timezone.utc)
        requests: list[dg.RunRequest] = []
        problems: list[str] = []
        seen = 0
        for env in settings.environments.values():
            aws: AwsEnvironmentResource = getattr(context.resources, aws_resource_key(env.name))
            for queue in env.job_queues:
                try:
                    jobs = list(batch.iter_jobs(aws.client("batch"), queue, "RUNNABLE"))
                except AwsError as exc:
                    problems.append(f"{env.name}/{queue}: {exc}")
                    if exc.request_scoped:
                        continue  # this queue is wrong; the environment's other queues may be fine
                    break
                seen += len(jobs)
                stuck = core.stuck_candidates(jobs, _policy(settings, queue).threshold, now)
                if not stuck:
                    continue
                ids = [job.job_id for job in stuck]
                requests.append(dg.RunRequest(
                    run_key=_run_key(env.name, queue, ids),
                    run_config=dg.RunConfig(ops={"reap": ReapConfig(environment=env.name, queue=queue, job_ids=ids)}),
                    tags={"platform_ops/environment": env.name, "platform_ops/queue": queue},
                ))
        for problem in problems:
            context.log.error(problem)
        if requests:
            return dg.SensorResult(run_requests=requests)
        if problems:
            raise RuntimeError("stuck_jobs_sensor could not read: " + "; ".join(problems))
        return dg.SkipReason(f"no stuck jobs among {seen} RUNNABLE")

    return dg.Definitions(jobs=[reap_stuck_jobs], sensors=[stuck_jobs_sensor])
