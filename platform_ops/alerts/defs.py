"""Failure alerts wiring: `failed_executions_sensor` finds newly failed executions, job
`alert_failed_executions` drills into each and sends one Slack message per execution (a digest
plus thread replies in a storm), exactly once; `platform_ops_run_failure_sensor` reports this code
location's own failed runs through the same Slack resource.

Each piece reads through the adapters, asks alerts/core.py what to do, does it and records it;
the events sensor hands its Step Functions events in through `candidates_from_events` and
`alert_request`.
"""

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg

from platform_ops.adapters import logs, stepfunctions
from platform_ops.adapters.aws import AwsEnvironmentResource, AwsError, count_calls
from platform_ops.adapters.ledger import Ledger
from platform_ops.adapters.slack import Delivery, Pacer, PlatformSlackResource, SlackError, next_step, post_once
from platform_ops.alerts import core
from platform_ops.alerts.streaks import Streak, render_resolved, render_update
from platform_ops.dagster_runs import first_step_error
from platform_ops.metadata import table as metadata_table
from platform_ops.reaper.defs import report_message as reaper_report_message
from platform_ops.resources import aws_for, aws_resource_key, dagster_run_url
from platform_ops.sensors import default_status, end_tick, not_yet_requested
from platform_ops.settings import EnvironmentSettings, Settings
from platform_ops.vocabulary import ANNOUNCED_TAG, to_epoch_ms

ALERT_JOB = "alert_failed_executions"
COLUMNS = ["execution", "state_machine", "environment", "result", "detail"]


class ExecutionRef(dg.Config):
    environment: str
    execution_arn: str
    state_machine_arn: str


class AlertConfig(dg.Config):
    """Executions to announce; the sensor fills it in, an operator can too (Launchpad)."""

    failures: list[ExecutionRef] = []
    recoveries: list[ExecutionRef] = []


# ---- what the sensors request ----

def candidates_from_events(env: EnvironmentSettings, bodies: Iterable[str]) -> core.Candidates:
    """What an event-driven environment's queue says for alerting: its state machines' failures,
    and successes that may recover one (other events are left to other capabilities)."""
    executions, _ = core.executions_from_events(bodies)
    return core.from_events(env.name, env.state_machine_prefixes, executions)


def alert_request(instance: dg.DagsterInstance, found: Iterable[core.Candidates]) -> dg.RunRequest | None:
    """One alert run for what is new, or None; successes count where the ledger has a failure open."""
    found = list(found)
    machines = {s.state_machine_arn for c in found for s in c.successes}
    work = core.plan_work(found, Ledger(instance).open_failures(machines))
    if work is None:
        return None
    config = AlertConfig(failures=[ExecutionRef(**asdict(r)) for r in work.failures],
                         recoveries=[ExecutionRef(**asdict(r)) for r in work.recoveries])
    return dg.RunRequest(run_key=work.run_key, job_name=ALERT_JOB, run_config=dg.RunConfig(ops={"alert": config}),
                         tags={"platform_ops/to_examine":
                               f"{len(work.failures)} failed, {len(work.recoveries)} recovered"})


@dataclass(frozen=True)
class Poll:
    """One tick of the polling sensor: the settings, AWS by environment name, the tick's time."""

    settings: Settings
    aws: Callable[[str], AwsEnvironmentResource]
    now: datetime


def poll_environment(poll: Poll, env: EnvironmentSettings, cursor: core.Cursor, problems: list[str]) -> core.Candidates:
    """Every state machine of `env` read since its cursor; an event-driven one only when its
    reconciliation is due. What cannot be read is a problem, its cursor carried over."""
    a, found = poll.settings.alerts, core.Candidates()
    scope = core.Scope(env.name, env.account_id, env.region, tuple(env.state_machine_prefixes), env.event_driven)
    if not cursor.due(scope, poll.now, a.reconcile_interval_seconds):
        return found
    sfn = poll.aws(env.name).client("stepfunctions")
    try:
        machines = stepfunctions.list_state_machines(sfn, env.state_machine_prefixes)
    except AwsError as exc:  # not reconciled: try again next tick
        problems.append(f"{env.name}: {exc}")
        cursor.keep(scope, mark=False)
        return found
    cursor.listed(scope, poll.now)
    default_since = poll.now - timedelta(minutes=a.initial_lookback_minutes)
    for machine in machines:
        since = cursor.since(machine.arn, default_since)
        try:
            executions = list(stepfunctions.recent_executions(
                sfn, machine.arn, since - timedelta(hours=a.execution_lookback_hours)))
        except AwsError as exc:
            problems.append(f"{env.name}/{machine.name}: {exc}")
            cursor.unread(machine.arn)
            continue
        failed, succeeded, newest = core.scan(executions, since)
        cursor.seen(machine.arn, newest)
        found.extend(core.candidates(env.name, failed, succeeded))
    return found


def poll_tick(context: dg.SensorEvaluationContext, settings: Settings) -> dg.SensorResult:
    """The polling sensor's tick: every environment read, one alert run requested for what is new."""
    poll = Poll(settings, lambda name: aws_for(context, name), datetime.now(UTC))
    cursor, problems = core.Cursor.loads(context.cursor), []
    found = [poll_environment(poll, env, cursor, problems) for env in settings.environments.values()]
    # the events sensor may have asked for the same set already: Dagster skips a key per sensor only
    requests = not_yet_requested(context.instance, [alert_request(context.instance, found)])
    return end_tick(context, "failed_executions_sensor", requests, cursor.dumps(), problems,
                    f"no newly failed executions in {len(cursor.next)} state machines")


# ---- an alert run ----

@dataclass(frozen=True)
class AlertRun:
    """What one alert run works with: settings, ledger, Slack, AWS by environment name, who it is
    (a claim stays its root run's own), its links and its pace."""

    settings: Settings
    ledger: Ledger
    slack: PlatformSlackResource
    aws: Callable[[str], AwsEnvironmentResource]
    run_id: str
    root_run_id: str
    links: core.Links
    pacer: Pacer
    now: datetime

    @classmethod
    def of(cls, context: dg.OpExecutionContext, settings: Settings) -> "AlertRun":
        return cls(settings, Ledger(context.instance), context.resources.slack, lambda name: aws_for(context, name),
                   context.run_id, context.dagster_run.root_run_id or context.run_id,
                   core.Links(settings.metaflow_ui_url, dagster_run_url(settings, context.run_id),
                              settings.slack.owners),
                   Pacer(settings.alerts.post_interval_seconds), datetime.now(UTC))

    def environment(self, name: str) -> tuple[EnvironmentSettings, AwsEnvironmentResource]:
        env = self.settings.environments.get(name)
        if env is None:
            known = ", ".join(self.settings.environments)
            raise dg.Failure(f"environment {name!r} is not in the settings (known: {known})")
        return env, self.aws(name)


def examine_failure(run: AlertRun, ref: core.Ref, record: dict | None) -> core.Result | core.Finding:
    """The ledger first (no AWS call for what went out), then describe, silences, the drill-down."""
    skipped = core.skipped(ref, next_step(run.ledger, record, run.root_run_id), record)
    if skipped:
        return skipped
    env, aws = run.environment(ref.environment)
    sfn = aws.client("stepfunctions")
    execution = stepfunctions.describe_execution_if_exists(sfn, ref.execution_arn)
    screened = core.screen(ref, execution, run.settings.alerts.silences, run.now)
    if isinstance(screened, core.Mute):
        run.ledger.mute(ref.execution_arn, reason=screened.reason, until=screened.until.isoformat())
        return screened.result
    if screened:
        return screened
    events = stepfunctions.execution_history(sfn, ref.execution_arn)
    incident = core.drill_down(execution, events, env.name)
    if incident.owner is None:
        definition = stepfunctions.definition_for_execution(sfn, ref.execution_arn)
        incident = core.drill_down(execution, events, env.name, definition)
    first = incident.first_failure
    tail = logs.tail(aws.client("logs"), first.log_stream, run.settings.alerts.log_lines) if first else None
    return core.Finding(ref, incident, tail)


def examine_recovery(run: AlertRun, ref: core.Ref, opened: dict | None) -> core.Result | core.Post:
    """Described only when its state machine has a failure open."""
    execution = None
    if opened:
        _, aws = run.environment(ref.environment)
        execution = stepfunctions.describe_execution_if_exists(aws.client("stepfunctions"), ref.execution_arn)
    return core.plan_recovery(ref, opened, execution, run.links)


def send(run: AlertRun, post: core.Post, report: core.Report) -> Delivery | None:
    """One post, exactly once, paced; None when Slack failed it (reported)."""
    try:
        with run.pacer:
            return post_once(run.slack, run.ledger, post.key, run.settings.slack.channel, post.message,
                             run_id=run.run_id, root_run_id=run.root_run_id, thread_ts=post.thread_ts,
                             payload=dict(post.payload), broadcast=post.broadcast)
    except SlackError as exc:
        report.failed(post, str(exc))
        return None


def send_all(run: AlertRun, plan: core.Posts, report: core.Report) -> None:
    """The digest first, if any, then each post; a state machine already failing gets a reply in
    its incident's thread instead of a new message. What went out updates the ledger's open
    failures (the streaks) and the incidents' top-level messages."""
    posts = list(plan.posts)
    if plan.digest:
        digest = send(run, plan.digest, report)
        posts, held = core.after_digest(plan, digest.how if digest else None, digest.ts if digest else None)
        report.record(*held)
    streaks = core.streaks_of(run.ledger.open_failures({p.ref.state_machine_arn for p in posts if p.ref}))
    now_ms, repeat = to_epoch_ms(run.now), timedelta(hours=run.settings.alerts.repeat_interval_hours)
    for post in posts:
        machine = post.ref.state_machine_arn
        if post.kind is core.Kind.EXECUTION and not post.reaped_by:
            post = core.in_streak(post, streaks.get(machine), now_ms, repeat)
        delivery = send(run, post, report)
        if delivery is None:
            continue
        report.record(core.delivered(post, delivery.how, delivery.ts))
        if delivery.how == "busy":
            continue
        report.posted[post.label] = delivery.ts
        if post.reaped_by:
            note_on_reap_report(run, post, report)
        elif post.kind is core.Kind.EXECUTION:
            streaks[machine] = core.streak_after(post, delivery.ts, streaks.get(machine), now_ms)
            run.ledger.open_failure(machine, **streaks[machine].record())
            update_incident(run, machine, streaks[machine], report)
        elif post.kind is core.Kind.RECOVERY and resolve_incident(run, post, streaks.get(machine), report):
            run.ledger.close_failure(machine)


def reap_reports(run: AlertRun, findings: list[core.Finding]) -> dict[str, str]:
    """The posted reports (root run id -> ts) of the reaps whose cancels failed these executions."""
    roots = {f.incident.reaped_by for f in findings} - {None}
    found = {root: reaper_report_message(run.ledger.instance, root) for root in roots}
    return {root: record["ts"] for root, record in found.items() if record and record.get("ts")}


def note_on_reap_report(run: AlertRun, post: core.Post, report: core.Report) -> None:
    """The reap's report lists the runs its cancels failed (chat.update); the list is kept in the
    ledger (`reaped/<root run id>`), so a retry adds nothing twice."""
    key = f"reaped/{post.reaped_by}"
    affected = list((run.ledger.get(key) or {}).get("runs", []))
    if post.affected not in affected:
        affected.append(post.affected)
    posted = reaper_report_message(run.ledger.instance, post.reaped_by) or {}
    try:
        run.slack.update(posted.get("channel", run.settings.slack.channel), posted["ts"],
                         core.render_report_with_affected(posted, affected))
    except SlackError as exc:
        report.errors.append(f"noting {post.label} on the reap report: {exc}")
        return
    run.ledger.put(key, runs=affected)


def update_incident(run: AlertRun, machine: str, streak: Streak, report: core.Report) -> None:
    """The incident's top-level message says the streak as it is now (chat.update); recorded once
    it does, so a retry repeats only an update that failed."""
    if not streak.needs_update:
        return
    try:
        run.slack.update(run.settings.slack.channel, streak.message_ts, render_update(streak, to_epoch_ms(run.now)))
    except SlackError as exc:
        report.errors.append(f"updating the incident of {streak.first_execution}: {exc}")
        return
    run.ledger.open_failure(machine, **dataclasses.replace(streak, updated=streak.failures).record())


def resolve_incident(run: AlertRun, post: core.Post, streak: Streak | None, report: core.Report) -> bool:
    """The incident's top-level message says resolved; False (the incident stays open, the retry
    updates it) when Slack refused the update."""
    if streak is None or not streak.message_ts:
        return True
    name = post.ref.execution_arn.rsplit(":", 1)[-1]
    try:
        run.slack.update(run.settings.slack.channel, streak.message_ts, render_resolved(streak, name, post.stopped_ms))
    except SlackError as exc:
        report.errors.append(f"resolving the incident of {streak.first_execution}: {exc}")
        return False
    return True


def alert_run(run: AlertRun, config: AlertConfig) -> core.Report:
    """Failures first (so a recovery in the same run finds the failure it answers open), then recoveries."""
    report = core.Report()
    failures = [core.Ref(**r.model_dump()) for r in config.failures]
    records = run.ledger.executions(f.execution_arn for f in failures)
    findings = []
    for ref in failures:
        examined = examine_failure(run, ref, records.get(ref.execution_arn))
        report.record(examined.result if isinstance(examined, core.Finding) else examined)
        if isinstance(examined, core.Finding):
            findings.append(examined)
    digest_record = run.ledger.get(core.digest_key(failures)) if findings else None
    send_all(run, core.plan_posts(findings, failures, run.links, run.settings.alerts.digest_threshold,
                                  digest_record, reap_reports(run, findings)), report)
    recoveries = [core.Ref(**r.model_dump()) for r in config.recoveries]
    opened = run.ledger.open_failures(r.state_machine_arn for r in recoveries)
    planned = [examine_recovery(run, ref, opened.get(ref.state_machine_arn)) for ref in recoveries]
    report.record(*(p for p in planned if isinstance(p, core.Result)))
    send_all(run, core.Posts(None, tuple(p for p in planned if isinstance(p, core.Post))), report)
    return report


MAX_LINKS = 10  # Slack permalinks on a run's page; the table has every execution


def message_links(run: AlertRun, report: core.Report) -> dict[str, dg.MetadataValue]:
    """A link per message the run sent (the first MAX_LINKS), shown on the run's page."""
    stamps = dict(list(report.posted.items())[:MAX_LINKS])
    try:
        links = run.slack.permalinks(run.settings.slack.channel, list(stamps.values()))
    except SlackError:
        return {}
    return {f"slack: {label}": dg.MetadataValue.url(links[ts]) for label, ts in stamps.items() if ts in links}


def alert_output(report: core.Report, calls: dict[str, int], links: dict | None = None) -> dg.Output:
    counts = report.counts
    metadata = {**(links or {}),
        "announced": report.announced,
        "muted": counts.get(core.Outcome.MUTED.value, 0),
        "results": dg.MetadataValue.json(counts),
        "executions": metadata_table(report.rows, COLUMNS),
        "aws_calls": dg.MetadataValue.json(dict(calls)),
    }
    return dg.Output({"announced": report.announced, "results": counts}, metadata=metadata)


def alert_op(settings: Settings) -> dg.OpDefinition:
    a = settings.alerts

    @dg.op(
        required_resource_keys={aws_resource_key(name) for name in settings.environments} | {"slack"},
        retry_policy=dg.RetryPolicy(max_retries=a.retries, delay=a.retry_delay_seconds, backoff=dg.Backoff.EXPONENTIAL),
        out=dg.Out(dict),
    )
    def alert(context: dg.OpExecutionContext, config: AlertConfig):
        """Drill down, then announce each execution once: claimed in the ledger before the post,
        confirmed after it; what went out (or another live run is sending) is skipped. The run is
        tagged with what it asked (`to_examine`) and what it sent (`sent`), as the runs page shows."""
        with count_calls() as calls:
            run = AlertRun.of(context, settings)
            report = alert_run(run, config)
        context.instance.add_run_tags(context.run.run_id, {"platform_ops/sent": str(report.announced)})
        yield alert_output(report, calls, message_links(run, report))
        if report.errors:
            raise dg.Failure(f"{len(report.errors)} Slack post(s) failed; what went out is recorded and will not "
                             f"be sent again on retry: " + "; ".join(report.errors)[:2000])

    return alert


def report_run_failure(context: dg.RunFailureSensorContext, settings: Settings, slack: PlatformSlackResource) -> None:
    """This code location's own failed run, once (a run Dagster will retry is not failed yet),
    with its failed step's own error: the run's failure event only names the steps."""
    run = context.dagster_run
    if run.tags.get("dagster/will_retry") == "true":
        return
    if context.instance.get_run_by_id(run.run_id).tags.get(ANNOUNCED_TAG) == "true":
        return  # the run announced its own outcome (a blocked or failed promotion): once is enough
    error = first_step_error(context.instance, run.run_id) or context.failure_event.message or ""
    message = core.render_run_failure(run.job_name, run.run_id, error, dagster_run_url(settings, run.run_id))
    post_once(slack, Ledger(context.instance), f"run-failure/{run.run_id}", settings.slack.channel, message,
              run_id=None, root_run_id=None, payload={"kind": "run_failure", "run_id": run.run_id})


def alerts_defs(settings: Settings) -> dg.Definitions:
    alert = alert_op(settings)

    @dg.job(name=ALERT_JOB, executor_def=dg.in_process_executor, tags={"platform_ops/kind": "alerts"},
            description="One Slack message per failed Step Functions execution, with what failed, why, whose.")
    def alert_failed_executions():
        alert()

    status = default_status(settings)

    @dg.sensor(name="failed_executions_sensor", job=alert_failed_executions,
               minimum_interval_seconds=settings.alerts.interval_seconds, default_status=status,
               required_resource_keys={aws_resource_key(name) for name in settings.environments},
               description="Finds executions that failed (or recovered) since the last tick; requests one alert run. "
                           "For event-driven environments it reconciles every reconcile_interval_seconds.")
    def failed_executions_sensor(context: dg.SensorEvaluationContext):
        return poll_tick(context, settings)

    @dg.run_failure_sensor(name="platform_ops_run_failure_sensor", default_status=status,
                           description="Reports this code location's own failed runs to Slack.")
    def platform_ops_run_failure_sensor(context: dg.RunFailureSensorContext, slack: PlatformSlackResource):
        report_run_failure(context, settings, slack)

    return dg.Definitions(jobs=[alert_failed_executions], sensors=[failed_executions_sensor,
                                                                    platform_ops_run_failure_sensor])
