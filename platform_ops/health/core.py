"""Is the watcher itself healthy? Decided from what the Dagster instance records about this code
location: its sensors' and schedules' states and ticks, and its own runs.

Open-source Dagster has no alert policies (Dagster+ has tick-failure, run-failure and
agent-downtime alerts); this is the open-source stand-in. Two mechanisms, because one cannot
watch itself: a heartbeat metric per sensor whose last tick completed (CloudWatch alarms with
TreatMissingData: breaching tell people when Dagster stops altogether), and Slack messages for
problems Dagster can still see (a sensor failing tick after tick, a sensor or schedule stopped
by hand, this code location's own runs failing again and again), each announced once and
resolved once.

Pure: plain dataclasses in, a plan out; no Dagster, no AWS.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from platform_ops.messages import SlackMessage, escape


class TickStatus(enum.StrEnum):
    """A sensor or schedule tick, as Dagster records it."""

    STARTED = "started"
    SKIPPED = "skipped"
    SUCCESS = "success"
    FAILURE = "failure"


class ProblemKind(enum.StrEnum):
    FAILING_TICKS = "failing-ticks"
    STOPPED = "stopped"
    FAILING_RUNS = "failing-runs"


@dataclass(frozen=True)
class Tick:
    status: TickStatus
    at: datetime
    error: str | None = None


@dataclass(frozen=True)
class Instigator:
    """A sensor or schedule of this code location and what the instance knows of it. `stopped`:
    someone turned it off (Dagster's STOPPED state; a default-running sensor nobody touched is
    not stopped). `ticks`: most recent first."""

    name: str
    kind: str  # "sensor" | "schedule"
    stopped: bool
    ticks: tuple[Tick, ...] = ()


@dataclass(frozen=True)
class Run:
    run_id: str
    job: str
    succeeded: bool
    ended_at: datetime
    error: str | None = None


@dataclass(frozen=True)
class HealthPolicy:
    should_run: bool  # settings say the sensors and schedules run (sensors_running)
    failed_ticks: int = 3  # consecutive failed ticks that make a sensor unhealthy
    failed_runs: int = 3  # consecutive failed runs of one job that make it unhealthy


@dataclass(frozen=True)
class Problem:
    """Something wrong with the watcher, keyed so it is announced once and resolved once."""

    kind: ProblemKind
    subject: str  # the sensor, schedule or job
    since: datetime
    count: int = 0  # failed ticks or runs in a row
    detail: str = ""  # the last error, first lines (already redacted by the reader)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.subject}"


@dataclass(frozen=True)
class HealthPlan:
    announce: tuple[Problem, ...] = ()
    resolve: tuple[str, ...] = ()  # keys of open problems that are over
    heartbeats: tuple[str, ...] = ()  # sensors whose latest completed tick is new and healthy
    open_after: Mapping[str, Problem] = field(default_factory=dict)


def failing_streak(ticks: Sequence[Tick]) -> list[Tick]:
    """The failed ticks since the last completed good one (STARTED ticks are still running)."""
    streak: list[Tick] = []
    for tick in ticks:
        if tick.status == TickStatus.STARTED:
            continue
        if tick.status != TickStatus.FAILURE:
            break
        streak.append(tick)
    return streak


def current_problems(instigators: Iterable[Instigator], runs_by_job: Mapping[str, Sequence[Run]],
                     policy: HealthPolicy, now: datetime) -> dict[str, Problem]:
    """Every problem true now. `runs_by_job`: each job's latest finished runs, most recent first.
    A stop is dated when first seen: Dagster does not record when someone stopped a sensor."""
    found: list[Problem] = []
    for ins in instigators:
        if policy.should_run and ins.stopped:
            found.append(Problem(ProblemKind.STOPPED, ins.name, now))
            continue
        streak = failing_streak(ins.ticks)
        if len(streak) >= policy.failed_ticks:
            found.append(Problem(ProblemKind.FAILING_TICKS, ins.name, streak[-1].at, len(streak),
                                 streak[0].error or ""))
    for job, runs in runs_by_job.items():
        failed = []
        for run in runs:
            if run.succeeded:
                break
            failed.append(run)
        if len(failed) >= policy.failed_runs:
            found.append(Problem(ProblemKind.FAILING_RUNS, job, failed[-1].ended_at, len(failed),
                                 failed[0].error or ""))
    return {p.key: p for p in found}


def plan_health(instigators: Sequence[Instigator], runs_by_job: Mapping[str, Sequence[Run]],
                open_problems: Mapping[str, Problem], heartbeat_after: Mapping[str, datetime],
                policy: HealthPolicy, now: datetime) -> HealthPlan:
    """Announce what is newly wrong, resolve what is no longer wrong, and beat for each sensor
    whose latest completed tick (success or skip) is newer than the last heartbeat sent for it.
    A problem already open is not announced again; it is kept with its first `since`."""
    now_wrong = current_problems(instigators, runs_by_job, policy, now)
    announce = tuple(p for key, p in now_wrong.items() if key not in open_problems)
    resolve = tuple(key for key in open_problems if key not in now_wrong)
    open_after = {key: open_problems.get(key, p) for key, p in now_wrong.items()}
    beats = []
    for ins in instigators:
        if ins.kind != "sensor":
            continue
        done = next((t for t in ins.ticks if t.status != TickStatus.STARTED), None)
        if done and done.status in (TickStatus.SUCCESS, TickStatus.SKIPPED):
            last = heartbeat_after.get(ins.name)
            if last is None or done.at > last:
                beats.append(ins.name)
    return HealthPlan(announce, resolve, tuple(beats), open_after)


def _first_lines(text: str, lines: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[:lines])


def problem_message(problem: Problem, link: str) -> SlackMessage:
    """What on-call reads: what is wrong with the watcher, since when, the last error, where to click."""
    what = {
        ProblemKind.FAILING_TICKS: f"sensor `{problem.subject}` failed {problem.count} ticks in a row",
        ProblemKind.STOPPED: f"`{problem.subject}` is stopped, though the settings say it runs",
        ProblemKind.FAILING_RUNS: f"job `{problem.subject}` failed {problem.count} runs in a row",
    }[problem.kind]
    consequence = {
        ProblemKind.FAILING_TICKS: "what it watches is not being watched",
        ProblemKind.STOPPED: "what it watches is not being watched until someone starts it",
        ProblemKind.FAILING_RUNS: "its work is not getting done",
    }[problem.kind]
    text = f":warning: platform-ops: {what}: {consequence}"
    lines = [f"*{escape(text)}*", f"<{link}|Open in Dagster>"]
    if problem.detail:
        lines.append("```" + escape(_first_lines(problem.detail))[:2500] + "```")
    return SlackMessage(text=text, blocks=({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}},))


def resolved_message(problem: Problem, duration: str) -> SlackMessage:
    subject = {ProblemKind.FAILING_TICKS: f"sensor `{problem.subject}` ticks again",
               ProblemKind.STOPPED: f"`{problem.subject}` runs again",
               ProblemKind.FAILING_RUNS: f"job `{problem.subject}` succeeds again"}[problem.kind]
    text = f":white_check_mark: platform-ops: {subject} (after {duration})"
    return SlackMessage(text=text, blocks=({"type": "section", "text": {"type": "mrkdwn", "text": escape(text)}},))


def dump_state(open_problems: Mapping[str, Problem], heartbeat_after: Mapping[str, datetime]) -> dict:
    """The sensor's cursor: the open problems and the last tick each heartbeat was sent for
    (a few entries per sensor of this code location: bounded)."""
    return {"open": {k: {"kind": str(p.kind), "subject": p.subject, "since": p.since.isoformat(), "count": p.count}
                     for k, p in open_problems.items()},
            "beats": {name: at.isoformat() for name, at in heartbeat_after.items()}}


def load_state(data: Mapping | None) -> tuple[dict[str, Problem], dict[str, datetime]]:
    data = data or {}
    problems = {k: Problem(ProblemKind(v["kind"]), v["subject"], datetime.fromisoformat(v["since"]), v.get("count", 0))
                for k, v in data.get("open", {}).items()}
    beats = {name: datetime.fromisoformat(at) for name, at in data.get("beats", {}).items()}
    return problems, beats


def beaten(instigators: Iterable[Instigator], names: Iterable[str],
           before: Mapping[str, datetime]) -> dict[str, datetime]:
    """The heartbeat marks after sending for `names`: each one's latest completed tick."""
    after = dict(before)
    wanted = set(names)
    for ins in instigators:
        if ins.name in wanted:
            done = next(t for t in ins.ticks if t.status != TickStatus.STARTED)
            after[ins.name] = done.at
    return after
