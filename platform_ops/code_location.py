"""Builds the code location's Definitions from settings: every capability merged in one place."""

from __future__ import annotations

import dagster as dg

from platform_ops.alerts.defs import ALERT_JOB, alerts_defs
from platform_ops.events.defs import events_defs
from platform_ops.health.defs import health_defs
from platform_ops.metrics.defs import metrics_defs
from platform_ops.promotion.defs import promotion_defs
from platform_ops.reaper.defs import REAP_JOB, reaper_defs
from platform_ops.resources import build_resources
from platform_ops.runtime.defs import runtime_defs
from platform_ops.schedules.defs import schedules_defs
from platform_ops.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    reaper, alerts = reaper_defs(settings), alerts_defs(settings)
    jobs = {job.name: job for job in [*reaper.jobs, *alerts.jobs]}
    return dg.Definitions.merge(
        reaper,
        alerts,
        events_defs(settings, jobs[ALERT_JOB], jobs[REAP_JOB]),
        metrics_defs(settings),
        promotion_defs(settings),
        health_defs(settings),
        runtime_defs(settings),
        schedules_defs(settings),
        dg.Definitions(resources=build_resources(settings)),
    )
