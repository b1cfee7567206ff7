"""Runs that take too long, wired: `long_runs_sensor` reads, per environment, what is RUNNING
(Batch jobs per watched queue, executions per watched state machine), compares it with the p95 of
the succeeded runs (runtime/core.py), and warns in Slack once per long run, through the ledger.

It posts from the tick itself, as the health and schedules sensors do: one small message per long
run needs no Dagster run. The finished history is listed only every
`runtime.history_refresh_minutes` and kept between ticks as one p95 and count per key, in the
Dagster instance (`platform_ops/runtime/history/<environment>`), so a failed tick or a lost cursor
does not make the next tick list it again. The cursor holds the warned runs still running.

Cost per tick and environment: ListStateMachines (1000 a page), ListJobs RUNNING per queue and
ListExecutions RUNNING per state machine (one page each while fewer than 1000 run); DescribeJobs
(100 ids a call) and DescribeStateMachine (per state machine) only for the runs being warned. Once
per refresh: ListJobs SUCCEEDED per queue (all pages) and ListExecutions SUCCEEDED per state
machine (pages back to the window's start).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from platform_ops.adapters import batch, stepfunctions
from platform_ops.adapters.aws import AwsEnvironmentResource, AwsError
from platform_ops.adapters.ledger import Ledger
from platform_ops.adapters.slack import PlatformSlackResource, SlackError, post_once
from platform_ops.observations import Execution, StateMachine
from platform_ops.redaction import redact
from platform_ops.resources import aws_for, aws_resource_key
from platform_ops.runtime import core
from platform_ops.sensors import default_status, end_tick
from platform_ops.settings import EnvironmentSettings, Settings
from platform_ops.vocabulary import OWNER_KEY, owner_from_definition

SENSOR = "long_runs_sensor"
LEDGER_NAMESPACE = "runtime"
KIND = "long_run"  # the Slack metadata's event_payload kind of every message this sensor posts


@dataclass(frozen=True)
class Check:
    """One tick: the settings, the ledger, Slack, AWS by environment name, the time, the log."""

    settings: Settings
    ledger: Ledger
    slack: PlatformSlackResource
    aws: Callable[[str], AwsEnvironmentResource]
    now: datetime
    log: Any

    @property
    def policy(self) -> core.Policy:
        r = self.settings.runtime
        return core.Policy(r.factor, r.min_minutes, r.min_history)

    @property
    def since(self) -> datetime:
        return self.now - timedelta(hours=self.settings.metrics.window_hours)


@dataclass
class Outcome:
    """What one environment's check found and did."""

    warned: set[str]
    running: int = 0
    said: int = 0
    thin: tuple[str, ...] = ()


def history(check: Check, env: EnvironmentSettings, machines: list[StateMachine]) -> dict[str, core.Usual]:
    """The stored p95s, or, when they are due, the succeeded runs in the window listed again."""
    key = f"history/{env.name}"
    refreshed, usual = core.load_history(check.ledger.get(key))
    if not core.history_due(refreshed, check.now, timedelta(minutes=check.settings.runtime.history_refresh_minutes)):
        return usual
    aws = check.aws(env.name)
    client, sfn = aws.client("batch"), aws.client("stepfunctions")
    jobs = [j for queue in env.job_queues for j in batch.iter_jobs(client, queue, "SUCCEEDED")]
    executions = [e for m in machines
                  for e in stepfunctions.executions_in_status(sfn, m.arn, "SUCCEEDED", check.since)]
    usual = core.merged_history(core.job_history(jobs, check.since), core.execution_history(executions, check.since))
    check.ledger.put(key, **core.dump_history(check.now, usual))
    return usual


def read_running(check: Check, env: EnvironmentSettings, machines: list[StateMachine]
                 ) -> tuple[list[core.Running], dict[str, Execution]]:
    """What runs now: RUNNING jobs of every queue, RUNNING executions of every state machine."""
    aws = check.aws(env.name)
    client, sfn = aws.client("batch"), aws.client("stepfunctions")
    jobs = core.running_jobs(j for queue in env.job_queues for j in batch.iter_jobs(client, queue, "RUNNING"))
    executions = {e.arn: e for m in machines for e in stepfunctions.executions_in_status(sfn, m.arn, "RUNNING")}
    return jobs + core.running_executions(executions.values()), executions


def _owner(owner: str | None) -> str | None:
    return redact(owner) if owner else None


def where_of(check: Check, env: EnvironmentSettings, warn: tuple[core.LongRun, ...],
             executions: dict[str, Execution]) -> dict[str, core.Where]:
    """Owner and Metaflow run of each run being warned: DescribeJobs for jobs (tags, parameters),
    the definition for executions. A failed read costs the mention, never the message."""
    base = dict(environment=env.name, region=env.region, metaflow_ui=check.settings.metaflow_ui_url,
                owners=check.settings.slack.owners)
    found = {r.run.id: core.Where(**base) for r in warn}
    aws = check.aws(env.name)
    job_ids = [r.run.id for r in warn if r.run.kind == core.JOB]
    try:
        for job_id, job in (batch.describe_jobs(aws.client("batch"), job_ids) if job_ids else {}).items():
            owner = job.tags.get(OWNER_KEY) or job.parameters.get(OWNER_KEY)
            found[job_id] = core.Where(**base, owner=_owner(owner),
                                       run_id=job.parameters.get(core.RUN_ID_KEY))
    except AwsError as exc:
        check.log.warning(f"{env.name}: owners of {len(job_ids)} jobs: {exc}")
    owners: dict[str, str | None] = {}
    for r in warn:
        if r.run.kind != core.EXECUTION:
            continue
        machine = executions[r.run.id].state_machine_arn
        if machine not in owners:
            try:
                described = stepfunctions.describe_state_machine(aws.client("stepfunctions"), machine)
                owners[machine] = _owner(owner_from_definition((described or {}).get("definition")))
            except AwsError as exc:
                check.log.warning(f"{env.name}: owner of {machine}: {exc}")
                owners[machine] = None
        found[r.run.id] = core.Where(**base, owner=owners[machine])
    return found


def say(check: Check, long: core.LongRun, where: core.Where, problems: list[str]) -> bool:
    """One warning, exactly once; False (and a problem) when Slack refused it: it stays unsaid."""
    try:
        post_once(check.slack, check.ledger, f"long/{long.run.id}", check.settings.slack.channel,
                  core.long_run_message(long, where), run_id=None, root_run_id=None,
                  payload={"kind": KIND, "run": long.run.id})
        return True
    except SlackError as exc:
        problems.append(f"{where.environment} {long.run.name}: Slack: {exc}")
        return False


def check_environment(check: Check, env: EnvironmentSettings, warned: set[str], problems: list[str]) -> Outcome:
    """Read, judge, warn. An AWS failure is a problem and keeps the environment's warned set."""
    try:
        machines = stepfunctions.list_state_machines(check.aws(env.name).client("stepfunctions"),
                                                     env.state_machine_prefixes)
        usual = history(check, env, machines)
        running, executions = read_running(check, env, machines)
        long, thin = core.judge(running, usual, check.policy, check.now)
        plan = core.plan_warnings(long, [r.id for r in running], warned)
        wheres = where_of(check, env, plan.warn, executions)
    except AwsError as exc:
        problems.append(f"{env.name}: {exc}")
        return Outcome(warned)
    said = {r.run.id for r in plan.warn if say(check, r, wheres[r.run.id], problems)}
    return Outcome(set(plan.warned_after) | said, len(running), len(said), tuple(core.thin_summary(thin, env.name)))


def skip_reason(outcomes: list[Outcome]) -> str:
    thin = [t for o in outcomes for t in o.thin]
    reason = f"{sum(o.running for o in outcomes)} running checked, {sum(o.said for o in outcomes)} warned"
    if thin:
        shown = "; ".join(thin[:core.MAX_THIN_SHOWN]) + (f"; {len(thin) - core.MAX_THIN_SHOWN} more"
                                                        if len(thin) > core.MAX_THIN_SHOWN else "")
        reason += f"; not judged, too little history: {shown}"
    return reason


def runtime_tick(context: dg.SensorEvaluationContext, settings: Settings) -> dg.SensorResult:
    """Every environment checked (one failing does not stop the others), the cursor carried."""
    check = Check(settings, Ledger(context.instance, namespace=LEDGER_NAMESPACE), context.resources.slack,
                  lambda name: aws_for(context, name), datetime.now(UTC), context.log)
    warned, problems, outcomes = core.load_cursor(context.cursor), [], []
    for env in settings.environments.values():
        outcome = check_environment(check, env, warned.get(env.name, set()), problems)
        warned[env.name] = outcome.warned
        outcomes.append(outcome)
    reason = skip_reason(outcomes)
    context.log.info(reason)
    cursor = core.dump_cursor({name: ids for name, ids in warned.items() if name in settings.environments})
    return end_tick(context, SENSOR, [], cursor, problems, reason)


def runtime_defs(settings: Settings) -> dg.Definitions:
    status = default_status(settings)
    keys = {"slack", *(aws_resource_key(name) for name in settings.environments)}

    @dg.sensor(name=SENSOR, minimum_interval_seconds=settings.runtime.interval_minutes * 60,
               default_status=status, required_resource_keys=keys,
               description="Warns once in Slack when a Batch job or Step Functions execution has been RUNNING "
                           "much longer than its kind's p95 (runtime.factor x p95, at least runtime.min_minutes).")
    def long_runs_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return runtime_tick(context, settings)

    return dg.Definitions(sensors=[long_runs_sensor])
