"""Failure alerts wiring: `failed_executions_sensor` finds newly failed executions, job
`alert_failed_executions` drills into each and sends one Slack message per execution (a digest
plus thread replies in a storm), exactly once; `platform_ops_run_failure_sensor` reports this code
location's own failed runs through the same Slack resource."""

import json
from datetime import datetime, timedelta, timezone

import dagster as dg

from platform_ops import exactly_once
from platform_ops.adapters import logs, stepfunctions
from platform_ops.adapters.aws import AwsError, count_calls
from platform_ops.adapters.ledger import Ledger
from platform_ops.adapters.slack import Pacer, PlatformSlackResource, SlackError, next_step, post_once
from platform_ops.alerts import core
from platform_ops.metadata import table as metadata_table
from platform_ops.resources import aws_for, aws_resource_key, dagster_run_url
from platform_ops.sensors import end_tick
from platform_ops.settings import Settings
from platform_ops.vocabulary import from_epoch_ms, ids_digest, to_epoch_ms


ALERT_JOB = "alert_failed_executions"


class ExecutionRef(dg.Config):
    environment: str
    execution_arn: str
    state_machine_arn: str


class AlertConfig(dg.Config):
    """Executions to announce; the sensor fills it in, an operator can too (Launchpad)."""

    failures: list[ExecutionRef] = []
    recoveries: list[ExecutionRef] = []


def refs(env_name: str, machine_arn: str, failed: list, succeeded: list) -> tuple[list, list]:
    """Failures to announce, and the state machine's latest success if it came after them."""
    failures = [ExecutionRef(environment=env_name, execution_arn=e.arn, state_machine_arn=machine_arn)
                for e in failed]
    successes = []
    if succeeded and (not failed or succeeded[-1].stopped_at > failed[-1].stopped_at):
        successes.append(ExecutionRef(environment=env_name, execution_arn=succeeded[-1].arn,
                                      state_machine_arn=machine_arn))
    return failures, successes


def alert_request(instance: dg.DagsterInstance, failures: list, successes: list) -> dg.RunRequest | None:
    """One alert run for what is new; its key is the set of executions, so the polling and the
    event sensor asking for the same set make one run (and the ledger skips what went out)."""
    failing = {f.state_machine_arn for f in failures}
    opened = Ledger(instance).open_failures({s.state_machine_arn for s in successes})
    recoveries = [s for s in successes if s.state_machine_arn in opened or s.state_machine_arn in failing]
    if not failures and not recoveries:
        return None
    key = ids_digest([f.execution_arn for f in failures] + [f"ok:{r.execution_arn}" for r in recoveries])
    return dg.RunRequest(
        run_key=f"alert:{key}",
        job_name=ALERT_JOB,
        run_config=dg.RunConfig(ops={"alert": AlertConfig(failures=failures, recoveries=recoveries)}),
        tags={"platform_ops/failed_executions": str(len(failures))},
    )


def _run_ref(context) -> dict[str, str]:
    """Who claims a post: this run, and the run it re-executes (a claim stays its root's own)."""
    return {"run_id": context.run_id, "root_run_id": context.dagster_run.root_run_id or context.run_id}


def _announce(ledger: Ledger, send, incident: core.Incident, message, thread_ts: str | None, row: dict,
              errors: list[str]) -> None:
    """One execution's message, exactly once; then its failure stays open for a recovery."""
    ex = incident.execution
    try:
        sent = send(f"execution/{ex.arn}", message, thread_ts, kind="execution", execution_arn=ex.arn)
    except SlackError as exc:
        errors.append(f"{ex.name}: {exc}")
        row.update(result=core.Outcome.NOT_SENT, detail=str(exc))
        return
    if sent.how == "busy":
        row.update(result=core.Outcome.IN_FLIGHT)
        return
    ledger.open_failure(ex.state_machine_arn, thread_ts=thread_ts or sent.ts,
                        stopped_ms=to_epoch_ms(ex.stopped_at) if ex.stopped_at else 0, execution=ex.name)
    row.update(result=core.announced(in_thread=bool(thread_ts), found=sent.how == "found"), detail=sent.ts)


def alerts_defs(settings: Settings) -> dg.Definitions:
    aws_keys = {aws_resource_key(name) for name in settings.environments}
    a = settings.alerts
    channel = settings.slack.channel

    def env_of(context, name: str):
        env = settings.environments.get(name)
        if env is None:
            raise dg.Failure(f"environment {name!r} is not in the settings (known: {', '.join(settings.environments)})")
        aws = aws_for(context, name)
        return env, aws

    @dg.op(
        required_resource_keys=aws_keys | {"slack"},
        retry_policy=dg.RetryPolicy(max_retries=a.retries, delay=a.retry_delay_seconds, backoff=dg.Backoff.EXPONENTIAL),
        out=dg.Out(dict),
    )
    def alert(context: dg.OpExecutionContext, config: AlertConfig):
        """Drill down, then announce each execution once: claimed in the ledger before the post,
        confirmed after it; what went out (or another live run is sending) is skipped."""
        ledger = Ledger(context.instance)
        slack: PlatformSlackResource = context.resources.slack
        links = core.Links(settings.metaflow_ui_url, dagster_run_url(settings, context.run_id), settings.slack.owners)
        pacer = Pacer(a.post_interval_seconds)
        run = _run_ref(context)

        def send(key: str, message, thread_ts: str | None = None, **payload):
            with pacer:
                return post_once(slack, ledger, key, channel, message, **run, thread_ts=thread_ts, payload=payload)

        now = datetime.now(timezone.utc)
        rows: list[dict] = []
        errors: list[str] = []
        pending: list[tuple[core.Incident, list[str] | None]] = []
        records = ledger.executions(f.execution_arn for f in config.failures)
        row_of: dict[str, dict] = {}
        with count_calls() as calls:
            for ref in config.failures:
                row = {"execution": ref.execution_arn.rsplit(":", 1)[-1], "environment": ref.environment,
                       "state_machine": ref.state_machine_arn.rsplit(":", 1)[-1]}
                rows.append(row)
                row_of[ref.execution_arn] = row
                record = records.get(ref.execution_arn)
                step = next_step(ledger, record, run["root_run_id"])
                if step is exactly_once.Step.DONE:
                    row.update(result=f"already {record['state'] if 'state' in record else 'announced'}",
                               detail=record.get("ts", ""))
                    continue
                if step is exactly_once.Step.BUSY:
                    row.update(result=core.Outcome.IN_FLIGHT, detail=record.get("run_id") or "")
                    continue
                env, aws = env_of(context, ref.environment)
                sfn = aws.client("stepfunctions")
                execution = stepfunctions.describe_execution_if_exists(sfn, ref.execution_arn)
                if execution is None:  # e.g. its state machine was deleted: nothing to drill into
                    row.update(result=core.Outcome.GONE)
                    continue
                silence = next((s for s in a.silences if s.mutes(execution.state_machine_name, now)), None)
                if silence:
                    ledger.mute(ref.execution_arn, reason=silence.reason, until=silence.until.isoformat())
                    row.update(result=core.Outcome.MUTED, detail=f"{silence.reason} (until {silence.until:%Y-%m-%d %H:%M})")
                    continue
                events = stepfunctions.execution_history(sfn, ref.execution_arn)
                incident = core.drill_down(execution, events, env.name)
                if incident.owner is None:
                    definition = stepfunctions.definition_for_execution(sfn, ref.execution_arn)
                    incident = core.drill_down(execution, events, env.name, definition)
                first = incident.first_failure
                tail = logs.tail(aws.client("logs"), first.log_stream, a.log_lines) if first else None
                pending.append((incident, tail))
                row.update(result=core.Outcome.TO_ANNOUNCE, detail=f"{incident.failed}/{incident.submitted} tasks: "
                                                        f"{incident.headline_reason}")

            thread_ts = None
            digest_key = f"digest/{ids_digest([f.execution_arn for f in config.failures])}"
            storm = bool(pending) and exactly_once.is_storm(len(pending), a.digest_threshold, ledger.get(digest_key))
            if storm:
                try:
                    digest = send(digest_key, core.render_digest([i for i, _ in pending], links),
                                  kind="digest", executions=len(config.failures))
                    thread_ts = digest.ts
                    if digest.how == "busy":
                        for incident, _ in pending:
                            row_of[incident.execution.arn].update(result=core.Outcome.IN_FLIGHT)
                except SlackError as exc:
                    errors.append(f"digest: {exc}")
            if not storm or thread_ts:  # in a storm, details only go out under a digest
                for incident, tail in pending:
                    _announce(ledger, send, incident, core.render_incident(incident, links, tail), thread_ts,
                              row_of[incident.execution.arn], errors)

            open_failures = ledger.open_failures(r.state_machine_arn for r in config.recoveries)
            for ref in config.recoveries:
                opened = open_failures.get(ref.state_machine_arn)
                row = {"execution": ref.execution_arn.rsplit(":", 1)[-1], "environment": ref.environment,
                       "state_machine": ref.state_machine_arn.rsplit(":", 1)[-1]}
                rows.append(row)
                if not opened:
                    row.update(result=core.Outcome.RECOVERY_NOTHING_OPEN)
                    continue
                env, aws = env_of(context, ref.environment)
                execution = stepfunctions.describe_execution_if_exists(aws.client("stepfunctions"), ref.execution_arn)
                if execution is None:
                    row.update(result=core.Outcome.GONE)
                    continue
                if not execution.stopped_at or to_epoch_ms(execution.stopped_at) <= opened.get("stopped_ms", 0):
                    row.update(result=core.Outcome.RECOVERY_OLDER)
                    continue
                flow = execution.state_machine_name.rsplit(".", 1)[-1]
                try:
                    sent = send(f"recovery/{ref.execution_arn}", core.render_recovery(execution, flow, links),
                                opened["thread_ts"], kind="recovery", execution_arn=ref.execution_arn)
                except SlackError as exc:
                    errors.append(f"recovery {execution.name}: {exc}")
                    row.update(result=core.Outcome.RECOVERY_NOT_SENT, detail=str(exc))
                    continue
                if sent.how == "busy":
                    row.update(result=core.Outcome.RECOVERY_IN_FLIGHT)
                    continue
                ledger.close_failure(ref.state_machine_arn)
                row.update(result=core.Outcome.RECOVERY_ANNOUNCED, detail=opened["thread_ts"])

        counts: dict[str, int] = {}
        for r in rows:  # keyed by the words (plain str), as the metadata shows them
            counts[str(r["result"])] = counts.get(str(r["result"]), 0) + 1
        announced = sum(1 for r in rows if r["result"] in core.ANNOUNCED)
        metadata = {
            "announced": announced,
            "muted": counts.get(core.Outcome.MUTED.value, 0),
            "results": dg.MetadataValue.json(counts),
            "executions": metadata_table(rows, ["execution", "state_machine", "environment", "result", "detail"]),
            "aws_calls": dg.MetadataValue.json(dict(calls)),
        }
        yield dg.Output({"announced": announced, "results": counts}, metadata=metadata)
        if errors:
            raise dg.Failure(f"{len(errors)} Slack post(s) failed; what went out is recorded and will not be "
                             f"sent again on retry: " + "; ".join(errors)[:2000])

    @dg.job(name=ALERT_JOB, executor_def=dg.in_process_executor, tags={"platform_ops/kind": "alerts"},
            description="One Slack message per failed Step Functions execution, with what failed, why, whose.")
    def alert_failed_executions():
        alert()

    status = dg.DefaultSensorStatus.RUNNING if settings.sensors_running else dg.DefaultSensorStatus.STOPPED

    @dg.sensor(name="failed_executions_sensor", job=alert_failed_executions,
               minimum_interval_seconds=a.interval_seconds, default_status=status, required_resource_keys=aws_keys,
               description="Finds executions that failed (or recovered) since the last tick; requests one alert run. "
                           "For event-driven environments it reconciles every reconcile_interval_seconds.")
    def failed_executions_sensor(context: dg.SensorEvaluationContext):
        cursor: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
        now = datetime.now(timezone.utc)
        default_since = now - timedelta(minutes=a.initial_lookback_minutes)
        lookback = timedelta(hours=a.execution_lookback_hours)
        new_cursor: dict[str, int] = {}
        failures: list[ExecutionRef] = []
        successes: list[ExecutionRef] = []
        problems: list[str] = []
        for env in settings.environments.values():
            mark = f"reconciled:{env.name}"
            if env.event_driven and to_epoch_ms(now) - cursor.get(mark, 0) < a.reconcile_interval_seconds * 1000:
                new_cursor.update({k: v for k, v in cursor.items() if f":{env.account_id}:" in k or k == mark})
                continue  # events carry this environment; polling only reconciles now and then
            aws = aws_for(context, env.name)
            try:
                machines = stepfunctions.list_state_machines(aws.client("stepfunctions"), env.state_machine_prefixes)
            except AwsError as exc:  # not reconciled: try again next tick
                problems.append(f"{env.name}: {exc}")
                new_cursor.update({k: v for k, v in cursor.items() if f":{env.account_id}:" in k})
                continue
            if env.event_driven:
                new_cursor[mark] = to_epoch_ms(now)
            for machine in machines:
                since = from_epoch_ms(cursor[machine.arn]) if machine.arn in cursor else default_since
                try:
                    executions = list(stepfunctions.recent_executions(aws.client("stepfunctions"), machine.arn,
                                                                      since - lookback))
                except AwsError as exc:
                    problems.append(f"{env.name}/{machine.name}: {exc}")
                    if machine.arn in cursor:
                        new_cursor[machine.arn] = cursor[machine.arn]
                    continue
                failed, succeeded, newest = core.scan(executions, since)
                new_cursor[machine.arn] = to_epoch_ms(newest)
                new_failures, new_successes = refs(env.name, machine.arn, failed, succeeded)
                failures += new_failures
                successes += new_successes
        request = alert_request(context.instance, failures, successes)
        return end_tick(context, "failed_executions_sensor", [request] if request else [],
                        json.dumps(new_cursor, sort_keys=True), problems,
                        f"no newly failed executions in {len(new_cursor)} state machines")

    @dg.run_failure_sensor(name="platform_ops_run_failure_sensor", default_status=status,
                           description="Reports this code location's own failed runs to Slack.")
    def platform_ops_run_failure_sensor(context: dg.RunFailureSensorContext, slack: PlatformSlackResource):
        run = context.dagster_run
        if run.tags.get("dagster/will_retry") == "true":
            return
        error = context.failure_event.message or ""
        message = core.render_run_failure(run.job_name, run.run_id, error, dagster_run_url(settings, run.run_id))
        post_once(slack, Ledger(context.instance), f"run-failure/{run.run_id}", channel, message,
                  run_id=None, root_run_id=None, payload={"kind": "run_failure", "run_id": run.run_id})

    sensors = [failed_executions_sensor, platform_ops_run_failure_sensor]
    return dg.Definitions(jobs=[alert_failed_executions], sensors=sensors)
