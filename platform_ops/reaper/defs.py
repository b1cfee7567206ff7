"""Reaper wiring: `stuck_jobs_sensor` finds candidates, job `reap_stuck_jobs` acts on them.

The sensor only lists (cheap, every minute) and never cancels; the run re-describes every
candidate, decides, cancels, verifies, records and reports. In an event-driven environment the
events sensor tracks RUNNABLE jobs from "Batch Job State Change" events and each queue's block from
"Batch Job Queue Blocked" events (`requests_from_job_events`), and the listing only reconciles,
every reconcile interval.

For alerting: `LEDGER` (the namespace), `report_message_key(root_run_id)` / `report_message(...)`
(the posted report a reaped job's failure threads under; `vocabulary.reap_run_of` names the run),
`queue_blocks(instance, environment)` (for metrics too).

Every decision is `reaper.core`'s; the functions here read (adapters), call the plan, perform it
(adapters) and record, each taking a small step object so it runs without an op or a sensor.
"""

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from platform_ops.adapters import batch
from platform_ops.adapters.aws import AwsEnvironmentResource, AwsError, count_calls
from platform_ops.adapters.ledger import Ledger
from platform_ops.adapters.slack import SlackError, post_once
from platform_ops.metadata import table as metadata_table
from platform_ops.observations import BatchJob, CancelResult
from platform_ops.reaper import core
from platform_ops.resources import aws_for, aws_resource_key, dagster_run_url
from platform_ops.sensors import default_status, end_tick, not_yet_requested
from platform_ops.settings import EnvironmentSettings, Settings
from platform_ops.vocabulary import AfterReadError, after_read_error, from_epoch_ms, ids_digest, to_epoch_ms

REAP_JOB = "reap_stuck_jobs"
LEDGER = "reaper"  # the ledger namespace of the watch, the runs' sent cancels and their reports


def report_key(root_run_id: str) -> str:
    """The ledger key (namespace LEDGER) of a reap run's exactly-once Slack report."""
    return f"report/{root_run_id}"


def report_message_key(root_run_id: str) -> str:
    """The ledger key (namespace LEDGER) of the report a reap run posted, once Slack took it:
    {"channel", "ts", "text", "blocks"}, so alerting can reply in its thread and chat.update it.
    `vocabulary.reap_run_of(statusReason)` names the run of a job it cancelled."""
    return f"report-message/{root_run_id}"


def report_message(instance: dg.DagsterInstance, root_run_id: str) -> dict | None:
    """The posted report of reap run `root_run_id` (see report_message_key), or None."""
    return Ledger(instance, LEDGER).get(report_message_key(root_run_id))


EVENTS_SENSOR = "aws_events_sensor"
POLLING_SENSOR = "stuck_jobs_sensor"


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


def _now() -> datetime:
    return datetime.now(UTC)


def reap_request(environment: str, queue: str, job_ids: list[str], requested_by: str = "") -> dg.RunRequest:
    """One reap run for these jobs, keyed by the set. Dagster skips a key only per sensor, so each
    sensor drops a key that any run already has (`sensors.not_yet_requested`): polling and events
    asking for the same jobs make one run. The tags say what it was asked; the run adds what it did."""
    digest = ids_digest(job_ids)
    tags = {"platform_ops/environment": environment, "platform_ops/queue": queue,
            "platform_ops/candidates": str(len(job_ids))}
    return dg.RunRequest(
        run_key=f"reap:{environment}:{queue}:{digest}",
        job_name=REAP_JOB,
        run_config=dg.RunConfig(ops={"reap": ReapConfig(environment=environment, queue=queue, job_ids=job_ids)}),
        tags={**tags, "platform_ops/requested_by": requested_by} if requested_by else tags,
    )


# ---- the RUNNABLE watch of an event-driven environment, kept in the instance ----

Watch = dict[str, tuple[str, datetime]]


def requests_from_job_events(settings: Settings, instance: dg.DagsterInstance, env: EnvironmentSettings,
                             bodies: list[str], now: datetime) -> list[dg.RunRequest]:
    """Fold "Batch Job State Change" and "Batch Job Queue Blocked" events (SQS bodies) into the
    environment's RUNNABLE watch and its queues' blocks, and request a reap of what is due."""
    changes, _ = core.job_changes_from_events(bodies)
    return requests_from_job_changes(settings, instance, env, changes, now, core.queue_blocks_from_events(bodies))


def requests_from_job_changes(settings: Settings, instance: dg.DagsterInstance, env: EnvironmentSettings,
                              changes: Iterable[core.JobChange], now: datetime,
                              blocks: Iterable[core.QueueBlock] = ()) -> list[dg.RunRequest]:
    """`requests_from_job_events` for events already parsed (`core.job_changes_from_events`,
    `core.queue_blocks_from_events`): a blocking job is RUNNABLE, so it is watched too."""
    max_age = timedelta(hours=settings.reaper.watch_max_age_hours)
    blocks = list(blocks)
    changes = sorted([*changes, *core.block_changes(blocks)], key=lambda c: c.at)
    watch = update_watch(instance, env.name, lambda w: core.follow_events(w, changes, env.job_queues, now, max_age),
                         lambda b: core.track_blocks(b, blocks, env.job_queues))
    due = core.due(watch, lambda queue: _policy(settings, queue).threshold, now)
    return not_yet_requested(instance, [reap_request(env.name, queue, ids, EVENTS_SENSOR)
                                        for queue, ids in due.items()])


Blocks = dict[str, core.QueueBlock]


def update_watch(instance: dg.DagsterInstance, environment: str, change: Callable[[Watch], Watch],
                 block: Callable[[Blocks], Blocks] = dict) -> Watch:
    """Read the environment's RUNNABLE watch and queue blocks, apply `change` and `block` (pure core
    functions; a block lasts while its job is watched), store the result if it differs. Read and
    write sit together to keep the window for a concurrent writer small; an update lost to one is
    redone by the next reconciliation, and the age bound caps it."""
    ledger, key = Ledger(instance, LEDGER), f"runnable/{environment}"
    record = ledger.get(key) or {}
    before = core.watch_from_record(record.get("jobs", {}))
    blocks_before = core.blocks_from_record(record.get("blocked", {}))
    watch = change(before)
    blocks = core.lift_blocks(block(blocks_before), watch)
    if watch != before or blocks != blocks_before:
        ledger.put(key, jobs=core.watch_record(watch), blocked=core.blocks_record(blocks))
    return watch


def queue_blocks(instance: dg.DagsterInstance, environment: str) -> Blocks:
    """The environment's queues Batch reported blocked ("Batch Job Queue Blocked" events) whose
    blocking job is still RUNNABLE as far as the watch knows: queue -> block. Event-driven
    environments only (a polled one has none)."""
    record = Ledger(instance, LEDGER).get(f"runnable/{environment}") or {}
    return core.blocks_from_record(record.get("blocked", {}))


def settle_watch(instance: dg.DagsterInstance, environment: str,
                 observed: list[tuple[list[str], dict[str, BatchJob], datetime]]) -> None:
    """Fold a reap run's describes (job ids, what Batch said, when it was asked) into the watch."""
    described = [core.Described(*o) for o in observed]
    update_watch(instance, environment, lambda w: core.settle_all(w, described))


def reconcile_watch(instance: dg.DagsterInstance, environment: str, listed: dict[str, list[str]],
                    listed_at: datetime) -> None:
    """Fold complete RUNNABLE listings (queue -> job ids) into the watch."""
    update_watch(instance, environment, lambda w: core.reconcile_all(w, listed, listed_at))


# ---- one reap attempt ----

# AWS calls that still fail after botocore's attempts (a long throttling spell) fail the op, and
# the op is retried whole: it describes afresh, and what an earlier attempt cancelled is known
# from its record (`core.plan_attempt`), so a retry neither cancels twice nor loses the report.
REAP_RETRY = dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


@dataclass(frozen=True)
class ReapStep:
    """What a reap attempt uses of Dagster and AWS; `root_run_id` is shared by a run's retries
    and re-executions, so what it sent and reported is recorded under it."""

    instance: dg.DagsterInstance
    run_id: str
    root_run_id: str
    batch: Any  # the environment's Batch client
    slack: Any  # the Slack resource
    log: Any  # a logger


def reap_step(context: dg.OpExecutionContext, environment: str) -> ReapStep:
    run = context.run
    return ReapStep(context.instance, run.run_id, run.root_run_id or run.run_id,
                    aws_for(context, environment).client("batch"), context.resources.slack, context.log)


def resolve_target(settings: Settings, config: ReapConfig) -> tuple[EnvironmentSettings, core.ReapPolicy]:
    """The environment and policy a run config names; a name the settings do not know fails the
    run for good (a retry would not change it)."""
    env = settings.environments.get(config.environment)
    if env is None:
        raise dg.Failure(f"environment {config.environment!r} is not in the settings "
                         f"(known: {', '.join(settings.environments)})", allow_retries=False)
    if config.queue not in env.job_queues:
        raise dg.Failure(f"queue {config.queue!r} is not watched in {env.name} "
                         f"(job_queues: {', '.join(env.job_queues)})", allow_retries=False)
    return env, _policy(settings, config.queue)


@dataclass
class ReapAttempt:
    """What one attempt decided and found, the describes it made, the AWS calls it took."""

    plan: core.ReapPlan
    results: list[core.JobResult]
    observed: list[core.Described] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)


def reap_jobs(step: ReapStep, job_ids: list[str], policy: core.ReapPolicy) -> ReapAttempt:
    """Describe, decide, cancel, verify. What is about to be cancelled is recorded before it is
    sent: a retry must know what this run asked for."""
    ledger, key = Ledger(step.instance, LEDGER), f"cancels/{step.root_run_id}"
    sent = core.sent_from_record((ledger.get(key) or {}).get("jobs", {}))
    with count_calls() as calls:
        described_at = _now()
        details = batch.describe_jobs(step.batch, job_ids)
        attempt = core.plan_attempt(job_ids, details, policy, _now(), sent, step.root_run_id)
        observed = [core.Described(job_ids, details, described_at)]
        cancel_result, after = None, {}
        if attempt.batches:
            ledger.put(key, jobs=core.sent_record(attempt.sent))
            cancel_result, verified = send_cancels(step.batch, attempt.batches)
            after = verified.found
            observed.append(verified)
        results = [*attempt.done.values(), *core.verify(attempt.plan, cancel_result, after)]
    return ReapAttempt(attempt.plan, results, observed, dict(calls))


def send_cancels(client: Any, batches: list[core.CancelBatch]) -> tuple[CancelResult, core.Described]:
    """CancelJobs per batch, then the describe that tells what really happened."""
    accepted, errors = [], {}
    for b in batches:
        r = batch.cancel_jobs(client, b.job_ids, b.reason)
        accepted.extend(r.accepted)
        errors.update(r.errors)
    sent, verified_at = [i for b in batches for i in b.job_ids], _now()
    return CancelResult(tuple(accepted), errors), core.Described(sent, batch.describe_jobs(client, sent), verified_at)


def send_report(settings: Settings, step: ReapStep, message: Any, needed: bool) -> tuple[core.SlackReport, str]:
    """The run's one Slack report (a re-execution reports once); a Slack error is returned, not
    raised: the report must not hide what was done."""
    if not needed:
        return core.SlackReport.NOT_NEEDED, ""
    ledger = Ledger(step.instance, LEDGER)
    try:
        delivery = post_once(step.slack, ledger, report_key(step.root_run_id), settings.slack.channel,
                             message, run_id=step.run_id, root_run_id=step.root_run_id,
                             payload={"kind": "reaper_report", "run_id": step.root_run_id})
    except SlackError as exc:
        return core.SlackReport.FAILED, str(exc)
    if delivery.ts and ledger.get(report_message_key(step.root_run_id)) is None:  # alerting threads under it
        ledger.put(report_message_key(step.root_run_id), channel=settings.slack.channel, ts=delivery.ts,
                   text=message.text, blocks=list(message.blocks))
    return core.SlackReport.SENT, ""


def _table(results: list[core.JobResult]) -> dg.MetadataValue:
    return metadata_table(
        ({**vars(r), "runnable_for": core.format_duration(r.runnable_for), "result": r.result} for r in results),
        ["job_id", "name", "owner", "runnable_for", "category", "result", "protected_by", "status_reason"])


def reap_metadata(config: ReapConfig, policy: core.ReapPolicy, attempt: ReapAttempt, report: core.SlackReport,
                  slack_error: str, ctx: core.ReportContext) -> dict[str, Any]:
    """Numbers as numbers (the UI plots them across runs), the jobs as a table, links as links."""
    metadata = {
        "environment": config.environment,
        "queue": config.queue,
        "dry_run": policy.dry_run,
        "threshold": core.format_duration(policy.threshold),
        "candidates": dg.MetadataValue.int(len(config.job_ids)),
        "cancelled": dg.MetadataValue.int(core.cancelled_count(attempt.results)),
        "breaker_tripped": attempt.plan.breaker_tripped,
        "results": dg.MetadataValue.json(core.result_counts(attempt.results)),
        "jobs": _table(attempt.results),
        "aws_calls": dg.MetadataValue.json(attempt.calls),
        "slack_report": f"{report.value}: {slack_error}" if report is core.SlackReport.FAILED else report.value,
        "queue_blocked": core.block_text(ctx.block) if ctx.block else "not reported blocked",
    }
    if ctx.region:
        metadata["batch_console"] = dg.MetadataValue.url(
            f"https://{ctx.region}.console.aws.amazon.com/batch/home?region={ctx.region}#queues")
    return metadata


def run_tags(attempt: ReapAttempt, policy: core.ReapPolicy, report: core.SlackReport) -> dict[str, str]:
    """What the run did, as tags the runs list filters on (its request's tags say what it was asked)."""
    done = core.Outcome.WOULD_CANCEL if policy.dry_run else core.Outcome.CANCELLED
    return {f"platform_ops/{'would_cancel' if policy.dry_run else 'cancelled'}":
            str(sum(r.outcome is done for r in attempt.results)),
            "platform_ops/slack_report": report.name.lower()}


def _reap_op(settings: Settings) -> dg.OpDefinition:
    aws_keys = {aws_resource_key(name) for name in settings.environments}

    @dg.op(required_resource_keys=aws_keys | {"slack"}, out=dg.Out(dict), retry_policy=REAP_RETRY)
    def reap(context: dg.OpExecutionContext, config: ReapConfig):
        """Describe, decide, cancel, verify, report: one Slack message per run."""
        env, policy = resolve_target(settings, config)
        step = reap_step(context, env.name)
        ctx = core.ReportContext(env.region, settings.slack.owners, queue_blocks(step.instance, env.name).get(
            config.queue), dagster_run_url(settings, step.run_id))  # the block as it was before this run
        attempt = reap_jobs(step, config.job_ids, policy)
        if env.event_driven:  # this run saw its jobs afresh: the events-fed watch forgets what moved on
            settle_watch(step.instance, env.name, attempt.observed)
        if attempt.plan.breaker_tripped:
            context.log.error(f"Breaker tripped: {attempt.plan.eligible} stuck jobs > max_cancels_per_run "
                              f"{policy.max_cancels}; cancelled none past the cap")
        message = core.report(env.name, config.queue, policy, attempt.plan, attempt.results, ctx=ctx)
        report, slack_error = send_report(settings, step, message,
                                          core.worth_reporting(attempt.plan, attempt.results))
        step.instance.add_run_tags(step.run_id, run_tags(attempt, policy, report))
        yield dg.Output({"cancelled": core.cancelled_count(attempt.results),
                         "results": core.result_counts(attempt.results)},
                        metadata=reap_metadata(config, policy, attempt, report, slack_error, ctx))
        if report is core.SlackReport.FAILED:
            raise dg.Failure(f"the reaper's Slack report was not sent ({slack_error}); "
                             "what was cancelled is in this run's metadata", allow_retries=False)

    return reap


# ---- the polling sensor ----

@dataclass
class Listing:
    """One environment's RUNNABLE listing: queue -> ids for each queue listed in full, the stuck
    candidates per queue, what could not be read."""

    listed: dict[str, list[str]] = field(default_factory=dict)
    stuck: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seen: int = 0


def list_environment(settings: Settings, aws: AwsEnvironmentResource, env: EnvironmentSettings,
                     now: datetime) -> Listing:
    """List every watched queue's RUNNABLE jobs and pick the stuck candidates; a queue that
    fails is a problem, and per `after_read_error` the environment's other queues are still read
    or not."""
    listing = Listing()
    for queue in env.job_queues:
        try:
            jobs = list(batch.iter_jobs(aws.client("batch"), queue, core.RUNNABLE))
        except AwsError as exc:
            listing.problems.append(f"{env.name}/{queue}: {exc}")
            if after_read_error(exc.request_scoped) is AfterReadError.NEXT_ENVIRONMENT:
                break
            continue
        listing.seen += len(jobs)
        listing.listed[queue] = [job.job_id for job in jobs]
        stuck = core.stuck_candidates(jobs, _policy(settings, queue).threshold, now)
        if stuck:
            listing.stuck[queue] = [job.job_id for job in stuck]
    return listing


@dataclass(frozen=True)
class TickStep:
    """What a sensor tick uses of Dagster: the instance (the watch) and each environment's AWS."""

    instance: dg.DagsterInstance
    aws: Callable[[str], AwsEnvironmentResource]


def stuck_jobs_tick(settings: Settings, step: TickStep, cursor: dict[str, int], now: datetime
                    ) -> tuple[list[dg.RunRequest], dict[str, int], list[str], int]:
    """List, request, reconcile: the run requests, the new cursor (when each event-driven
    environment was last listed in full), the problems, how many RUNNABLE jobs were seen."""
    cursor, requests, problems, seen = dict(cursor), [], [], 0
    interval = timedelta(seconds=settings.reaper.reconcile_interval_seconds)
    for env in settings.environments.values():
        mark = f"reconciled:{env.name}"
        last = from_epoch_ms(cursor[mark]) if mark in cursor else None
        if not core.lists_now(env.event_driven, last, now, interval):
            continue  # events carry this environment; listing only reconciles now and then
        listing = list_environment(settings, step.aws(env.name), env, now)
        requests += not_yet_requested(step.instance, [reap_request(env.name, queue, ids, POLLING_SENSOR)
                                                      for queue, ids in listing.stuck.items()])
        problems += listing.problems
        seen += listing.seen
        if env.event_driven and listing.listed:  # each queue listed in full corrects the events-fed watch
            reconcile_watch(step.instance, env.name, listing.listed, now)
        if env.event_driven and not listing.problems:  # else try again next tick
            cursor[mark] = to_epoch_ms(now)
    return requests, cursor, problems, seen


def _sensor(settings: Settings, job: dg.JobDefinition) -> dg.SensorDefinition:
    @dg.sensor(
        name=POLLING_SENSOR,
        job=job,
        minimum_interval_seconds=settings.reaper.interval_seconds,
        default_status=default_status(settings),
        required_resource_keys={aws_resource_key(name) for name in settings.environments},
        description="Lists RUNNABLE jobs of every watched queue; requests one reap run per queue with stuck jobs. "
                    "For event-driven environments it reconciles every reaper.reconcile_interval_seconds.",
    )
    def stuck_jobs_sensor(context: dg.SensorEvaluationContext):
        cursor = json.loads(context.cursor) if context.cursor else {}
        step = TickStep(context.instance, lambda environment: aws_for(context, environment))
        requests, cursor, problems, seen = stuck_jobs_tick(settings, step, cursor, _now())
        return end_tick(context, POLLING_SENSOR, requests, json.dumps(cursor, sort_keys=True), problems,
                        f"no stuck jobs among {seen} RUNNABLE")

    return stuck_jobs_sensor


def reaper_defs(settings: Settings) -> dg.Definitions:
    reap = _reap_op(settings)

    @dg.job(name=REAP_JOB, executor_def=dg.in_process_executor, tags={"platform_ops/kind": "reaper"},
            description="Cancel Batch jobs stuck in RUNNABLE past the threshold (never RUNNING ones).")
    def reap_stuck_jobs():
        reap()

    return dg.Definitions(jobs=[reap_stuck_jobs], sensors=[_sensor(settings, reap_stuck_jobs)])
