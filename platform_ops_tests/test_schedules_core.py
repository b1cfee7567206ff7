"""AWS schedule expressions against the EventBridge user guide's examples, and the missed-schedule
plan: no AWS, no Dagster, no clock (every `now` is given)."""

from datetime import UTC, datetime, timedelta

import pytest

from platform_ops.schedules import core
from platform_ops.schedules.core import (
    AnnounceMiss,
    AnnounceRecovery,
    ForgetMiss,
    MissRecord,
    ScheduledStateMachine,
    ScheduleExpressionError,
    UnreadableSchedule,
)

UTC = UTC


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def fires(expression: str, after: datetime, until: datetime) -> list[str]:
    return [t.strftime("%a %Y-%m-%d %H:%M") for t in core.fire_times(expression, after, until)]


# November 2026 starts on a Sunday; 30 days. December 2026 starts on a Tuesday; 31 days.
NOV = (at(2026, 10, 31, 23, 59), at(2026, 11, 30, 23, 59))


def test_10_00_every_day():
    got = fires("cron(0 10 * * ? *)", at(2026, 11, 1), at(2026, 11, 3, 23, 59))
    assert got == ["Sun 2026-11-01 10:00", "Mon 2026-11-02 10:00", "Tue 2026-11-03 10:00"]


def test_12_15_every_day():
    assert fires("cron(15 12 * * ? *)", at(2026, 11, 1, 12, 15), at(2026, 11, 2, 23, 0)) == ["Mon 2026-11-02 12:15"]


def test_18_00_monday_to_friday():
    got = fires("cron(0 18 ? * MON-FRI *)", at(2026, 11, 6), at(2026, 11, 10))  # Fri 6th .. Tue 10th
    assert got == ["Fri 2026-11-06 18:00", "Mon 2026-11-09 18:00"]


def test_08_00_first_day_of_every_month():
    got = fires("cron(0 8 1 * ? *)", at(2026, 10, 15), at(2027, 1, 1, 8, 0))
    assert got == ["Sun 2026-11-01 08:00", "Tue 2026-12-01 08:00", "Fri 2027-01-01 08:00"]


def test_every_15_minutes():
    got = fires("cron(0/15 * * * ? *)", at(2026, 11, 1, 9, 50), at(2026, 11, 1, 10, 31))
    assert got == ["Sun 2026-11-01 10:00", "Sun 2026-11-01 10:15", "Sun 2026-11-01 10:30"]


def test_every_10_minutes_monday_to_friday():
    got = core.fire_times("cron(0/10 * ? * MON-FRI *)", at(2026, 11, 6, 23, 30), at(2026, 11, 9, 0, 20))
    assert [t.strftime("%a %H:%M") for t in got] == ["Fri 23:40", "Fri 23:50", "Mon 00:00", "Mon 00:10", "Mon 00:20"]


def test_every_5_minutes_8_to_17_55_weekdays():
    got = core.fire_times("cron(0/5 8-17 ? * MON-FRI *)", at(2026, 11, 1), at(2026, 11, 3))
    assert len(got) == 12 * 10  # Monday only: 10 hours of 12
    assert (got[0], got[-1]) == (at(2026, 11, 2, 8, 0), at(2026, 11, 2, 17, 55))


def test_first_monday_of_the_month():
    assert fires("cron(0 9 ? * 2#1 *)", *NOV) == ["Mon 2026-11-02 09:00"]


def test_day_of_week_numbers_run_from_sunday():
    assert fires("cron(0 9 ? * 1 *)", at(2026, 11, 1), at(2026, 11, 14)) == ["Sun 2026-11-01 09:00",
                                                                             "Sun 2026-11-08 09:00"]
    assert fires("cron(0 9 ? * 7 *)", at(2026, 11, 1), at(2026, 11, 14, 23)) == ["Sat 2026-11-07 09:00",
                                                                             "Sat 2026-11-14 09:00"]
    assert fires("cron(0 9 ? * SAT,SUN *)", at(2026, 11, 6), at(2026, 11, 9)) == ["Sat 2026-11-07 09:00",
                                                                                  "Sun 2026-11-08 09:00"]


def test_a_fifth_weekday_the_month_lacks_never_fires():
    assert fires("cron(0 9 ? * 2#5 *)", *NOV) == ["Mon 2026-11-30 09:00"]  # November 2026 has five Mondays
    assert fires("cron(0 9 ? * 3#5 *)", *NOV) == []  # and four Tuesdays


def test_last_day_of_the_month():
    assert fires("cron(0 10 L * ? *)", at(2027, 1, 31, 10), at(2027, 3, 31, 10)) == ["Sun 2027-02-28 10:00",
                                                                                 "Wed 2027-03-31 10:00"]
    assert fires("cron(0 10 L 2 ? *)", at(2028, 1, 1), at(2028, 12, 31)) == ["Tue 2028-02-29 10:00"]  # leap


def test_nearest_weekday():
    assert fires("cron(0 10 15W * ? *)", *NOV) == ["Mon 2026-11-16 10:00"]  # the 15th is a Sunday
    assert fires("cron(0 10 7W * ? *)", *NOV) == ["Fri 2026-11-06 10:00"]  # the 7th is a Saturday
    # 1W on a Saturday does not leave the month: Monday the 3rd (August 2026 starts on a Saturday)
    assert fires("cron(0 10 1W 8 ? *)", at(2026, 1, 1), at(2026, 12, 31)) == ["Mon 2026-08-03 10:00"]
    assert fires("cron(0 10 31W * ? *)", *NOV) == []  # no 31st in November


def test_last_weekday_of_the_month():
    # January 2027 ends on a Sunday: its last weekday is Friday the 29th
    assert fires("cron(0 10 LW * ? *)", at(2027, 1, 1), at(2027, 1, 31, 23)) == ["Fri 2027-01-29 10:00"]


def test_last_thursday_of_the_month():
    assert fires("cron(0 10 ? * 5L *)", *NOV) == ["Thu 2026-11-26 10:00"]
    assert fires("cron(0 10 ? * THUL *)", *NOV) == ["Thu 2026-11-26 10:00"]


def test_year_field_and_month_names():
    assert fires("cron(0 12 1 JAN,JUL ? 2027-2028)", at(2026, 1, 1), at(2030, 1, 1)) == [
        "Fri 2027-01-01 12:00", "Thu 2027-07-01 12:00", "Sat 2028-01-01 12:00", "Sat 2028-07-01 12:00"]


def test_lists_ranges_and_steps_in_hours():
    got = core.fire_times("cron(30 1,6-8,20/2 * * ? *)", at(2026, 11, 1), at(2026, 11, 1, 23, 59))
    assert [t.hour for t in got] == [1, 6, 7, 8, 20, 22]


@pytest.mark.parametrize("expression, problem", [
    ("cron(0 10 * * MON *)", "exactly one of day-of-month and day-of-week must be '?'"),
    ("cron(0 10 ? * ? *)", "exactly one of day-of-month and day-of-week must be '?'"),
    ("cron(0 10 * * ?)", "6 fields"),
    ("cron(60 * * * ? *)", "minutes: 60 is outside 0-59"),
    ("cron(0 10 ? * 0 *)", "day-of-week: 0 is outside 1-7"),
    ("cron(0 10 ? * MON-SUNDAY *)", "day-of-week: 'SUNDAY' is not a number"),
    ("cron(0 10 ? JUNE * *)", "month: 'JUNE'"),
    ("cron(0 10 ? * 2#6 *)", "day-of-week's #: 6 is outside 1-5"),
    ("cron(0 10 5#2 * ? *)", "# belongs in day-of-week"),
    ("cron(0 10 ? * 5W *)", "W belongs in day-of-month"),
    ("cron(0 17-9 * * ? *)", "hours: the range 17-9 runs backwards"),
    ("cron(0 10 * * ? 1969)", "year: 1969 is outside 1970-2199"),
    ("rate(1 minutes)", "singular"),
    ("rate(5 minute)", "plural"),
    ("rate(0 minutes)", "positive"),
    ("rate(5 weeks)", "rate(<whole number>"),
    ("at(2026-11-01T10:00:00)", "neither cron(...) nor rate(...)"),
])
def test_an_invalid_expression_says_which_and_why(expression, problem):
    with pytest.raises(ScheduleExpressionError) as err:
        core.parse(expression)
    assert expression in str(err.value) and problem in str(err.value)


def test_rates():
    assert core.parse("rate(1 minute)").period == timedelta(minutes=1)
    assert core.parse("rate(1 hour)").period == timedelta(hours=1)
    assert core.parse("rate(7 days)").period == timedelta(days=7)
    got = core.fire_times("rate(20 minutes)", at(2026, 11, 1, 10, 0), at(2026, 11, 1, 11, 0),
                          anchor=at(2026, 11, 1, 9, 5))
    assert got == [at(2026, 11, 1, 10, 5), at(2026, 11, 1, 10, 25), at(2026, 11, 1, 10, 45)]


@pytest.mark.parametrize("expression, words", [
    ("cron(0 * * * ? *)", "every hour at :00"),  # Metaflow's @schedule(hourly=True)
    ("cron(0 0 * * ? *)", "at 00:00 UTC every day"),  # @schedule(daily=True)
    ("cron(0 0 ? * SUN *)", "at 00:00 UTC on Sundays"),  # @schedule(weekly=True)
    ("cron(30 9 ? * MON-FRI *)", "at 09:30 UTC on weekdays"),
    ("cron(0/15 * * * ? *)", "every 15 minutes"),
    ("cron(0/5 8-17 ? * MON-FRI *)", "every 5 minutes from 08:00 to 17:55 UTC on weekdays"),
    ("cron(0 9 ? * 2#1 *)", "at 09:00 UTC on the first Monday of the month"),
    ("cron(0 10 ? * 5L *)", "at 10:00 UTC on the last Thursday of the month"),
    ("cron(0 8 1 * ? *)", "at 08:00 UTC on day 1 of the month"),
    ("cron(0 10 L * ? *)", "at 10:00 UTC on the last day of the month"),
    ("cron(0 10 LW * ? *)", "at 10:00 UTC on the last weekday of the month"),
    ("cron(0 12 1 JAN ? 2027)", "at 12:00 UTC on day 1 of the month in January in 2027"),
    ("rate(5 minutes)", "every 5 minutes"),
    ("rate(1 hour)", "every hour"),
    ("rate(7 days)", "every 7 days"),
    ("cron(5,35 1,13 ? * MON,WED *)", "cron(5,35 1,13 ? * MON,WED *)"),  # too irregular for words
    ("cron(0 10 * * MON *)", "cron(0 10 * * MON *)"),  # invalid: the expression itself
])
def test_describe(expression, words):
    assert core.describe(expression) == words


# --- the plan ---------------------------------------------------------------------------------

ARN = "arn:aws:states:us-east-1:222222222222:stateMachine:mlplatform.prod.DemoFlow"
OTHER = "arn:aws:states:us-east-1:222222222222:stateMachine:mlplatform.prod.OtherFlow"
GRACE = timedelta(minutes=30)
DAILY_10 = "cron(0 10 * * ? *)"


CREATED = at(2026, 10, 1)


def scheduled(expression=DAILY_10, arn=ARN, enabled=True, created_at=CREATED):
    return ScheduledStateMachine(arn, arn.rsplit(":", 1)[1], expression, enabled, created_at)


def plan(schedules, last_starts, now, open_misses=None, grace=GRACE):
    return core.plan_schedule_checks(schedules, last_starts, open_misses or {}, now, grace)


def test_a_fire_time_without_a_start_is_announced_once_grace_has_passed():
    yesterday = at(2026, 11, 30, 10, 0, 12)
    assert plan([scheduled()], {ARN: yesterday}, at(2026, 12, 1, 10, 29)) == []  # within grace
    assert plan([scheduled()], {ARN: yesterday}, at(2026, 12, 1, 10, 30)) == [
        AnnounceMiss(ARN, "mlplatform.prod.DemoFlow", at(2026, 12, 1, 10), yesterday, "at 10:00 UTC every day")]


def test_a_start_at_or_after_the_fire_time_is_no_miss():
    assert plan([scheduled()], {ARN: at(2026, 12, 1, 10, 0, 40)}, at(2026, 12, 1, 11)) == []
    assert plan([scheduled()], {ARN: at(2026, 12, 1, 10, 20)}, at(2026, 12, 1, 11)) == []  # late, but ran


def test_no_fire_time_before_the_state_machine_existed():
    created = at(2026, 12, 1, 10, 5)  # deployed just after today's 10:00
    assert plan([scheduled(created_at=created)], {ARN: None}, at(2026, 12, 2, 10, 29)) == []
    [miss] = plan([scheduled(created_at=created)], {ARN: None}, at(2026, 12, 2, 10, 30))
    assert miss.expected_at == at(2026, 12, 2, 10) and miss.last_start is None


def test_an_open_miss_is_not_announced_again():
    open_misses = {ARN: MissRecord(ARN, at(2026, 12, 1, 10), at(2026, 12, 1, 10, 30))}
    assert plan([scheduled()], {ARN: at(2026, 11, 30, 10)}, at(2026, 12, 1, 11), open_misses) == []
    # nor when the next fire time is missed too: one outage, one message
    assert plan([scheduled()], {ARN: at(2026, 11, 30, 10)}, at(2026, 12, 2, 11), open_misses) == []


def test_recovery_when_a_start_comes_after_the_missed_fire_time():
    open_misses = {ARN: MissRecord(ARN, at(2026, 12, 1, 10), at(2026, 12, 1, 10, 30))}
    started = at(2026, 12, 2, 10, 0, 3)
    assert plan([scheduled()], {ARN: started}, at(2026, 12, 2, 10, 5), open_misses) == [
        AnnounceRecovery(ARN, at(2026, 12, 1, 10), started)]
    # a start before the missed fire time is not a recovery
    assert plan([scheduled()], {ARN: at(2026, 12, 1, 9, 59)}, at(2026, 12, 1, 11), open_misses) == []


def test_recovery_then_a_new_miss_when_it_stopped_again():
    open_misses = {ARN: MissRecord(ARN, at(2026, 12, 1, 10), at(2026, 12, 1, 10, 30))}
    started = at(2026, 12, 1, 14)  # started by hand, then the 2nd's 10:00 was missed too
    assert plan([scheduled()], {ARN: started}, at(2026, 12, 2, 11), open_misses) == [
        AnnounceRecovery(ARN, at(2026, 12, 1, 10), started),
        AnnounceMiss(ARN, "mlplatform.prod.DemoFlow", at(2026, 12, 2, 10), started, "at 10:00 UTC every day")]


def test_a_disabled_rule_is_no_schedule_and_forgets_its_open_miss():
    assert plan([scheduled(enabled=False)], {ARN: None}, at(2026, 12, 1, 11)) == []
    open_misses = {ARN: MissRecord(ARN, at(2026, 12, 1, 10), at(2026, 12, 1, 10, 30))}
    assert plan([scheduled(enabled=False)], {ARN: None}, at(2026, 12, 1, 11), open_misses) == [
        ForgetMiss(ARN, at(2026, 12, 1, 10))]


def test_grace_is_a_parameter():
    got = plan([scheduled()], {ARN: at(2026, 11, 30, 10)}, at(2026, 12, 1, 10, 5), grace=timedelta(minutes=5))
    assert [a.expected_at for a in got] == [at(2026, 12, 1, 10)]


def test_a_rate_expects_one_start_per_period_after_the_last():
    hourly = scheduled("rate(1 hour)", created_at=at(2026, 12, 1, 8, 0))
    last = at(2026, 12, 1, 9, 17, 30)
    assert plan([hourly], {ARN: last}, at(2026, 12, 1, 10, 46)) == []  # 10:17 + 30 min grace not over
    [miss] = plan([hourly], {ARN: last}, at(2026, 12, 1, 10, 47))
    assert (miss.expected_at, miss.description) == (at(2026, 12, 1, 10, 17), "every hour")
    # never started: counted from the state machine's creation
    [never] = plan([hourly], {ARN: None}, at(2026, 12, 1, 9, 30))
    assert never.expected_at == at(2026, 12, 1, 9, 0)


def test_an_unreadable_expression_is_reported_not_announced():
    assert plan([scheduled("cron(0 10 * * MON *)")], {ARN: None}, at(2026, 12, 1, 11)) == [
        UnreadableSchedule(ARN, "mlplatform.prod.DemoFlow", "cron(0 10 * * MON *)",
                           "exactly one of day-of-month and day-of-week must be '?'")]


def test_each_state_machine_is_planned_on_its_own():
    got = plan([scheduled(arn=OTHER), scheduled()], {ARN: at(2026, 12, 1, 10, 1), OTHER: None}, at(2026, 12, 1, 11))
    assert [(type(a).__name__, a.state_machine_arn) for a in got] == [("AnnounceMiss", OTHER)]


def test_a_sparse_schedule_far_back_is_found():
    yearly = scheduled("cron(0 0 1 JAN ? *)", created_at=at(2020, 6, 1))
    [miss] = plan([yearly], {ARN: at(2025, 1, 1, 0, 0, 5)}, at(2026, 12, 1))
    assert miss.expected_at == at(2026, 1, 1)


def test_due_lookups_asks_only_where_a_due_fire_time_is_unanswered():
    hourly = scheduled("cron(0 * * * ? *)")
    other = scheduled("cron(0 * * * ? *)", arn=OTHER)
    now = at(2026, 12, 1, 10, 40)  # 10:00 is due (grace over), 11:00 is not
    assert core.due_lookups([hourly, other], {}, {}, now) == {ARN, OTHER}  # nothing known yet
    known = {ARN: at(2026, 12, 1, 10, 0, 20), OTHER: at(2026, 12, 1, 9, 0, 20)}
    assert core.due_lookups([hourly, other], known, {}, now) == {OTHER}
    open_misses = {ARN: MissRecord(ARN, at(2026, 12, 1, 9), at(2026, 12, 1, 9, 30))}
    assert core.due_lookups([hourly, other], known, open_misses, now) == {ARN, OTHER}
    assert core.due_lookups([scheduled(enabled=False)], {}, {}, now) == set()


def test_checks_every_5_minutes_through_an_outage_announce_it_once_and_its_end_once():
    """The wiring's loop, simulated: an hourly flow runs 00:00-05:00, misses 06:00 and 07:00 (the
    rule's target role broke), runs again from 08:00. Starts come 20 s after the fire time."""
    hourly = [scheduled("cron(0 * * * ? *)", created_at=at(2026, 11, 30, 23, 50))]
    starts = [at(2026, 12, 1, h, 0, 20) for h in (0, 1, 2, 3, 4, 5, 8)]
    known: dict = {}
    open_misses: dict[str, MissRecord] = {}
    said, lookups = [], 0
    now = at(2026, 12, 1, 0, 0)
    while now <= at(2026, 12, 1, 9, 0):
        for arn in core.due_lookups(hourly, known, open_misses, now, GRACE):
            lookups += 1
            known[arn] = max((s for s in starts if s <= now), default=None)
        for action in core.plan_schedule_checks(hourly, known, open_misses, now, GRACE):
            said.append((now.strftime("%H:%M"), action))
            if isinstance(action, AnnounceMiss):
                open_misses[action.state_machine_arn] = MissRecord(action.state_machine_arn, action.expected_at, now)
            else:
                open_misses.pop(action.state_machine_arn)
        now += timedelta(minutes=5)
    assert said == [
        ("06:30", AnnounceMiss(ARN, "mlplatform.prod.DemoFlow", at(2026, 12, 1, 6), at(2026, 12, 1, 5, 0, 20),
                               "every hour at :00")),
        ("08:05", AnnounceRecovery(ARN, at(2026, 12, 1, 6), at(2026, 12, 1, 8, 0, 20))),
    ]
    # the first tick, each hour's :30 while it ran (00:30-06:30), every tick while the miss was open
    # (06:35-08:05; the start seen at 08:05 already answers 08:00 at 08:30): 27 ListExecutions in
    # 109 ticks, not 109
    assert lookups == 1 + 7 + 19
