"""The words several capabilities share, so that no capability's core imports another's (pure,
stdlib only): the reaper's cancel-reason prefix (alerting and metrics recognise reaped jobs by
it), how a duration reads, epoch milliseconds (AWS timestamps, cursors, the ledger), and the
digest that keys a run by the set of ids it is about.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from enum import StrEnum

REASON_PREFIX = "platform-ops reaper:"  # how every statusReason the reaper writes begins
ANNOUNCED_TAG = "platform_ops/announced"  # a run whose outcome it posted itself (a promotion attempt)


def format_duration(delta: timedelta) -> str:
    """2h14m, 45m, 3d2h: the resolution an operator reads at a glance."""
    minutes = max(0, int(delta.total_seconds() // 60))
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m"


def to_epoch_ms(dt: datetime) -> int:
    """Milliseconds since the epoch, as AWS, the sensors' cursors and the ledger keep time."""
    return int(dt.timestamp() * 1000)


def from_epoch_ms(ms: int | float | str) -> datetime:
    """The UTC datetime of milliseconds since the epoch (an AWS timestamp, a stored cursor)."""
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


def ids_digest(ids: Iterable[str]) -> str:
    """20 hex characters naming a collection of ids whatever its order (a run key, a ledger key)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:20]


class AfterReadError(StrEnum):
    """Where a sweep over environments and their queues goes on after a read failed."""

    NEXT_QUEUE = "next queue"  # the request was wrong for this queue only (it does not exist, say)
    NEXT_ENVIRONMENT = "next environment"  # the account or its endpoint failed: its other queues would too
    RETRY_STEP = "retry the step"  # throttled past the client's attempts: no fact about the queue, a step retries


def after_read_error(request_scoped: bool) -> AfterReadError:
    """A request-scoped error spoils one queue; any other spoils the environment's remaining reads."""
    return AfterReadError.NEXT_QUEUE if request_scoped else AfterReadError.NEXT_ENVIRONMENT


# ---- which reap run cancelled a job: alerting threads a reaped job's failure under that run's report ----

_REAP_RUN = re.compile(r" \(reap ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\)$")


def reap_reason_suffix(root_run_id: str) -> str:
    """What the reaper appends to its cancel reason: the reap run's root run id (a Dagster run id,
    shared by the run's retries and re-executions, which share its report)."""
    return f" (reap {root_run_id})"


def reap_run_of(status_reason: str | None) -> str | None:
    """The root run id of the reap run that cancelled a job, from its statusReason; None for any
    other text. Only a reason the reaper wrote counts (it begins with REASON_PREFIX and ends with
    the suffix, a Dagster run id's shape): staging code can write any statusReason it likes."""
    if not isinstance(status_reason, str) or not status_reason.startswith(REASON_PREFIX):
        return None
    match = _REAP_RUN.search(status_reason)
    return match.group(1) if match else None


OWNER_KEY = "metaflow.owner"  # Metaflow writes it into every task's job Parameters and Batch Tags


def owner_from_definition(definition: str | None) -> str | None:
    """`metaflow.owner` from a Metaflow state machine definition: the first task state (in any
    nesting: Map iterators, Parallel branches) whose job Parameters or Tags carry it."""
    try:
        data = json.loads(definition or "")
    except ValueError:
        return None
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            params = node.get("Parameters")
            if isinstance(params, dict):
                for where in (params.get("Parameters"), params.get("Tags")):
                    if isinstance(where, dict) and isinstance(where.get(OWNER_KEY), str) and where[OWNER_KEY]:
                        return where[OWNER_KEY]
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return None
