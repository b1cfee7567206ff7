"""Failure streaks, decided: one incident per state machine that keeps failing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from platform_ops.alerts.streaks import (
    Streak,
    as_reminder,
    now_ms_of,
    render_resolved,
    render_update,
)
from platform_ops.messages import SlackMessage

NINE = now_ms_of(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
HOUR = 3600 * 1000
OPENING = SlackMessage("TrainFlow failed in production (sfn-a): 3 of 50 tasks failed (out of memory).",
                       ({"type": "header", "text": {"type": "plain_text", "text": ":red_circle: TrainFlow failed"}},
                        {"type": "section", "text": {"type": "mrkdwn", "text": "*What failed*\n• `train`: 3 of 50"}}))


def opened() -> Streak:
    return Streak.opened("1700000000.000100", "1700000000.000100", "sfn-a", NINE, OPENING)


def test_each_newer_failure_counts_once_and_a_retry_or_an_older_one_not_at_all():
    streak = opened().with_failure("sfn-b", NINE + HOUR).with_failure("sfn-c", NINE + 2 * HOUR)
    assert (streak.failures, streak.last_execution, streak.first_execution) == (3, "sfn-c", "sfn-a")
    assert streak.with_failure("sfn-c", NINE + 2 * HOUR) == streak  # the same run again (a retried alert run)
    assert streak.with_failure("sfn-b", NINE + HOUR) == streak  # an older run announced late
    assert streak.with_failure("sfn-a", NINE) == streak


def test_it_round_trips_through_the_ledger_and_reads_a_record_from_before_streaks():
    streak = opened().with_failure("sfn-b", NINE + HOUR)
    assert Streak.from_record(streak.record()) == streak
    assert streak.record()["stopped_ms"] == NINE + HOUR  # what a recovery compares against
    old = Streak.from_record({"thread_ts": "1.2", "stopped_ms": NINE, "execution": "sfn-a"})
    assert (old.thread_ts, old.message_ts, old.failures) == ("1.2", "", 1)  # no message to update
    assert Streak.from_record({}) is None and Streak.from_record(None) is None


def test_the_update_says_since_when_how_often_and_the_last_run_and_keeps_the_opening_message():
    streak = opened().with_failure("sfn-b", NINE + HOUR).with_failure("sfn-c", NINE + 2 * HOUR)
    update = render_update(streak, NINE + 2 * HOUR)
    summary = update.blocks[0]["text"]["text"]
    assert "Failing since 09:00 UTC" in summary and "3 failed runs" in summary
    assert "last: `sfn-c` at 11:00 UTC" in summary
    assert update.blocks[1:] == OPENING.blocks
    next_day = render_update(streak, NINE + 24 * HOUR).blocks[0]["text"]["text"]
    assert "since Dec 01 09:00 UTC" in next_day


def test_resolved_says_how_long_and_how_many():
    streak = opened().with_failure("sfn-b", NINE + HOUR).with_failure("sfn-c", NINE + 2 * HOUR)
    line = render_resolved(streak, "sfn-d", NINE + 2 * HOUR + 40 * 60 * 1000).blocks[0]["text"]["text"]
    assert "Resolved* at 11:40 UTC by `sfn-d`" in line and "after 3 failed runs over 2h40m" in line


def test_a_reminder_is_due_every_repeat_interval_since_the_channel_was_last_told():
    streak = opened()
    assert not streak.reminder_due(NINE + 3 * HOUR, timedelta(hours=4))
    assert streak.reminder_due(NINE + 4 * HOUR, timedelta(hours=4))
    reminded = streak.reminded(NINE + 4 * HOUR)
    assert not reminded.reminder_due(NINE + 7 * HOUR, timedelta(hours=4))
    reply = as_reminder(OPENING, reminded.with_failure("sfn-e", NINE + 4 * HOUR), NINE + 4 * HOUR)
    assert reply.text.startswith(":repeat: Still failing since 09:00 UTC: 2 failed runs.")


def test_names_from_staging_are_escaped():
    streak = opened().with_failure("<!channel>", NINE + HOUR)
    assert "&lt;!channel&gt;" in render_update(streak, NINE + HOUR).blocks[0]["text"]["text"]
