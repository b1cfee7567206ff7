"""How every polling sensor of platform-ops ends its tick (one helper for every capability)."""

from __future__ import annotations

from typing import Any

import dagster as dg


def end_tick(context: dg.SensorEvaluationContext, sensor: str, requests: list[dg.RunRequest], cursor: str,
             problems: list[str], skip_reason: str) -> dg.SensorResult:
    """What could not be read is logged; what was found is requested with the new cursor, even when
    part of the tick could not read; a tick that found nothing and could not read fails (the UI
    shows it), else it skips with `skip_reason`."""
    for problem in problems:
        context.log.error(problem)
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=cursor)
    if problems:
        raise RuntimeError(f"{sensor} could not read: " + "; ".join(problems))
    return dg.SensorResult(skip_reason=skip_reason, cursor=cursor)


RUN_KEY_TAG = "dagster/run_key"  # the tag Dagster gives a run of a request with a run key


def not_yet_requested(instance: dg.DagsterInstance, requests: list[dg.RunRequest | None]) -> list[dg.RunRequest]:
    """The requests whose run key no run has yet, whichever sensor asked for it: Dagster skips a
    key only per sensor, so two sensors seeing one situation (events and polling) would make two
    runs. One cheap query per keyed request (a tag lookup, limit 1); a request without a key
    passes, None (nothing to request) drops out. Two sensors ticking at the very same moment can
    still both ask: the reap run re-checks every job, so the second finds nothing to cancel."""
    return [r for r in requests if r is not None and (
        not r.run_key or not instance.get_run_records(dg.RunsFilter(tags={RUN_KEY_TAG: r.run_key}), limit=1))]


def default_status(settings: Any) -> dg.DefaultSensorStatus:
    """Every sensor of platform-ops runs by default iff the settings say so (dagster.sensors_running)."""
    return dg.DefaultSensorStatus.RUNNING if settings.sensors_running else dg.DefaultSensorStatus.STOPPED
