"""What the Dagster instance says about this code location's own runs, for the messages that
report them (the run-failure post, the health sensor)."""

from __future__ import annotations

from typing import Any

import dagster as dg

from platform_ops.redaction import redact


def first_step_error(instance: Any, run_id: str) -> str | None:
    """The first failed step's error message (redacted): why a run failed, in its own words, where
    the run's failure event only says which steps failed."""
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE, limit=1).records:
        data = record.event_log_entry.dagster_event.step_failure_data
        if data and data.error:
            return redact(data.error.message)
    return None
