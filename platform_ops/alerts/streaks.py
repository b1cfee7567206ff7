"""Failure streaks: a state machine that keeps failing is ONE incident in Slack, not a message per
failed run (Alertmanager's grouping and `update_message`, PagerDuty's dedup key).

The first failure opens the streak with a top-level message. Each further failure while it is
open is a reply in that message's thread (no channel ping), and the top-level message is updated
in place to say how long and how often it has been failing. Every `repeat_interval` while it keeps
failing, the reply is also broadcast to the channel (a reminder). The first success after it
replies in the thread and updates the top-level message to resolved.

Pure: the streak is a plain record the ledger stores (`open/<state machine>`); applying the same
failure twice changes nothing, so a retried run cannot count a failure twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from platform_ops.messages import MAX_BLOCKS, SlackMessage, escape
from platform_ops.vocabulary import format_duration, from_epoch_ms


@dataclass(frozen=True)
class Streak:
    """An open incident: where its message is, what it said first, and how far it has come.
    `thread_ts` is where replies go (the message's own ts, or the digest's when it opened inside a
    storm); `message_ts` is the message updated in place."""

    thread_ts: str
    message_ts: str
    first_execution: str
    first_stopped_ms: int
    last_execution: str
    last_stopped_ms: int
    failures: int = 1
    broadcast_ms: int = 0  # when the channel was last told: the opening post, then each reminder
    text: str = ""  # the opening message, kept under the summary when it is updated
    blocks: tuple[dict, ...] = ()
    updated: int = 1  # the failure count the message says (it is updated until it says `failures`)

    @classmethod
    def opened(cls, thread_ts: str, message_ts: str, execution: str, stopped_ms: int,
               message: SlackMessage) -> Streak:
        return cls(thread_ts, message_ts, execution, stopped_ms, execution, stopped_ms, 1, stopped_ms,
                   message.text, tuple(message.blocks))

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> Streak | None:
        """The ledger's open failure as a streak; a record from before streaks (thread_ts and
        stopped_ms only) is a streak of one whose message cannot be updated."""
        if not record or not record.get("thread_ts"):
            return None
        if "message_ts" not in record:
            stopped = int(record.get("stopped_ms", 0))
            name = record.get("execution", "")
            return cls(record["thread_ts"], "", name, stopped, name, stopped, 1, stopped)
        fields = {k: record[k] for k in cls.__dataclass_fields__ if k in record}
        fields["blocks"] = tuple(fields.get("blocks", ()))
        return cls(**fields)

    def record(self) -> dict[str, Any]:
        """What the ledger stores; `stopped_ms` and `execution` as recoveries and older code read them."""
        return {**asdict(self), "blocks": list(self.blocks), "stopped_ms": self.last_stopped_ms,
                "execution": self.last_execution}

    def is_newer(self, stopped_ms: int, execution: str) -> bool:
        return (stopped_ms, execution) > (self.last_stopped_ms, self.last_execution)

    def with_failure(self, execution: str, stopped_ms: int) -> Streak:
        """One more failed run; the same run again (a retry) or an older one changes nothing."""
        if not self.is_newer(stopped_ms, execution) or execution == self.first_execution:
            return self
        return replace(self, last_execution=execution, last_stopped_ms=stopped_ms, failures=self.failures + 1)

    @property
    def needs_update(self) -> bool:
        """The top-level message lags behind the streak (a failure was added, or an update failed)."""
        return bool(self.message_ts) and self.updated < self.failures

    def reminder_due(self, now_ms: int, repeat_interval: timedelta) -> bool:
        return now_ms - self.broadcast_ms >= repeat_interval.total_seconds() * 1000

    def reminded(self, now_ms: int) -> Streak:
        return replace(self, broadcast_ms=now_ms)


def _at(ms: int) -> str:
    return f"{from_epoch_ms(ms):%H:%M UTC}"


def _since(ms: int, now_ms: int) -> str:
    """'since 09:00 UTC', with the day when it began before today."""
    start, now = from_epoch_ms(ms), from_epoch_ms(now_ms)
    return f"since {start:%H:%M UTC}" if start.date() == now.date() else f"since {start:%b %d %H:%M UTC}"


def _runs(n: int) -> str:
    return f"{n} failed run{'s' if n != 1 else ''}"


def summary_line(streak: Streak, now_ms: int) -> str:
    """'Failing since 09:00 UTC · 3 failed runs · last: sfn-abc at 11:00 UTC (details in the thread)'."""
    return (f":rotating_light: *Failing {_since(streak.first_stopped_ms, now_ms)}* · {_runs(streak.failures)}"
            f" · last: `{escape(streak.last_execution)}` at {_at(streak.last_stopped_ms)} (each run in the thread)")


def resolved_line(streak: Streak, recovered_by: str, recovered_ms: int) -> str:
    duration = format_duration(timedelta(milliseconds=recovered_ms - streak.first_stopped_ms))
    return (f":white_check_mark: *Resolved* at {_at(recovered_ms)} by `{escape(recovered_by)}`, after"
            f" {_runs(streak.failures)} over {duration} (failing {_since(streak.first_stopped_ms, recovered_ms)})")


def _with_summary(streak: Streak, line: str, text: str) -> SlackMessage:
    """The opening message under a one-line summary: what it first said stays readable."""
    head = {"type": "section", "text": {"type": "mrkdwn", "text": line}}
    return SlackMessage(text=text, blocks=(head, *streak.blocks[:MAX_BLOCKS - 1]))


def render_update(streak: Streak, now_ms: int) -> SlackMessage:
    """The top-level message while the streak is open (chat.update)."""
    text = f"Failing {_since(streak.first_stopped_ms, now_ms)}, {_runs(streak.failures)}: {streak.text}"
    return _with_summary(streak, summary_line(streak, now_ms), text)


def render_resolved(streak: Streak, recovered_by: str, recovered_ms: int) -> SlackMessage:
    """The top-level message once a success ended the streak (chat.update)."""
    text = f"Resolved after {_runs(streak.failures)}: {streak.text}"
    return _with_summary(streak, resolved_line(streak, recovered_by, recovered_ms), text)


def render_reminder_prefix(streak: Streak, now_ms: int) -> str:
    """Put before a reply that is broadcast to the channel as a reminder."""
    return (f":repeat: Still failing {_since(streak.first_stopped_ms, now_ms)}: {_runs(streak.failures)}."
            f" Latest run below.")


def as_reminder(message: SlackMessage, streak: Streak, now_ms: int) -> SlackMessage:
    prefix = render_reminder_prefix(streak, now_ms)
    head = {"type": "section", "text": {"type": "mrkdwn", "text": prefix}}
    return SlackMessage(text=f"{prefix} {message.text}", blocks=(head, *message.blocks[:MAX_BLOCKS - 1]))


def now_ms_of(now: datetime) -> int:
    return int(now.timestamp() * 1000)
