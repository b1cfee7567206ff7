"""CloudWatch Logs: the tail of a Batch task's log stream."""

from __future__ import annotations

from typing import Any

from platform_ops.adapters.aws import AwsError, aws_errors
from platform_ops.redaction import redact

BATCH_LOG_GROUP = "/aws/batch/job"


def tail(client: Any, stream: str, lines: int, group: str = BATCH_LOG_GROUP) -> list[str] | None:
    """The last `lines` messages of a stream (one call), redacted (a task prints what it likes), or
    None when they cannot be read: missing logs must never block an alert."""
    if not stream or lines <= 0:
        return None
    try:
        with aws_errors():
            page = client.get_log_events(logGroupName=group, logStreamName=stream, limit=lines, startFromHead=False)
    except AwsError:
        return None
    return [redact(e.get("message", "").rstrip("\n")) for e in page.get("events", [])]
