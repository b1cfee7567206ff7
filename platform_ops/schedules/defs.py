"""Missed schedules wiring: `missed_schedules_sensor` reads, per environment, the watched state
machines, their Metaflow schedule rules and (only where a fire time came due) their last start,
asks schedules/core.py what to say, and says it in Slack exactly once through the ledger.

It posts from the tick itself, as the health sensor does: one small message per outage needs no
run. What Slack refused stays unsaid (no open miss recorded, no miss closed) and the next tick
plans it again under the same ledger key, so it goes out once. Cost per check: ListStateMachines
and ListRules pages, ListTargetsByRule only for rules not seen before, ListExecutions
(maxResults=1) only where due_lookups says a start must be asked for, DescribeStateMachine (for the
owner) only for a miss being announced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from platform_ops.adapters import eventbridge, stepfunctions
from platform_ops.adapters.aws import AwsEnvironmentResource, AwsError
from platform_ops.adapters.ledger import Ledger
from platform_ops.adapters.slack import Pacer, PlatformSlackResource, SlackError, post_once
from platform_ops.messages import SlackMessage
from platform_ops.redaction import redact
from platform_ops.resources import aws_for, aws_resource_key
from platform_ops.schedules import core
from platform_ops.schedules.messages import Where, miss_message, recovery_message
from platform_ops.sensors import default_status, end_tick
from platform_ops.settings import EnvironmentSettings, Settings
from platform_ops.vocabulary import owner_from_definition, to_epoch_ms

SENSOR = "missed_schedules_sensor"
LEDGER_NAMESPACE = "schedules"
KIND = "missed_schedule"  # the Slack metadata's event_payload kind of every message this sensor posts


@dataclass(frozen=True)
class Check:
    """One tick: the settings, the ledger, Slack, AWS by environment name, the time, the log, and
    the pace of posts (alerts.post_interval_seconds: an outage of many schedules stays under
    Slack's per-channel limit)."""

    settings: Settings
    ledger: Ledger
    slack: PlatformSlackResource
    aws: Callable[[str], AwsEnvironmentResource]
    now: datetime
    log: Any
    pacer: Pacer

    @property
    def grace(self) -> timedelta:
        return timedelta(minutes=self.settings.schedules.grace_minutes)


@dataclass
class Reading:
    """What one environment's check read: its schedules, their last starts, the open misses."""

    schedules: list[core.ScheduledStateMachine]
    last_starts: dict[str, datetime | None]
    open_misses: dict[str, core.MissRecord]
    unread: set[str] = field(default_factory=set)  # lookups that failed: not planned this check


def open_misses(ledger: Ledger, arns: set[str]) -> dict[str, core.MissRecord]:
    """The announced misses not yet recovered: in the ledger, so a lost cursor never says one twice."""
    return {arn: core.MissRecord(arn, datetime.fromisoformat(r["expected_at"]),
                                 datetime.fromisoformat(r["announced_at"]))
            for arn, r in ledger.open_failures(arns).items() if r.get("expected_at")}


def read_environment(check: Check, env: EnvironmentSettings, cursor: core.EnvironmentCursor,
                     problems: list[str]) -> tuple[Reading, core.EnvironmentCursor]:
    """The schedules and the starts the plan needs, asking ListExecutions only where it is due.
    AwsError from the listings spoils the environment; a failed lookup spoils its state machine."""
    aws = check.aws(env.name)
    sfn = aws.client("stepfunctions")
    machines = {m.arn: m.created_at for m in stepfunctions.list_state_machines(sfn, env.state_machine_prefixes)
                if m.created_at is not None}
    schedules = eventbridge.scheduled_state_machines(aws.client("events"), machines, env.state_machine_prefixes,
                                                     cursor.known_targets)
    scheduled = {s.state_machine_arn for s in schedules}
    cursor = cursor.bounded({eventbridge.rule_name(a.rsplit(":", 1)[-1]) for a in machines}, scheduled)
    reading = Reading(schedules, {}, open_misses(check.ledger, scheduled | cursor.open))
    for arn in sorted(core.due_lookups(schedules, cursor.last_starts, reading.open_misses, check.now, check.grace)):
        try:
            cursor.last_starts[arn] = stepfunctions.last_start(sfn, arn)
        except AwsError as exc:
            problems.append(f"{env.name}/{arn.rsplit(':', 1)[-1]}: {exc}")
            reading.unread.add(arn)
    reading.last_starts = {arn: cursor.last_starts.get(arn) for arn in scheduled - reading.unread}
    return reading, cursor


def plan(check: Check, reading: Reading) -> list[core.Action]:
    """The core's plan over what could be read (an unread state machine is neither judged nor forgotten)."""
    schedules = [s for s in reading.schedules if s.state_machine_arn not in reading.unread]
    opened = {a: m for a, m in reading.open_misses.items() if a not in reading.unread}
    return core.plan_schedule_checks(schedules, reading.last_starts, opened, check.now, check.grace)


def say(check: Check, key: str, message: SlackMessage, arn: str, problems: list[str]) -> bool:
    """One post, exactly once; False (and a problem) when Slack refused it: it stays unsaid."""
    try:
        with check.pacer:
            post_once(check.slack, check.ledger, key, check.settings.slack.channel, message, run_id=None,
                      root_run_id=None, payload={"kind": KIND, "state_machine_arn": arn})
        return True
    except SlackError as exc:
        problems.append(f"{arn.rsplit(':', 1)[-1]}: Slack: {exc}")
        return False


def owner_of(check: Check, env: EnvironmentSettings, arn: str) -> str | None:
    """`metaflow.owner` from the definition (one DescribeStateMachine, only for a miss being said);
    a failed read costs the mention, never the message."""
    try:
        described = stepfunctions.describe_state_machine(check.aws(env.name).client("stepfunctions"), arn)
    except AwsError as exc:
        check.log.warning(f"{env.name}: owner of {arn}: {exc}")
        return None
    owner = owner_from_definition((described or {}).get("definition"))
    return redact(owner) if owner else None


def act(check: Check, env: EnvironmentSettings, reading: Reading, actions: list[core.Action],
        cursor: core.EnvironmentCursor, problems: list[str]) -> int:
    """Says each miss and recovery, drops forgotten misses, logs unreadable rules; what was said is
    recorded in the ledger (open misses) and the cursor. Returns how many messages went out."""
    where, said, held = Where(env.name, check.settings.slack.owners), 0, set()
    expressions = {s.state_machine_arn: s.expression for s in reading.schedules}
    for action in actions:
        arn = action.state_machine_arn
        if isinstance(action, core.UnreadableSchedule):
            check.log.warning(redact(f"{env.name}: rule {action.rule_name} of {arn}: {action.error}: not checked"))
        elif isinstance(action, core.ForgetMiss):
            check.ledger.close_failure(arn)
            cursor.open.discard(arn)
        elif isinstance(action, core.AnnounceRecovery):
            key = f"recovery/{arn}@{to_epoch_ms(action.expected_at)}"
            if say(check, key, recovery_message(action, where), arn, problems):
                check.ledger.close_failure(arn)
                cursor.open.discard(arn)
                said += 1
            else:
                held.add(arn)  # the miss stays open: no new miss before its recovery is said
        elif isinstance(action, core.AnnounceMiss) and arn not in held:
            message = miss_message(action, expressions[arn], owner_of(check, env, arn), where, check.now)
            if say(check, f"miss/{arn}@{to_epoch_ms(action.expected_at)}", message, arn, problems):
                check.ledger.open_failure(arn, expected_at=action.expected_at.isoformat(),
                                          announced_at=check.now.isoformat())
                cursor.open.add(arn)
                said += 1
    return said


def check_environment(check: Check, env: EnvironmentSettings, cursor: core.EnvironmentCursor,
                      problems: list[str]) -> tuple[core.EnvironmentCursor, int, int]:
    """(the cursor after, schedules checked, messages said); an AWS failure is a problem, and the
    environment's cursor is kept as it was."""
    try:
        reading, cursor = read_environment(check, env, cursor, problems)
    except AwsError as exc:
        problems.append(f"{env.name}: {exc}")
        return cursor, 0, 0
    said = act(check, env, reading, plan(check, reading), cursor, problems)
    return cursor, len(reading.schedules), said


def schedules_tick(context: dg.SensorEvaluationContext, settings: Settings,
                   now: datetime | None = None) -> dg.SensorResult:
    """Every environment checked (one failing does not stop the others), the cursor carried. `now`
    is the check's clock (a test's; the sensor's is the wall clock)."""
    check = Check(settings, Ledger(context.instance, namespace=LEDGER_NAMESPACE), context.resources.slack,
                  lambda name: aws_for(context, name), now or datetime.now(UTC), context.log,
                  Pacer(settings.alerts.post_interval_seconds))
    cursors, problems, checked, said = core.load_cursor(context.cursor), [], 0, 0
    for env in settings.environments.values():
        cursors[env.name], n, s = check_environment(check, env, cursors.get(env.name, core.EnvironmentCursor()),
                                                    problems)
        checked, said = checked + n, said + s
    cursors = {name: c for name, c in cursors.items() if name in settings.environments}
    return end_tick(context, SENSOR, [], core.dump_cursor(cursors), problems,
                    f"{checked} scheduled state machines checked, {said} messages")


def schedules_defs(settings: Settings) -> dg.Definitions:
    status = default_status(settings)
    keys = {"slack", *(aws_resource_key(name) for name in settings.environments)}

    @dg.sensor(name=SENSOR, minimum_interval_seconds=settings.schedules.interval_minutes * 60,
               default_status=status, required_resource_keys=keys,
               description="Posts when a watched state machine's EventBridge schedule rule fired and no "
                           "execution started within schedules.grace_minutes, and when it starts again.")
    def missed_schedules_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return schedules_tick(context, settings)

    return dg.Definitions(sensors=[missed_schedules_sensor])
