"""Missed schedules, pure: AWS schedule expressions, their fire times, and what to announce.

Library choice: a small parser of our own. Evaluated on PyPI (Dec 2026):
- croniter 7.0.0 speaks Unix cron: day-of-week 0-6 from Sunday (AWS: 1-7 from Sunday), no year
  field, rejects `5L` in day-of-week; a translation layer would have to rewrite every day-of-week
  item and the year field, and still could not express AWS's `?` rule.
- pyawscron 1.0.7 (the AWS dialect) rejects `LW` ("invalid literal for int()"), and accepts
  expressions AWS refuses (`0 10 * * * *`, `0 10 1 * 2 *`: both day fields set), so a schedule
  AWS would never run gets fire times. One maintainer, last release 2023.
The whole grammar is six fields and five wildcards; below it is written down from the EventBridge
user guide ("Cron expressions", "Rate expressions") and Quartz, whose dialect AWS's is:

    cron(minutes hours day-of-month month day-of-week year), all UTC
    minutes 0-59, hours 0-23, day-of-month 1-31, month 1-12|JAN-DEC, day-of-week 1-7|SUN-SAT
    (1 = SUN), year 1970-2199
    , list   - range   * all   a/s or */s or a-b/s steps   ? no value (exactly one of day-of-month
    and day-of-week is ?)   L last (day-of-month: last day; day-of-week: 7 alone, `5L` = last
    Thursday)   W nearest weekday in the same month (`15W`, `LW` = last weekday)   # nth (`3#2` =
    second Tuesday; a 5th that a month lacks fires not at all that month)
    rate(value unit): value a positive integer, unit minute|hour|day when value is 1, else
    minutes|hours|days (`rate(1 minutes)` and `rate(5 minute)` are refused by AWS, and here)

Rate rules: "a rate expression starts when you create the scheduled event rule, and then it runs
on a defined schedule" (EventBridge user guide, "Rate expressions reference"), and neither
ListRules nor DescribeRule says when the rule was created (nor whether a redeploy's put_rule
restarts the count). So a rate schedule is read as "at least one start every period": the next
start is expected one period after the last one (or after the state machine was created, if none).

What counts as a start: any execution of the state machine, scheduled or by hand (an
EventBridge-started execution looks like any other: input `{"Parameters": "{}"}`, a generated
name). A start at or after a fire time satisfies it, however late: by the time we look, it ran.
"""

from __future__ import annotations

import calendar
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

MONTHS = {name: i for i, name in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], start=1)}
DAYS = {name: i for i, name in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"], start=1)}
DAY_WORDS = ["Sundays", "Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays"]
ORDINALS = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth"}


class ScheduleExpressionError(ValueError):
    """An expression AWS would refuse (or one we cannot read): says which and why."""

    def __init__(self, expression: str, problem: str):
        super().__init__(f"schedule expression {expression!r}: {problem}")
        self.expression = expression
        self.problem = problem


def aws_weekday(day: date) -> int:
    """AWS's day-of-week number: 1 = Sunday ... 7 = Saturday (Python's Monday=0 ... Sunday=6)."""
    return (day.weekday() + 1) % 7 + 1


@dataclass(frozen=True)
class Rate:
    """`rate(value unit)`: one fire per period."""

    expression: str
    period: timedelta


@dataclass(frozen=True)
class Cron:
    """`cron(...)`: each field as the set of values it allows; the day fields keep their specials."""

    expression: str
    fields: tuple[str, ...]  # the six raw fields, for describe()
    minutes: frozenset[int]
    hours: frozenset[int]
    months: frozenset[int]
    years: frozenset[int]
    month_days: tuple[tuple[str, int], ...] | None  # None when day-of-month is "?"
    week_days: tuple[tuple[str, int, int], ...] | None  # None when day-of-week is "?"

    def days_in(self, year: int, month: int) -> frozenset[int]:
        """The days of `month` this expression fires on."""
        if year not in self.years or month not in self.months:
            return frozenset()
        last = calendar.monthrange(year, month)[1]
        found: set[int] = set()
        if self.month_days is not None:
            for kind, n in self.month_days:
                if kind == "day" and n <= last:
                    found.add(n)
                elif kind == "last":
                    found.add(last)
                elif kind == "weekday" and n <= last:  # 31W fires not at all in a 30-day month
                    found.add(_nearest_weekday(year, month, n, last))
                elif kind == "last_weekday":
                    found.add(_nearest_weekday(year, month, last, last))
        else:
            for kind, wd, n in self.week_days or ():
                days = [d for d in range(1, last + 1) if aws_weekday(date(year, month, d)) == wd]
                if kind == "day":
                    found.update(days)
                elif kind == "last":
                    found.add(days[-1])
                elif kind == "nth" and n <= len(days):
                    found.add(days[n - 1])
        return frozenset(found)


Schedule = Rate | Cron


def _nearest_weekday(year: int, month: int, day: int, last: int) -> int:
    """Quartz's W: the weekday nearest `day` without leaving the month (1W on a Saturday is
    Monday the 3rd; 31W on a Sunday is Friday the 29th)."""
    wd = date(year, month, day).weekday()  # Monday=0
    if wd == 5:  # Saturday
        return day - 1 if day > 1 else day + 2
    if wd == 6:  # Sunday
        return day + 1 if day < last else day - 2
    return day


_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_CRON = re.compile(r"^cron\((.*)\)$")
_UNITS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}


def parse(expression: str) -> Schedule:
    """A Rate or a Cron; ScheduleExpressionError for anything AWS would refuse."""
    text = expression.strip()
    if text.startswith("rate("):
        m = _RATE.match(text)
        if not m:
            raise ScheduleExpressionError(expression, "a rate is rate(<whole number> minute[s]|hour[s]|day[s])")
        value, unit = int(m.group(1)), m.group(2)
        if value < 1:
            raise ScheduleExpressionError(expression, "a rate's value must be a positive number")
        if (value == 1) != (not unit.endswith("s")):
            raise ScheduleExpressionError(expression, f"AWS wants the {'singular' if value == 1 else 'plural'} "
                                                      f"unit with the value {value}")
        return Rate(expression, value * _UNITS[unit.rstrip("s")])
    m = _CRON.match(text)
    if not m:
        raise ScheduleExpressionError(expression, "neither cron(...) nor rate(...)")
    fields = tuple(m.group(1).split())
    if len(fields) != 6:
        raise ScheduleExpressionError(expression, f"AWS cron has 6 fields (minutes hours day-of-month month "
                                                  f"day-of-week year), this has {len(fields)}")
    minute, hour, dom, month, dow, year = (f.upper() for f in fields)
    if (dom == "?") == (dow == "?"):
        raise ScheduleExpressionError(expression, "exactly one of day-of-month and day-of-week must be '?'")

    def values(text: str, name: str, low: int, high: int, names: dict[str, int] | None = None) -> frozenset[int]:
        return _values(expression, text, name, low, high, names or {})

    return Cron(
        expression=expression, fields=fields,
        minutes=values(minute, "minutes", 0, 59), hours=values(hour, "hours", 0, 23),
        months=values(month, "month", 1, 12, MONTHS), years=values(year, "year", 1970, 2199),
        month_days=None if dom == "?" else _month_days(expression, dom),
        week_days=None if dow == "?" else _week_days(expression, dow),
    )


def _number(expression: str, text: str, name: str, low: int, high: int, names: dict[str, int]) -> int:
    if text in names:
        return names[text]
    if not text.isdigit():
        raise ScheduleExpressionError(expression, f"{name}: {text!r} is not a number"
                                                  + (f" or one of {'/'.join(names)}" if names else ""))
    n = int(text)
    if not low <= n <= high:
        raise ScheduleExpressionError(expression, f"{name}: {n} is outside {low}-{high}")
    return n


def _values(expression: str, field: str, name: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    """A plain field: `*`, n, a-b, with /step, comma-separated."""
    found: set[int] = set()
    for item in field.split(","):
        base, _, step_text = item.partition("/")
        step = 1
        if step_text:
            step = _number(expression, step_text, f"{name} step", 1, high - low + 1 if high > low else 1, {})
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start = _number(expression, a, name, low, high, names)
            end = _number(expression, b, name, low, high, names)
            if start > end:
                raise ScheduleExpressionError(expression, f"{name}: the range {base} runs backwards")
        else:
            start = _number(expression, base, name, low, high, names)
            end = high if step_text else start  # 0/15 = from 0, every 15
        found.update(range(start, end + 1, step))
    return frozenset(found)


def _month_days(expression: str, field: str) -> tuple[tuple[str, int], ...]:
    items: list[tuple[str, int]] = []
    for item in field.split(","):
        if item == "L":
            items.append(("last", 0))
        elif item == "LW":
            items.append(("last_weekday", 0))
        elif item.endswith("W"):
            items.append(("weekday", _number(expression, item[:-1], "day-of-month", 1, 31, {})))
        elif "L" in item or "#" in item:
            raise ScheduleExpressionError(expression, f"day-of-month: {item!r} (L, LW and nW are the specials "
                                                      "allowed here; # belongs in day-of-week)")
        else:
            items.extend(("day", d) for d in _values(expression, item, "day-of-month", 1, 31, {}))
    return tuple(items)


def _week_days(expression: str, field: str) -> tuple[tuple[str, int, int], ...]:
    items: list[tuple[str, int, int]] = []
    for item in field.split(","):
        if item == "L":  # Quartz: L alone in day-of-week is 7, Saturday
            items.append(("day", 7, 0))
        elif "#" in item:
            wd, _, nth = item.partition("#")
            items.append(("nth", _number(expression, wd, "day-of-week", 1, 7, DAYS),
                          _number(expression, nth, "day-of-week's #", 1, 5, {})))
        elif item.endswith("L"):
            items.append(("last", _number(expression, item[:-1], "day-of-week", 1, 7, DAYS), 0))
        elif "W" in item.replace("WED", ""):
            raise ScheduleExpressionError(expression, f"day-of-week: {item!r} (W belongs in day-of-month)")
        else:
            items.extend(("day", d, 0) for d in _values(expression, item, "day-of-week", 1, 7, DAYS))
    return tuple(items)


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _cron_times(cron: Cron, first: datetime, last: datetime, backwards: bool) -> Iterator[datetime]:
    """Fire times in [first, last], in order (or newest first)."""
    day_count = (last.date() - first.date()).days
    months: dict[tuple[int, int], frozenset[int]] = {}
    for i in range(day_count + 1):
        day = last.date() - timedelta(days=i) if backwards else first.date() + timedelta(days=i)
        key = (day.year, day.month)
        if key not in months:
            months[key] = cron.days_in(*key)
        if day.day not in months[key]:
            continue
        for hour in sorted(cron.hours, reverse=backwards):
            for minute in sorted(cron.minutes, reverse=backwards):
                at = datetime.combine(day, time(hour, minute), tzinfo=UTC)
                if first <= at <= last:
                    yield at


def fire_times(expression: str | Schedule, after: datetime, until: datetime,
               anchor: datetime | None = None) -> list[datetime]:
    """Fire times in (after, until], oldest first. A rate's are anchor + k*period (AWS's anchor is
    the rule's creation, which no API returns: see the module docstring); anchor defaults to `after`."""
    schedule = parse(expression) if isinstance(expression, str) else expression
    after, until = _utc(after), _utc(until)
    if isinstance(schedule, Rate):
        at = _utc(anchor or after)
        if at <= after:
            at += ((after - at) // schedule.period + 1) * schedule.period
        out = []
        while at <= until:
            out.append(at)
            at += schedule.period
        return out
    first = (after + timedelta(minutes=1)).replace(second=0, microsecond=0)
    return list(_cron_times(schedule, first, until, backwards=False))


def latest_fire_time(schedule: Cron, not_after: datetime, not_before: datetime) -> datetime | None:
    """The newest cron fire time in [not_before, not_after], or None."""
    not_after, not_before = _utc(not_after), _utc(not_before)
    if not_before > not_after:
        return None
    return next(_cron_times(schedule, not_before, not_after, backwards=True), None)


# --- describe ---------------------------------------------------------------------------------


def describe(expression: str) -> str:
    """The schedule in words for a message ("every hour at :00", "at 09:30 UTC on weekdays",
    "every 5 minutes"); the expression itself when the words would be too long or it is invalid."""
    try:
        schedule = parse(expression)
    except ScheduleExpressionError:
        return expression
    if isinstance(schedule, Rate):
        inner = expression.strip()[5:-1]
        value, unit = inner.split()
        return f"every {unit}" if value == "1" else f"every {value} {unit}"
    try:
        return _describe_cron(schedule) or expression
    except (ValueError, KeyError):
        return expression


def _step(field: str, unit: str) -> str | None:
    """"every 15 minutes" for */15 or 0/15; None for anything else."""
    m = re.fullmatch(r"(\*|0)/(\d+)", field)
    if m:
        return f"every {m.group(2)} {unit}"
    if field == "*":
        return f"every {unit.rstrip('s')}"
    return None


def _describe_days(dom: str, month: str, dow: str) -> str | None:
    parts = []
    if dom == "?":
        if dow == "*":
            parts.append("every day")
        elif dow in ("MON-FRI", "2-6"):
            parts.append("on weekdays")
        elif dow in ("SAT,SUN", "SUN,SAT", "1,7", "7,1"):
            parts.append("on weekends")
        elif re.fullmatch(r"[A-Z1-7]+(#\d)?L?", dow):
            wd, _, nth = dow.rstrip("L").partition("#")
            name = DAY_WORDS[(DAYS[wd] if wd in DAYS else int(wd)) - 1]
            if nth:
                parts.append(f"on the {ORDINALS[int(nth)]} {name[:-1]} of the month")
            elif dow.endswith("L"):
                parts.append(f"on the last {name[:-1]} of the month")
            else:
                parts.append(f"on {name}")
        else:
            return None
    else:
        if dom == "*":
            parts.append("every day")
        elif dom == "L":
            parts.append("on the last day of the month")
        elif dom == "LW":
            parts.append("on the last weekday of the month")
        elif re.fullmatch(r"\d+W", dom):
            parts.append(f"on the weekday nearest day {dom[:-1]} of the month")
        elif dom.isdigit():
            parts.append(f"on day {int(dom)} of the month")
        else:
            return None
    if month != "*":
        if month.isdigit() or month in MONTHS:
            parts.append(f"in {calendar.month_name[int(month) if month.isdigit() else MONTHS[month]]}")
        else:
            return None
    return " ".join(parts)


def _describe_cron(cron: Cron) -> str | None:
    minute, hour, dom, month, dow, year = (f.upper() for f in cron.fields)
    days = _describe_days(dom, month, dow)
    if days is None:
        return None
    when = ""
    if year != "*":
        if not year.isdigit():
            return None
        when = f" in {year}"
    daily = "" if days == "every day" else f" {days}"
    if minute.isdigit() and hour.isdigit():
        return f"at {int(hour):02d}:{int(minute):02d} UTC {days}{when}"
    if minute.isdigit() and hour == "*":
        return f"every hour at :{int(minute):02d}{daily}{when}"
    every = _step(minute, "minutes")
    if every and hour == "*":
        return f"{every}{daily}{when}"
    m = re.fullmatch(r"(\d+)-(\d+)", hour)
    if every and m:
        last_minute = max(cron.minutes)
        return (f"{every} from {int(m.group(1)):02d}:00 to {int(m.group(2)):02d}:{last_minute:02d} UTC"
                f"{daily}{when}")
    return None


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduledStateMachine:
    """A watched state machine and the EventBridge rule that schedules it (ListRules +
    ListTargetsByRule); created_at is the state machine's creationDate."""

    state_machine_arn: str
    rule_name: str
    expression: str
    enabled: bool
    created_at: datetime


@dataclass(frozen=True)
class MissRecord:
    """An announced, still open miss: kept by the wiring between checks."""

    state_machine_arn: str
    expected_at: datetime
    announced_at: datetime


@dataclass(frozen=True)
class AnnounceMiss:
    state_machine_arn: str
    rule_name: str
    expected_at: datetime
    last_start: datetime | None
    description: str


@dataclass(frozen=True)
class AnnounceRecovery:
    state_machine_arn: str
    expected_at: datetime  # the missed fire time the open record was about
    started_at: datetime


@dataclass(frozen=True)
class ForgetMiss:
    """An open miss whose schedule is gone (rule disabled or deleted, state machine no longer
    watched): nothing will start it, so nothing is announced; the record is dropped."""

    state_machine_arn: str
    expected_at: datetime


@dataclass(frozen=True)
class UnreadableSchedule:
    """A rule whose expression we cannot read: logged by the wiring, never a miss."""

    state_machine_arn: str
    rule_name: str
    expression: str
    error: str


Action = AnnounceMiss | AnnounceRecovery | ForgetMiss | UnreadableSchedule


def _minute(dt: datetime) -> datetime:
    """EventBridge schedules have one-minute precision and the target starts seconds after the
    trigger (user guide, "Creating a scheduled rule"): a start at 10:00:40 answers 10:00."""
    return _utc(dt).replace(second=0, microsecond=0)


def expected_start(schedule: ScheduledStateMachine, last_start: datetime | None, now: datetime,
                   grace: timedelta) -> datetime | None:
    """The newest fire time that should have produced a start by `now` (fire time + grace <=
    now), never one before the state machine existed; None if there is none yet."""
    parsed = parse(schedule.expression)
    created = _utc(schedule.created_at)
    cutoff = _utc(now) - grace
    if isinstance(parsed, Rate):
        expected = _minute(max(created, _utc(last_start)) if last_start else created) + parsed.period
        return expected if expected <= cutoff else None
    return latest_fire_time(parsed, cutoff, created)


def plan_schedule_checks(schedules: list[ScheduledStateMachine], last_starts: dict[str, datetime | None],
                         open_misses: dict[str, MissRecord], now: datetime,
                         grace: timedelta = timedelta(minutes=30)) -> list[Action]:
    """What to announce now, once per outage: a miss when the newest due fire time has no start at
    or after it (and none is open); the recovery when a start came at or after the open miss's fire
    time. Disabled rules are not schedules. Order: by state machine ARN, a recovery before a new miss."""
    actions: list[Action] = []
    live: set[str] = set()
    for schedule in sorted(schedules, key=lambda s: (s.state_machine_arn, s.rule_name)):
        arn = schedule.state_machine_arn
        if not schedule.enabled or arn in live:
            continue
        live.add(arn)
        last_start = last_starts.get(arn)
        last = _minute(last_start) if last_start else None
        try:
            expected = expected_start(schedule, last_start, now, grace)
        except ScheduleExpressionError as exc:
            actions.append(UnreadableSchedule(arn, schedule.rule_name, schedule.expression, exc.problem))
            continue
        miss = open_misses.get(arn)
        if miss is not None and last is not None and last >= _minute(miss.expected_at):
            actions.append(AnnounceRecovery(arn, miss.expected_at, _utc(last_start)))
            miss = None
        if miss is None and expected is not None and (last is None or last < expected):
            actions.append(AnnounceMiss(arn, schedule.rule_name, expected, last_start, describe(schedule.expression)))
    for arn in sorted(set(open_misses) - live):
        actions.append(ForgetMiss(arn, open_misses[arn].expected_at))
    return actions


def due_lookups(schedules: list[ScheduledStateMachine], known_last_starts: dict[str, datetime | None],
                open_misses: dict[str, MissRecord], now: datetime,
                grace: timedelta = timedelta(minutes=30)) -> set[str]:
    """The state machines whose last start must be asked for (ListExecutions, one call each) before
    planning: those with an open miss (has it recovered?) and those where a fire time came due that
    the last start known from an earlier check does not answer. For the others the known start
    still answers the newest due fire time (starts only move forward), so planning with it is
    exact: an hourly schedule checked every 5 minutes is asked about once an hour, not 12 times."""
    due: set[str] = set()
    for schedule in schedules:
        arn = schedule.state_machine_arn
        if not schedule.enabled:
            continue
        if arn in open_misses or arn not in known_last_starts:
            due.add(arn)
            continue
        known = known_last_starts[arn]
        try:
            expected = expected_start(schedule, known, now, grace)
        except ScheduleExpressionError:
            continue  # plan_schedule_checks reports it; no start answers it
        if expected is not None and (known is None or _minute(known) < expected):
            due.add(arn)
    return due


# --- what a check keeps for the next -----------------------------------------------------------


@dataclass
class EnvironmentCursor:
    """One environment's part of the sensor's cursor. `known_targets` (rule ARN -> target ARNs) and
    `last_starts` only save calls: losing them costs ListTargetsByRule and ListExecutions, never a
    message. `open` names the state machines with an open miss (the misses themselves live in the
    ledger, which a lost cursor keeps), so a miss whose schedule went away can be forgotten."""

    known_targets: dict[str, frozenset[str]] = field(default_factory=dict)
    last_starts: dict[str, datetime | None] = field(default_factory=dict)
    open: set[str] = field(default_factory=set)

    def bounded(self, rule_names: set[str], scheduled: set[str]) -> EnvironmentCursor:
        """Only rules named like a watched state machine, starts of scheduled ones: the cursor
        never outgrows the watched estate, whatever was deleted."""
        return EnvironmentCursor(
            {arn: t for arn, t in self.known_targets.items() if arn.rsplit("rule/", 1)[-1] in rule_names},
            {arn: s for arn, s in self.last_starts.items() if arn in scheduled}, set(self.open))


def dump_cursor(cursors: dict[str, EnvironmentCursor]) -> str:
    return json.dumps({env: {"known_targets": {r: sorted(t) for r, t in c.known_targets.items()},
                             "last_starts": {a: s.isoformat() if s else None for a, s in c.last_starts.items()},
                             "open": sorted(c.open)}
                       for env, c in cursors.items()}, sort_keys=True)


def load_cursor(text: str | None) -> dict[str, EnvironmentCursor]:
    """The cursor as dumped; an unreadable one is an empty one (it only costs calls)."""
    try:
        data = json.loads(text) if text else {}
        return {env: EnvironmentCursor(
            {r: frozenset(t) for r, t in c.get("known_targets", {}).items()},
            {a: datetime.fromisoformat(s) if s else None for a, s in c.get("last_starts", {}).items()},
            set(c.get("open", []))) for env, c in data.items()}
    except (ValueError, TypeError, AttributeError):
        return {}
