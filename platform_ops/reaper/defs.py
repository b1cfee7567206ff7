"""Reaper wiring: `stuck_jobs_sensor` finds candidates, job `reap_stuck_jobs` acts on them.

The sensor only lists (cheap, every minute) and never cancels; the run re-describes every
candidate, decides, cancels, verifies, records and reports. In an event-driven environment the
events sensor tracks RUNNABLE jobs from "Batch Job State Change" events
(`requests_from_job_events`) and the listing only reconciles, every reconcile interval.
"""

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import dagster as dg

from platform_ops.adapters import batch
from platform_ops.adapters.aws import AwsError, count_calls
from platform_ops.adapters.ledger import Ledger
from platform_ops.adapters.slack import SlackError, post_once
from platform_ops.metadata import table as metadata_table
from platform_ops.observations import BatchJob, CancelResult
from platform_ops.reaper import core
from platform_ops.resources import aws_for, aws_resource_key, dagster_run_url
from platform_ops.sensors import end_tick
from platform_ops.settings import EnvironmentSettings, Settings
from platform_ops.vocabulary import from_epoch_ms, ids_digest, to_epoch_ms

REAP_JOB = "reap_stuck_jobs"


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


def reap_request(environment: str, queue: str, job_ids: list[str]) -> dg.RunRequest:
    """One reap run for these jobs; keyed by the set, so polling and events asking for the same
    jobs make one run."""
    digest = ids_digest(job_ids)
    return dg.RunRequest(
        run_key=f"reap:{environment}:{queue}:{digest}",
        job_name=REAP_JOB,
        run_config=dg.RunConfig(ops={"reap": ReapConfig(environment=environment, queue=queue, job_ids=job_ids)}),
        tags={"platform_ops/environment": environment, "platform_ops/queue": queue},
    )


def requests_from_job_events(settings: Settings, instance: dg.DagsterInstance, env: EnvironmentSettings,
                             bodies: list[str], now: datetime) -> list[dg.RunRequest]:
    """Fold "Batch Job State Change" events into the environment's RUNNABLE watch (kept in the
    instance, so a lost cursor or a restart keeps it) and request a reap of what is due."""
    changes, _ = core.job_changes_from_events(bodies)
    max_age = timedelta(hours=settings.reaper.watch_max_age_hours)
    watch = update_watch(instance, env.name,
                         lambda w: core.expire(core.track_runnable(w, changes, env.job_queues), now, max_age))
    due = core.due(watch, lambda queue: _policy(settings, queue).threshold, now)
    return [reap_request(env.name, queue, ids) for queue, ids in due.items()]


def update_watch(instance: dg.DagsterInstance, environment: str,
                 change: Callable[[dict[str, tuple[str, datetime]]], dict[str, tuple[str, datetime]]]
                 ) -> dict[str, tuple[str, datetime]]:
    """Read the environment's RUNNABLE watch, apply `change` (a pure core function), store the
    result if it differs. Read and write sit together to keep the window for a concurrent writer
    small; an update lost to one is redone by the next reconciliation, and the age bound caps it."""
    ledger, key = Ledger(instance, "reaper"), f"runnable/{environment}"
    stored = (ledger.get(key) or {}).get("jobs", {})
    before = {job_id: (queue, from_epoch_ms(ms))
              for job_id, (queue, ms) in stored.items()}
    watch = change(before)
    if watch != before:
        ledger.put(key, jobs={job_id: [queue, to_epoch_ms(since)] for job_id, (queue, since) in watch.items()})
    return watch


def settle_watch(instance: dg.DagsterInstance, environment: str,
                 observed: list[tuple[list[str], dict[str, BatchJob], datetime]]) -> None:
    """Fold a reap run's describes (job ids, what Batch said, when it was asked) into the watch."""
    def change(watch: dict[str, tuple[str, datetime]]) -> dict[str, tuple[str, datetime]]:
        for checked, found, at in observed:
            watch = core.settle(watch, checked, found, at)
        return watch

    update_watch(instance, environment, change)


def reconcile_watch(instance: dg.DagsterInstance, environment: str, listed: dict[str, list[str]],
                    listed_at: datetime) -> None:
    """Fold complete RUNNABLE listings (queue -> job ids) into the watch."""
    def change(watch: dict[str, tuple[str, datetime]]) -> dict[str, tuple[str, datetime]]:
        for queue, job_ids in listed.items():
            watch = core.reconcile(watch, queue, job_ids, listed_at)
        return watch

    update_watch(instance, environment, change)


def _table(results: list[core.JobResult]) -> dg.MetadataValue:
    return metadata_table(
        ({**vars(r), "runnable_for": core.format_duration(r.runnable_for), "result": r.result} for r in results),
        ["job_id", "name", "runnable_for", "category", "result", "status_reason"])


# AWS calls that still fail after botocore's attempts (a long throttling spell) fail the op, and
# the op is retried whole: it describes afresh, and what an earlier attempt cancelled is known
# from its record (`_cancelled_earlier`), so a retry neither cancels twice nor loses the report.
REAP_RETRY = dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def _cancelled_earlier(sent: dict[str, dict], details: dict[str, BatchJob]) -> dict[str, core.JobResult]:
    """Jobs an earlier attempt of this run (an op retry, a re-execution) sent to CancelJobs that
    Batch now shows cancelled with that very reason: this run's cancellations, reported as such."""
    done = {}
    for job_id, was in sent.items():
        job = details.get(job_id)
        if job is not None and job.status == "FAILED" and job.status_reason == was["reason"]:
            done[job_id] = core.JobResult(
                job_id=job_id, name=was["name"], runnable_for=timedelta(seconds=was["runnable_for_s"]),
                status_reason=was["status_reason"], category=was["category"], outcome=core.Outcome.CANCELLED)
    return done


def reaper_defs(settings: Settings) -> dg.Definitions:
    aws_keys = {aws_resource_key(name) for name in settings.environments}

    @dg.op(required_resource_keys=aws_keys | {"slack"}, out=dg.Out(dict), retry_policy=REAP_RETRY)
    def reap(context: dg.OpExecutionContext, config: ReapConfig):
        """Describe, decide, cancel, verify, report: one Slack message per run."""
        env = settings.environments.get(config.environment)
        if env is None:
            raise dg.Failure(f"environment {config.environment!r} is not in the settings "
                             f"(known: {', '.join(settings.environments)})", allow_retries=False)
        if config.queue not in env.job_queues:
            raise dg.Failure(f"queue {config.queue!r} is not watched in {env.name} "
                             f"(job_queues: {', '.join(env.job_queues)})", allow_retries=False)
        policy = _policy(settings, config.queue)
        aws = aws_for(context, env.name)
        client = aws.client("batch")
        ledger, root = Ledger(context.instance, "reaper"), context.dagster_run.root_run_id or context.run_id
        sent = (ledger.get(f"cancels/{root}") or {}).get("jobs", {})
        with count_calls() as calls:
            described_at = datetime.now(timezone.utc)
            details = batch.describe_jobs(client, config.job_ids)
            observed = [(config.job_ids, details, described_at)]
            done = _cancelled_earlier(sent, details)
            plan = core.plan_reap([j for j in config.job_ids if j not in done], details,
                                  replace(policy, max_cancels=max(0, policy.max_cancels - len(done))),
                                  datetime.now(timezone.utc))
            plan = replace(plan, eligible=plan.eligible + len(done))
            cancel_result = after = None
            batches = core.cancel_batches(plan, policy.threshold)
            if batches:  # recorded before it is sent: a retry must know what this run asked for
                decided = {d.job_id: d for d in plan.decisions}
                ledger.put(f"cancels/{root}", jobs={**sent, **{job_id: {
                    "reason": b.reason[:1024], "name": decided[job_id].job.name, "category": decided[job_id].category,
                    "runnable_for_s": decided[job_id].runnable_for.total_seconds(),
                    "status_reason": decided[job_id].job.status_reason} for b in batches for job_id in b.job_ids}})
                accepted, errors = [], {}
                for b in batches:
                    r = batch.cancel_jobs(client, b.job_ids, b.reason)
                    accepted.extend(r.accepted)
                    errors.update(r.errors)
                cancel_result = CancelResult(tuple(accepted), errors)
                sent, verified_at = [i for b in batches for i in b.job_ids], datetime.now(timezone.utc)
                after = batch.describe_jobs(client, sent)
                observed.append((sent, after, verified_at))
            results = [*done.values(), *core.verify(plan, cancel_result, after or {})]
        if env.event_driven:  # this run saw its jobs afresh: the events-fed watch forgets what moved on
            settle_watch(context.instance, env.name, observed)
        message = core.report(env.name, config.queue, policy, plan, results,
                              dagster_run_url(settings, context.run_id))
        counts = {k: sum(1 for r in results if r.result == k) for k in {r.result for r in results}}
        cancelled = sum(r.outcome is core.Outcome.CANCELLED for r in results)
        if plan.breaker_tripped:
            context.log.error(f"Breaker tripped: {plan.eligible} stuck jobs > max_cancels_per_run "
                              f"{policy.max_cancels}; cancelled none past the cap")
        slack_error = None
        if core.worth_reporting(plan, results):
            try:
                root = context.dagster_run.root_run_id or context.run_id  # a re-execution reports once
                post_once(context.resources.slack, Ledger(context.instance, "reaper"), f"report/{root}",
                          settings.slack.channel, message, run_id=context.run_id, root_run_id=root,
                          payload={"kind": "reaper_report", "run_id": root})
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
                             "what was cancelled is in this run's metadata", allow_retries=False)

    @dg.job(name=REAP_JOB, executor_def=dg.in_process_executor, tags={"platform_ops/kind": "reaper"},
            description="Cancel Batch jobs stuck in RUNNABLE past the threshold (never RUNNING ones).")
    def reap_stuck_jobs():
        reap()

    @dg.sensor(
        name="stuck_jobs_sensor",
        job=reap_stuck_jobs,
        minimum_interval_seconds=settings.reaper.interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING if settings.sensors_running else dg.DefaultSensorStatus.STOPPED,
        required_resource_keys=aws_keys,
        description="Lists RUNNABLE jobs of every watched queue; requests one reap run per queue with stuck jobs. "
                    "For event-driven environments it reconciles every reaper.reconcile_interval_seconds.",
    )
    def stuck_jobs_sensor(context: dg.SensorEvaluationContext):
        now = datetime.now(timezone.utc)
        cursor: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
        requests: list[dg.RunRequest] = []
        problems: list[str] = []
        seen = 0
        for env in settings.environments.values():
            mark = f"reconciled:{env.name}"
            if env.event_driven:
                if to_epoch_ms(now) - cursor.get(mark, 0) < settings.reaper.reconcile_interval_seconds * 1000:
                    continue  # events carry this environment; listing only reconciles now and then
            aws = aws_for(context, env.name)
            reconciled = True
            listed: dict[str, list[str]] = {}
            for queue in env.job_queues:
                try:
                    jobs = list(batch.iter_jobs(aws.client("batch"), queue, "RUNNABLE"))
                except AwsError as exc:
                    problems.append(f"{env.name}/{queue}: {exc}")
                    reconciled = False  # try again next tick
                    if exc.request_scoped:
                        continue  # this queue is wrong; the environment's other queues may be fine
                    break
                seen += len(jobs)
                listed[queue] = [job.job_id for job in jobs]
                stuck = core.stuck_candidates(jobs, _policy(settings, queue).threshold, now)
                if stuck:
                    requests.append(reap_request(env.name, queue, [job.job_id for job in stuck]))
            if env.event_driven and listed:  # each queue listed in full corrects the events-fed watch
                reconcile_watch(context.instance, env.name, listed, now)
            if env.event_driven and reconciled:
                cursor[mark] = to_epoch_ms(now)
        return end_tick(context, "stuck_jobs_sensor", requests, json.dumps(cursor, sort_keys=True), problems,
                        f"no stuck jobs among {seen} RUNNABLE")

    return dg.Definitions(jobs=[reap_stuck_jobs], sensors=[stuck_jobs_sensor])
