"""Events wiring: `aws_events_sensor` drains each event-driven environment's SQS queue and hands
Step Functions status changes to alerting, Batch job state changes and "Batch Job Queue Blocked"
events to the reaper (its watch keeps each queue's block; metrics read it from there).

Messages are deleted on the tick after the one that read them, once that tick's run requests
are stored; a crash in between only means they come back and are deduplicated (run keys, the
alert ledger, the reaper's RUNNABLE watch). A run key another sensor's run already has is not
requested again (`sensors.not_yet_requested`: Dagster skips keys per sensor only). Events are
best-effort, so the polling sensors stay and reconcile every reconcile interval.
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg

from platform_ops.adapters import sqs
from platform_ops.adapters.aws import AwsError
from platform_ops.alerts.defs import alert_request, candidates_from_events
from platform_ops.reaper.defs import requests_from_job_events
from platform_ops.resources import aws_for, aws_resource_key
from platform_ops.sensors import default_status, end_tick, not_yet_requested
from platform_ops.settings import EnvironmentSettings, Settings

MAX_EVENTS_PER_TICK = 500  # the rest waits for the next tick (10 s): a tick stays short


@dataclass
class Drain:
    """One tick's reading of the queues: the cursor's state as it goes (receipts to delete next
    tick, queue URLs), what each capability is handed, what could not be read."""

    pending: dict[str, list[str]]
    urls: dict[str, str]
    now: datetime
    new_pending: dict[str, list[str]]
    alerts: list
    reaps: list[dg.RunRequest]
    problems: list[str]
    received: int = 0

    @classmethod
    def start(cls, cursor: str | None) -> "Drain":
        """From the previous tick's cursor, at this tick's time."""
        state = json.loads(cursor) if cursor else {}
        return cls(state.get("pending", {}), state.get("urls", {}), datetime.now(UTC), {}, [], [], [])

    def dumps(self) -> str:
        return json.dumps({"pending": self.new_pending, "urls": self.urls}, sort_keys=True)


def drain_environment(context: dg.SensorEvaluationContext, settings: Settings, env: EnvironmentSettings,
                      drain: Drain) -> None:
    """Delete what the previous tick handled, receive what came since, hand it on: Step Functions
    status changes to alerting, Batch job state changes and queue blocks to the reaper."""
    client = aws_for(context, env.name).client("sqs")
    try:
        url = drain.urls.get(env.name) or sqs.queue_url(client, env.events_queue)
        drain.urls[env.name] = url
        # the previous tick returned its run requests: its messages are handled
        sqs.delete(client, url, drain.pending.get(env.name, []))
        messages = sqs.receive(client, url, MAX_EVENTS_PER_TICK)
    except AwsError as exc:
        drain.problems.append(f"{env.name}: {exc}")
        drain.new_pending[env.name] = drain.pending.get(env.name, [])
        return
    drain.new_pending[env.name] = [m.receipt for m in messages]
    drain.received += len(messages)
    bodies = [m.body for m in messages]
    drain.alerts.append(candidates_from_events(env, bodies))
    drain.reaps += requests_from_job_events(settings, context.instance, env, bodies, drain.now)


def events_tick(context: dg.SensorEvaluationContext, settings: Settings,
                envs: list[EnvironmentSettings]) -> dg.SensorResult:
    """Every event-driven environment drained; one alert run for all of them, the reap runs."""
    drain = Drain.start(context.cursor)
    for env in envs:
        drain_environment(context, settings, env, drain)
    alerts = not_yet_requested(context.instance, [alert_request(context.instance, drain.alerts)])
    return end_tick(context, "aws_events_sensor", alerts + drain.reaps, drain.dumps(),
                    drain.problems, f"{drain.received} events, nothing new to alert or reap")


def events_defs(settings: Settings, alert_job: dg.JobDefinition, reap_job: dg.JobDefinition) -> dg.Definitions:
    event_envs = [env for env in settings.environments.values() if env.event_driven]
    if not event_envs:
        return dg.Definitions()

    @dg.sensor(name="aws_events_sensor", jobs=[alert_job, reap_job],
               minimum_interval_seconds=settings.alerts.events_interval_seconds,
               default_status=default_status(settings),
               required_resource_keys={aws_resource_key(env.name) for env in event_envs},
               description="Drains each event-driven environment's SQS queue (10 at a time, no waiting): Step "
                           "Functions status changes request an alert run, Batch job state changes and queue-blocked "
                           "events keep the reaper's RUNNABLE watch and request reap runs; deletes messages on "
                           "the next tick.")
    def aws_events_sensor(context: dg.SensorEvaluationContext):
        return events_tick(context, settings, event_envs)

    return dg.Definitions(sensors=[aws_events_sensor])
