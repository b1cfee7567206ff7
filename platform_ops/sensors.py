"""How every polling sensor of platform-ops ends its tick (one helper for every capability)."""

from __future__ import annotations

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
