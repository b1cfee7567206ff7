"""Runs that take too long, decided (pure: observations in, a plan and messages out).

A Batch job RUNNING, or a Step Functions execution RUNNING, much longer than its own kind usually
takes is worth one look: a hung task burns its instance and blocks whatever waits on it, and
nothing fails, so no alert would ever say so. "Usually" is the p95 of the succeeded runs of the
same key in the window: a job's key is its Metaflow (flow, step), read from the job name Metaflow
gives every Step Functions task (`SFN-<Flow>--<step>--`) or from its `metaflow.*` tags; an
execution's key is its state machine. Failed runs are left out of "usually": a task that died in
its first minute says nothing about how long the work takes.

A run is long when it has run more than `factor` x p95 AND at least `min_minutes`, and its key
has at least `min_history` succeeded runs; with less, it is not judged, and the tick says how much
history it lacked. Each long run is warned once; once it stops running it is forgotten, so the
state is bounded by what runs now.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from platform_ops.messages import MAX_HEADER_CHARS, SlackMessage, escape
from platform_ops.observations import BatchJob, Execution
from platform_ops.vocabulary import format_duration, from_epoch_ms, to_epoch_ms

JOB, EXECUTION = "job", "execution"
RUN_ID_KEY = "metaflow.run_id"  # the execution's name; the Metaflow run is sfn-<it>
# Metaflow's Batch job names under Step Functions (the same rule metrics/core.py reads them by)
_SFN_NAME = re.compile(r"^SFN-(?P<flow>[A-Za-z_][A-Za-z0-9_]*)--(?P<step>[A-Za-z_][A-Za-z0-9_]*)--")
MAX_THIN_SHOWN = 10  # a tick's skip reason names at most this many runs without enough history


@dataclass(frozen=True)
class Policy:
    factor: float = 3.0
    min_minutes: int = 30
    min_history: int = 5


@dataclass(frozen=True)
class Usual:
    """How long a key's succeeded runs took: their p95 (nearest rank) and how many there were."""

    p95_seconds: float
    runs: int


@dataclass(frozen=True)
class Running:
    """Something RUNNING now: a job (id) or an execution (ARN), its key and when it started."""

    kind: str  # JOB | EXECUTION
    id: str
    key: str  # "DemoFlow/train" for a job, the state machine's name for an execution
    name: str
    started_at: datetime
    queue: str = ""


@dataclass(frozen=True)
class LongRun:
    run: Running
    elapsed: timedelta
    usual: Usual


@dataclass(frozen=True)
class ThinHistory:
    run: Running
    runs: int
    needed: int


def job_key(job: BatchJob) -> str | None:
    """'<flow>/<step>' of a Metaflow task: its `metaflow.*` tags (DescribeJobs), else its name
    (ListJobs summaries carry no tags); None for a job that is not a Metaflow task."""
    flow, step = job.tags.get("metaflow.flow_name"), job.tags.get("metaflow.step_name")
    if flow and step:
        return f"{flow}/{step}"
    match = _SFN_NAME.match(job.name)
    return f"{match['flow']}/{match['step']}" if match else None


def p95(durations: Iterable[float]) -> float:
    """Nearest-rank 95th percentile: a duration some run really took (no interpolation)."""
    ordered = sorted(durations)
    if not ordered:
        raise ValueError("no durations")
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _summarise(durations: Mapping[str, list[float]]) -> dict[str, Usual]:
    return {key: Usual(p95(values), len(values)) for key, values in durations.items() if values}


def job_history(jobs: Iterable[BatchJob], since: datetime) -> dict[str, Usual]:
    """Per (flow, step): the succeeded jobs that stopped since `since`, as p95 and count."""
    found: dict[str, list[float]] = {}
    for job in jobs:
        key = job_key(job)
        if key and job.status == "SUCCEEDED" and job.started_at and job.stopped_at and job.stopped_at >= since:
            found.setdefault(key, []).append(max(0.0, (job.stopped_at - job.started_at).total_seconds()))
    return _summarise(found)


def execution_history(executions: Iterable[Execution], since: datetime) -> dict[str, Usual]:
    """Per state machine: the succeeded executions that stopped since `since`, as p95 and count."""
    found: dict[str, list[float]] = {}
    for ex in executions:
        if ex.status == "SUCCEEDED" and ex.stopped_at and ex.stopped_at >= since:
            seconds = (ex.stopped_at - ex.started_at).total_seconds()
            found.setdefault(ex.state_machine_name, []).append(max(0.0, seconds))
    return _summarise(found)


def running_jobs(jobs: Iterable[BatchJob]) -> list[Running]:
    """The RUNNING Metaflow tasks (a job that is not one has no key to compare with)."""
    return [Running(JOB, j.job_id, key, j.name, j.started_at, j.queue) for j in jobs
            if j.status == "RUNNING" and j.started_at and (key := job_key(j))]


def running_executions(executions: Iterable[Execution]) -> list[Running]:
    return [Running(EXECUTION, e.arn, e.state_machine_name, e.name, e.started_at) for e in executions
            if e.status == "RUNNING"]


def judge(running: Iterable[Running], usual: Mapping[str, Usual], policy: Policy, now: datetime
          ) -> tuple[list[LongRun], list[ThinHistory]]:
    """The long runs, and the runs not judged for want of history. A job's key is looked up as
    'job:<flow>/<step>', an execution's as 'execution:<state machine>' (see history_key)."""
    long, thin = [], []
    for run in running:
        known = usual.get(history_key(run.kind, run.key))
        if known is None or known.runs < policy.min_history:
            thin.append(ThinHistory(run, known.runs if known else 0, policy.min_history))
            continue
        elapsed = now - run.started_at
        seconds = elapsed.total_seconds()
        if seconds > policy.factor * known.p95_seconds and seconds >= policy.min_minutes * 60:
            long.append(LongRun(run, elapsed, known))
    return long, thin


def history_key(kind: str, key: str) -> str:
    """Jobs and executions in one table: a flow's step and a state machine never collide."""
    return f"{kind}:{key}"


def merged_history(jobs: Mapping[str, Usual], executions: Mapping[str, Usual]) -> dict[str, Usual]:
    return {**{history_key(JOB, k): v for k, v in jobs.items()},
            **{history_key(EXECUTION, k): v for k, v in executions.items()}}


@dataclass(frozen=True)
class Plan:
    """What to warn now, and the warned runs to remember (only those still running)."""

    warn: tuple[LongRun, ...]
    warned_after: frozenset[str]


def plan_warnings(long_runs: Iterable[LongRun], running_ids: Iterable[str], warned: Iterable[str]) -> Plan:
    """Each long run warned once: one already warned gets nothing; a warned run no longer
    running (finished, or gone) is forgotten, so the set holds only what runs now."""
    warned_now = frozenset(warned) & frozenset(running_ids)
    fresh = tuple(r for r in long_runs if r.run.id not in warned_now)
    return Plan(fresh, warned_now)


def history_due(refreshed_at: datetime | None, now: datetime, every: timedelta) -> bool:
    """The finished history is read again once it is `every` old (or was never read)."""
    return refreshed_at is None or now - refreshed_at >= every


def thin_summary(thin: Iterable[ThinHistory], environment: str) -> list[str]:
    """'staging DemoFlow/train: 3 of 5 succeeded runs' per key (each key once)."""
    seen: dict[str, ThinHistory] = {}
    for t in thin:
        seen.setdefault(history_key(t.run.kind, t.run.key), t)
    return [f"{environment} {t.run.key}: {t.runs} of {t.needed} succeeded runs" for t in seen.values()]


# ---- state kept between ticks ----

def dump_history(refreshed_at: datetime, usual: Mapping[str, Usual]) -> dict:
    return {"refreshed_at": to_epoch_ms(refreshed_at),
            "usual": {k: [round(u.p95_seconds, 3), u.runs] for k, u in sorted(usual.items())}}


def load_history(record: Mapping | None) -> tuple[datetime | None, dict[str, Usual]]:
    """A stored history; anything unreadable is no history (it is read again)."""
    try:
        usual = {k: Usual(float(v[0]), int(v[1])) for k, v in (record or {}).get("usual", {}).items()}
        refreshed = (record or {}).get("refreshed_at")
        return (from_epoch_ms(refreshed) if refreshed is not None else None), usual
    except (TypeError, ValueError, IndexError, AttributeError):
        return None, {}


def load_cursor(cursor: str | None) -> dict[str, set[str]]:
    """Warned run ids per environment; a cursor that does not parse is empty (the ledger still
    keeps every warning from going out twice)."""
    try:
        data = json.loads(cursor) if cursor else {}
        return {env: set(ids) for env, ids in data.get("warned", {}).items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def dump_cursor(warned: Mapping[str, Iterable[str]]) -> str:
    return json.dumps({"warned": {env: sorted(ids) for env, ids in sorted(warned.items())}}, sort_keys=True)


# ---- the message ----

@dataclass(frozen=True)
class Where:
    """Where a long run lives and who owns it: what the message needs besides the run."""

    environment: str
    region: str
    metaflow_ui: str
    owner: str | None = None
    run_id: str | None = None  # a job's `metaflow.run_id` parameter (its execution's name)
    owners: Mapping[str, str] = field(default_factory=dict)


def mention(owner: str | None, owners: Mapping[str, str]) -> str:
    if not owner:
        return "unknown"
    slack_id = owners.get(owner)
    return f"<@{slack_id}>" if slack_id else escape(owner[:80])


def flow_of(long: LongRun) -> str:
    """A job's flow from its key; an execution's from its state machine's name (Metaflow's
    @project scheme ends in the flow: mlplatform.prod.DemoFlow)."""
    return long.run.key.split("/", 1)[0] if long.run.kind == JOB else long.run.key.rsplit(".", 1)[-1]


def links(long: LongRun, where: Where) -> list[tuple[str, str]]:
    """The console page of the run, and its Metaflow UI run (and task) where it is known."""
    region, run = where.region, long.run
    if run.kind == JOB:
        found = [("Batch job", f"https://{region}.console.aws.amazon.com/batch/home?region={region}"
                               f"#jobs/detail/{run.id}")]
        if where.run_id:
            step = run.key.split("/", 1)[1]
            found.append(("Metaflow task", f"{where.metaflow_ui}/{flow_of(long)}/sfn-{where.run_id}/{step}/{run.id}"))
        return found
    return [("Step Functions", f"https://{region}.console.aws.amazon.com/states/home?region={region}"
                               f"#/v2/executions/details/{run.id}"),
            ("Metaflow run", f"{where.metaflow_ui}/{flow_of(long)}/sfn-{run.name}")]


def how_long(long: LongRun) -> str:
    """'running 2h10m, usually 25m (p95 of 40 runs)'."""
    usual = format_duration(timedelta(seconds=long.usual.p95_seconds))
    if long.usual.p95_seconds < 60:
        usual = f"{int(long.usual.p95_seconds)}s"
    return f"running {format_duration(long.elapsed)}, usually {usual} (p95 of {long.usual.runs} runs)"


def long_run_message(long: LongRun, where: Where) -> SlackMessage:
    """What the owner reads: what runs long, how long against usual, whose, and where to click.
    Names come from whoever deployed the flow (staging included): all escaped."""
    run, who = long.run, mention(where.owner, where.owners)
    what = f"step {run.key.split('/', 1)[1]} of {flow_of(long)}" if run.kind == JOB else f"{run.key}"
    title = f":hourglass: Running long in {where.environment}: {what}"
    fields = [f"*How long*\n{how_long(long)}", f"*Owner*\n{who}",
              f"*{'Job' if run.kind == JOB else 'Execution'}*\n`{escape(run.name[:200])}`",
              f"*Started*\n{run.started_at:%Y-%m-%d %H:%M} UTC"]
    if run.kind == JOB:
        fields.append(f"*Queue*\n`{escape(run.queue)}`")
    buttons = [{"type": "button", "text": {"type": "plain_text", "text": label}, "url": url[:3000]}
               for label, url in links(long, where)]
    blocks = (
        {"type": "header", "text": {"type": "plain_text", "text": title[:MAX_HEADER_CHARS]}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f[:2000]} for f in fields]},
        {"type": "actions", "elements": buttons},
    )
    text = (f"Running long in {where.environment}: {escape(what)} ({escape(run.name[:200])}), {how_long(long)}. "
            f"Owner: {who}.")
    return SlackMessage(text=text, blocks=blocks)
