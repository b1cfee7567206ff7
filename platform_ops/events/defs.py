"""Events wiring: `aws_events_sensor` drains each event-driven environment's SQS queue and hands
Step Functions status changes to alerting and Batch job state changes to the reaper.

Messages are deleted on the tick after the one that read them, once that tick's run requests
are stored; a crash in between only means they come back and are deduplicated (run keys, the
alert ledger, the reaper's RUNNABLE watch). Events are best-effort, so the polling sensors stay
and reconcile every reconcile interval.
"""

import json
from datetime import datetime, timezone

import dagster as dg

from platform_ops.adapters import sqs
from platform_ops.adapters.aws import AwsError
from platform_ops.alerts import core as alerts_core
from platform_ops.alerts.defs import ExecutionRef, alert_request, refs
from platform_ops.reaper.defs import requests_from_job_events
from platform_ops.resources import aws_for, aws_resource_key
from platform_ops.sensors import end_tick
from platform_ops.settings import Settings

MAX_EVENTS_PER_TICK = 500  # the rest waits for the next tick (10 s): a tick stays short
EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def events_defs(settings: Settings, alert_job: dg.JobDefinition, reap_job: dg.JobDefinition) -> dg.Definitions:
    event_envs = [env for env in settings.environments.values() if env.event_driven]
    if not event_envs:
        return dg.Definitions()

    @dg.sensor(name="aws_events_sensor", jobs=[alert_job, reap_job],
               minimum_interval_seconds=settings.alerts.events_interval_seconds,
               default_status=dg.DefaultSensorStatus.RUNNING if settings.sensors_running
               else dg.DefaultSensorStatus.STOPPED,
               required_resource_keys={aws_resource_key(env.name) for env in event_envs},
               description="Drains each event-driven environment's SQS queue (10 at a time, no waiting): Step "
                           "Functions status changes request an alert run, Batch job state changes keep the "
                           "reaper's RUNNABLE watch and request reap runs; deletes messages on the next tick.")
    def aws_events_sensor(context: dg.SensorEvaluationContext):
        state = json.loads(context.cursor) if context.cursor else {}
        pending: dict[str, list[str]] = state.get("pending", {})
        urls: dict[str, str] = state.get("urls", {})
        new_pending: dict[str, list[str]] = {}
        failures: list[ExecutionRef] = []
        successes: list[ExecutionRef] = []
        reaps: list[dg.RunRequest] = []
        problems: list[str] = []
        received = 0
        now = datetime.now(timezone.utc)
        for env in event_envs:
            client = aws_for(context, env.name).client("sqs")
            try:
                url = urls.get(env.name) or sqs.queue_url(client, env.events_queue)
                urls[env.name] = url
                # the previous tick returned its run requests: its messages are handled
                sqs.delete(client, url, pending.get(env.name, []))
                messages = sqs.receive(client, url, MAX_EVENTS_PER_TICK)
            except AwsError as exc:
                problems.append(f"{env.name}: {exc}")
                new_pending[env.name] = pending.get(env.name, [])
                continue
            new_pending[env.name] = [m.receipt for m in messages]
            received += len(messages)
            bodies = [m.body for m in messages]
            executions, _ = alerts_core.executions_from_events(bodies)
            reaps += requests_from_job_events(settings, context.instance, env, bodies, now)
            by_machine: dict[str, list] = {}
            for ex in executions:
                if ex.state_machine_name.startswith(tuple(env.state_machine_prefixes)):
                    by_machine.setdefault(ex.state_machine_arn, []).append(ex)
            for machine_arn, found in by_machine.items():
                failed, succeeded, _ = alerts_core.scan(found, EPOCH)
                new_failures, new_successes = refs(env.name, machine_arn, failed, succeeded)
                failures += new_failures
                successes += new_successes
        alert = alert_request(context.instance, failures, successes)
        return end_tick(context, "aws_events_sensor", ([alert] if alert else []) + reaps,
                        json.dumps({"pending": new_pending, "urls": urls}, sort_keys=True), problems,
                        f"{received} events, nothing new to alert or reap")

    return dg.Definitions(sensors=[aws_events_sensor])
