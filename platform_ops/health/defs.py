"""The watcher watched: `platform_ops_health_sensor` reads this code location's sensors, schedules
and runs from the Dagster instance, posts what is newly wrong or right again (exactly once,
through the ledger), and sends the heartbeats CloudWatch alarms on (one PutMetricData a tick).

It posts from the tick itself, not from a run: a code location whose runs fail must still be
able to say so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from dagster._core.scheduler.instigation import InstigatorStatus  # not exported by dagster

from platform_ops.adapters.cloudwatch import put_metric_data
from platform_ops.adapters.ledger import Ledger
from platform_ops.adapters.slack import PlatformSlackResource, SlackError, post_once
from platform_ops.dagster_runs import first_step_error
from platform_ops.health.core import (
    HealthPlan,
    HealthPolicy,
    Instigator,
    Problem,
    Run,
    Tick,
    TickStatus,
    beaten,
    dump_state,
    load_state,
    plan_health,
    problem_message,
    resolved_message,
)
from platform_ops.redaction import redact
from platform_ops.resources import aws_for, aws_resource_key
from platform_ops.sensors import default_status
from platform_ops.settings import Settings
from platform_ops.vocabulary import format_duration

HEALTH_SENSOR = "platform_ops_health_sensor"
HEARTBEAT_NAMESPACE = "PlatformOps/Health"
HEARTBEAT_METRIC = "Heartbeat"
MAX_DATUMS_PER_CALL = 1000  # PutMetricData's limit per request
# The heartbeats deploy/cloudformation alarms on (every sensor beats; these are the ones whose
# silence means nobody is watching): the health sensor's own, then alerts' and the reaper's.
HEARTBEAT_SENSORS = (HEALTH_SENSOR, "failed_executions_sensor", "stuck_jobs_sensor")


@dataclass(frozen=True)
class HealthContext:
    settings: Settings
    instance: Any  # dg.DagsterInstance
    slack: PlatformSlackResource
    cloudwatch: Any  # the home account's CloudWatch client
    now: datetime


def home_environment(settings: Settings) -> str:
    """The account platform-ops runs in: the environment reached without assuming a role."""
    return next((e.name for e in settings.environments.values() if not e.role_arn),
                next(iter(settings.environments)))


def _tick(tick: Any) -> Tick:
    error = tick.error.message if tick.error else None
    return Tick(TickStatus(tick.status.value.lower()), datetime.fromtimestamp(tick.timestamp, tz=UTC),
                redact(error) if error else None)


def read_instigators(instance: Any, repository_def: Any, location: str | None, limit: int) -> list[Instigator]:
    """This code location's sensors and schedules with their latest `limit` ticks. A sensor that
    never ticked has no state yet: it is listed without ticks (nothing to judge)."""
    kinds = {s.name: "sensor" for s in repository_def.sensor_defs}
    kinds.update({s.name: "schedule" for s in repository_def.schedule_defs})
    states = {s.instigator_name: s for s in instance.all_instigator_state()
              if s.instigator_name in kinds and (location is None or s.repository_selector.location_name == location)}
    found = []
    for name, kind in sorted(kinds.items()):
        state = states.get(name)
        if state is None:
            found.append(Instigator(name, kind, False))
            continue
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=limit)
        found.append(Instigator(name, kind, state.status == InstigatorStatus.STOPPED,
                                tuple(_tick(t) for t in ticks)))
    return found


def read_runs(instance: Any, jobs: list[str], limit: int) -> dict[str, list[Run]]:
    """Each job's latest `limit` finished runs, most recent first; a failure carries its error."""
    statuses = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]
    found: dict[str, list[Run]] = {}
    for job in jobs:
        records = instance.get_run_records(filters=dg.RunsFilter(job_name=job, statuses=statuses), limit=limit)
        found[job] = [Run(r.dagster_run.run_id, job, r.dagster_run.status == dg.DagsterRunStatus.SUCCESS,
                          r.end_time and datetime.fromtimestamp(r.end_time, tz=UTC) or r.update_timestamp,
                          None if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS
                          else first_step_error(instance, r.dagster_run.run_id))
                      for r in records]
    return found


def send_heartbeats(cloudwatch: Any, names: tuple[str, ...], now: datetime) -> int:
    datums = [{"MetricName": HEARTBEAT_METRIC, "Dimensions": [{"Name": "Sensor", "Value": name}],
               "Timestamp": now, "Value": 1.0, "Unit": "Count"} for name in names]
    batches = [datums[i:i + MAX_DATUMS_PER_CALL] for i in range(0, len(datums), MAX_DATUMS_PER_CALL)]
    return put_metric_data(cloudwatch, HEARTBEAT_NAMESPACE, batches)


def _episode_key(problem: Problem) -> str:
    """One announcement and one resolution per episode: the key carries when it began."""
    return f"{problem.key}@{int(problem.since.timestamp())}"


def announce(ctx: HealthContext, plan: HealthPlan, opened: dict[str, Problem]) -> tuple[set[str], list[str]]:
    """Posts each new problem and each resolution. Returns the keys that could not be said and
    why: the cursor keeps those as they were, so the next tick says them."""
    ledger, channel = Ledger(ctx.instance, namespace="health"), ctx.settings.slack.channel
    link = f"{ctx.settings.dagster_url}/automation"
    said = [(p.key, _episode_key(p), problem_message(p, link)) for p in plan.announce]
    said += [(key, _episode_key(opened[key]) + ":resolved",
              resolved_message(opened[key], format_duration(ctx.now - opened[key].since))) for key in plan.resolve]
    unsaid, errors = set(), []
    for key, ledger_key, message in said:
        try:
            post_once(ctx.slack, ledger, ledger_key, channel, message, run_id=None, root_run_id=None)
        except SlackError as exc:
            unsaid.add(key)
            errors.append(f"{key}: {exc}")
    return unsaid, errors


def health_tick(ctx: HealthContext, instigators: list[Instigator], runs: dict[str, list[Run]],
                cursor: str | None) -> tuple[str, HealthPlan, list[str]]:
    """Plan, post, beat; the new cursor records only what was said and sent."""
    opened, beats = load_state(json.loads(cursor) if cursor else None)
    h = ctx.settings.health
    policy = HealthPolicy(ctx.settings.sensors_running, h.failed_ticks, h.failed_runs)
    plan = plan_health(instigators, runs, opened, beats, policy, ctx.now)
    unsaid, problems = announce(ctx, plan, opened)
    open_after = {k: p for k, p in plan.open_after.items() if k not in unsaid}
    open_after.update({k: opened[k] for k in unsaid if k in opened})
    try:
        send_heartbeats(ctx.cloudwatch, plan.heartbeats, ctx.now)
        beats = beaten(instigators, plan.heartbeats, beats)
    except Exception as exc:  # a heartbeat that did not go out is an alarm: say why in the tick
        problems.append(f"heartbeats to {HEARTBEAT_NAMESPACE}: {exc}")
    return json.dumps(dump_state(open_after, beats), sort_keys=True), plan, problems


def health_defs(settings: Settings) -> dg.Definitions:
    home = home_environment(settings)
    status = default_status(settings)

    @dg.sensor(name=HEALTH_SENSOR, minimum_interval_seconds=settings.health.interval_seconds,
               default_status=status, required_resource_keys={"slack", aws_resource_key(home)},
               description="Posts when a platform-ops sensor keeps failing, is stopped, or its runs keep "
                           "failing; sends the heartbeats the CloudWatch alarms watch.")
    def platform_ops_health_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return run_health_sensor(context, settings, home)

    return dg.Definitions(sensors=[platform_ops_health_sensor])


def run_health_sensor(context: dg.SensorEvaluationContext, settings: Settings, home: str) -> dg.SensorResult:
    instance, repo = context.instance, context.repository_def
    origin = context.code_location_origin
    h = settings.health
    instigators = read_instigators(instance, repo, origin.location_name if origin else None,
                                   max(h.failed_ticks, 1) + 1)
    jobs = sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__"))
    runs = read_runs(instance, jobs, h.failed_runs)
    ctx = HealthContext(settings, instance, context.resources.slack, aws_for(context, home).client("cloudwatch"),
                        datetime.now(UTC))
    cursor, plan, problems = health_tick(ctx, instigators, runs, context.cursor)
    for problem in problems:
        context.log.error(problem)
    if problems and not (plan.announce or plan.resolve or plan.heartbeats):
        raise RuntimeError(f"{HEALTH_SENSOR}: " + "; ".join(problems))
    said = len(plan.announce) + len(plan.resolve)
    return dg.SensorResult(cursor=cursor,
                           skip_reason=None if said else f"healthy: {len(plan.heartbeats)} heartbeats sent")
