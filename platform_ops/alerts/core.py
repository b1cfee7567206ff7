"""Failure alerts, decided: which executions are new, what failed and why, what the message says.

Pure functions over Execution observations and execution histories as the Step Functions API
returns them (lists of event dicts). No AWS, no Slack client, no Dagster.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from platform_ops import exactly_once
from platform_ops.alerts.streaks import Streak, as_reminder
from platform_ops.messages import MAX_BLOCKS, MAX_HEADER_CHARS, MAX_SECTION_CHARS, SlackMessage, escape, pack
from platform_ops.observations import Execution
from platform_ops.vocabulary import REASON_PREFIX as REAPER_PREFIX
from platform_ops.vocabulary import (
    format_duration,
    from_epoch_ms,
    ids_digest,
    owner_from_definition,
    reap_run_of,
    to_epoch_ms,
)

FAILED_STATUSES = ("FAILED", "TIMED_OUT", "ABORTED")
SUCCEEDED = "SUCCEEDED"


def scan(executions: Iterable[Execution], since: datetime) -> tuple[list[Execution], list[Execution], datetime]:
    """Executions that stopped after `since`: (failed, succeeded, the newest stop seen). The
    newest stop becomes the sensor's cursor for that state machine."""
    failed, succeeded, newest = [], [], since
    for ex in executions:
        if ex.stopped_at is None or ex.stopped_at <= since:
            continue
        newest = max(newest, ex.stopped_at)
        if ex.status in FAILED_STATUSES:
            failed.append(ex)
        elif ex.status == SUCCEEDED:
            succeeded.append(ex)
    return sorted(failed, key=lambda e: e.stopped_at), sorted(succeeded, key=lambda e: e.stopped_at), newest


EXECUTION_EVENT = "Step Functions Execution Status Change"


def executions_from_events(bodies: Iterable[str]) -> tuple[list[Execution], int]:
    """The stopped executions that "Step Functions Execution Status Change" events (EventBridge
    envelopes, as SQS delivers them) announce, one per execution however often it was delivered;
    and how many bodies were anything else (other events, malformed)."""
    by_arn: dict[str, Execution] = {}
    other = 0
    for body in bodies:
        try:
            event = json.loads(body)
            detail = event["detail"]
            if event.get("detail-type") != EXECUTION_EVENT or detail.get("stopDate") is None:
                raise ValueError("not a stopped execution")
            ex = Execution(
                arn=detail["executionArn"], name=detail.get("name") or detail["executionArn"].rsplit(":", 1)[-1],
                state_machine_arn=detail["stateMachineArn"], status=detail["status"],
                started_at=from_epoch_ms(detail["startDate"]), stopped_at=from_epoch_ms(detail["stopDate"]),
                error=detail.get("error") or "", cause=detail.get("cause") or "")
        except (ValueError, KeyError, TypeError):
            other += 1
            continue
        by_arn[ex.arn] = ex
    return list(by_arn.values()), other


# ---- what the sensors ask an alert run to do ----

EPOCH = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Ref:
    """An execution an alert run is asked about; the run describes it again (it may be gone)."""

    environment: str
    execution_arn: str
    state_machine_arn: str

    def row(self) -> dict[str, str]:
        return {"execution": self.execution_arn.rsplit(":", 1)[-1], "environment": self.environment,
                "state_machine": self.state_machine_arn.rsplit(":", 1)[-1]}


@dataclass
class Candidates:
    """What a tick found for an alert run: failures, and successes that may recover one."""

    failures: list[Ref] = field(default_factory=list)
    successes: list[Ref] = field(default_factory=list)

    def extend(self, other: Candidates) -> None:
        self.failures += other.failures
        self.successes += other.successes


def candidates(environment: str, failed: list[Execution], succeeded: list[Execution]) -> Candidates:
    """One state machine's failures (as `scan` sorts them), and its latest success if it came after
    them: only that one can say the state machine recovered."""
    found = Candidates([Ref(environment, e.arn, e.state_machine_arn) for e in failed])
    if succeeded and (not failed or succeeded[-1].stopped_at > failed[-1].stopped_at):
        found.successes.append(Ref(environment, succeeded[-1].arn, succeeded[-1].state_machine_arn))
    return found


def from_events(environment: str, prefixes: Iterable[str], executions: Iterable[Execution]) -> Candidates:
    """What events reported, decided as polling would, state machine by state machine; only the
    environment's own state machines (by name prefix) count."""
    prefixes = tuple(prefixes)
    by_machine: dict[str, list[Execution]] = {}
    for ex in executions:
        if ex.state_machine_name.startswith(prefixes):
            by_machine.setdefault(ex.state_machine_arn, []).append(ex)
    found = Candidates()
    for executions_of_one in by_machine.values():
        failed, succeeded, _ = scan(executions_of_one, EPOCH)
        found.extend(candidates(environment, failed, succeeded))
    return found


@dataclass(frozen=True)
class Work:
    """One alert run's config. Its run key names the set of executions, so the polling and the
    event sensor asking for the same set make one run (and the ledger skips what went out)."""

    failures: tuple[Ref, ...]
    recoveries: tuple[Ref, ...]

    @property
    def run_key(self) -> str:
        ids = [f.execution_arn for f in self.failures] + [f"ok:{r.execution_arn}" for r in self.recoveries]
        return f"alert:{ids_digest(ids)}"


def plan_work(found: Iterable[Candidates], open_machines: Iterable[str]) -> Work | None:
    """The run to request, if any: a success counts only where it can recover something, a failure
    still open in the ledger (`open_machines`) or one in this same set."""
    failures = [f for c in found for f in c.failures]
    successes = [s for c in found for s in c.successes]
    recoverable = set(open_machines) | {f.state_machine_arn for f in failures}
    recoveries = [s for s in successes if s.state_machine_arn in recoverable]
    if not failures and not recoveries:
        return None
    return Work(tuple(failures), tuple(recoveries))


@dataclass(frozen=True)
class Scope:
    """An environment as the polling cursor sees it: the state machines it owns (by ARN: account,
    region, name prefix) and, when events carry it, the mark of its last reconciliation."""

    environment: str
    account_id: str
    region: str
    prefixes: tuple[str, ...]
    event_driven: bool = False

    @property
    def mark(self) -> str:
        return f"reconciled:{self.environment}"

    def owns(self, key: str) -> bool:
        parts = key.split(":")
        return (len(parts) >= 7 and parts[3] == self.region and parts[4] == self.account_id
                and parts[6].startswith(self.prefixes))


class Cursor:
    """The polling sensor's cursor (epoch ms): per state machine the newest stop seen, per
    event-driven environment when polling last reconciled it. `next` is the tick's new value: what
    was read anew, and what could not be read (or was not due) carried over unchanged."""

    def __init__(self, previous: Mapping[str, int] | None = None):
        self.previous = dict(previous or {})
        self.next: dict[str, int] = {}

    @classmethod
    def loads(cls, text: str | None) -> Cursor:
        return cls(json.loads(text) if text else {})

    def dumps(self) -> str:
        return json.dumps(self.next, sort_keys=True)

    def due(self, scope: Scope, now: datetime, reconcile_seconds: float) -> bool:
        """Polled environments every tick; event-driven ones once per reconcile interval (events
        carry them in between, and their cursor is carried over)."""
        if scope.event_driven and to_epoch_ms(now) - self.previous.get(scope.mark, 0) < reconcile_seconds * 1000:
            self.keep(scope, mark=True)
            return False
        return True

    def keep(self, scope: Scope, mark: bool) -> None:
        """Carry over what `scope` owns; without its mark when its listing failed, so that an
        event-driven environment is reconciled again on the next tick."""
        self.next.update({k: v for k, v in self.previous.items()
                          if scope.owns(k) or (mark and k == scope.mark)})

    def listed(self, scope: Scope, now: datetime) -> None:
        if scope.event_driven:
            self.next[scope.mark] = to_epoch_ms(now)

    def since(self, machine_arn: str, default: datetime) -> datetime:
        return from_epoch_ms(self.previous[machine_arn]) if machine_arn in self.previous else default

    def seen(self, machine_arn: str, newest: datetime) -> None:
        self.next[machine_arn] = to_epoch_ms(newest)

    def unread(self, machine_arn: str) -> None:
        if machine_arn in self.previous:
            self.next[machine_arn] = self.previous[machine_arn]


# ---- classification ----

REAPED, OOM, SPOT, EXIT, TIMEOUT, SUBMIT, UNKNOWN = (
    "reaped", "out of memory", "spot/host reclaimed", "non-zero exit", "Batch timeout", "submit failed", "unknown")


def _last_container(job: Mapping[str, Any]) -> Mapping[str, Any]:
    attempts = job.get("Attempts") or []
    if attempts and isinstance(attempts[-1], dict) and attempts[-1].get("Container"):
        return attempts[-1]["Container"]
    return job.get("Container") or {}


def classify(job: Mapping[str, Any]) -> tuple[str, str]:
    """(category, what an operator reads) for a Batch job JSON as a TaskFailed cause has it."""
    status_reason = str(job.get("StatusReason") or "")
    container = _last_container(job)
    attempts = job.get("Attempts") or []
    container_reason = str(container.get("Reason") or "")
    attempt_reason = str((attempts[-1] or {}).get("StatusReason") or "") if attempts else ""
    exit_code = container.get("ExitCode")
    if status_reason.startswith(REAPER_PREFIX):
        match = re.search(r"RUNNABLE for (\S+)", status_reason)
        waited = f" after {match.group(1)} in RUNNABLE" if match else " while RUNNABLE"
        return REAPED, f"cancelled by platform-ops{waited}"
    if "OutOfMemory" in container_reason or exit_code == 137:
        return OOM, OOM
    if any("Host EC2" in r or "spot" in r.lower() for r in (status_reason, container_reason, attempt_reason)):
        return SPOT, SPOT
    if "duration exceeded timeout" in status_reason or "duration exceeded timeout" in attempt_reason:
        return TIMEOUT, TIMEOUT
    if isinstance(exit_code, int) and exit_code != 0:
        return EXIT, f"exit {exit_code}"
    return UNKNOWN, status_reason or container_reason or UNKNOWN


# ---- what became of each execution in an alert run ----

class Outcome(StrEnum):
    """An execution's result in an alert run; each value is the words the run's metadata shows
    (a record already done reads "already <its state>")."""

    TO_ANNOUNCE = "to announce"
    ANNOUNCED = "announced"
    ANNOUNCED_IN_THREAD = "announced in digest thread"
    FOUND = "announced (found in Slack)"
    FOUND_IN_THREAD = "announced in digest thread (found in Slack)"
    ANNOUNCED_IN_STREAK = "announced in its incident's thread"
    FOUND_IN_STREAK = "announced in its incident's thread (found in Slack)"
    IN_REAP_REPORT = "announced in the thread of the reap that caused it"
    REMINDED = "announced in its incident's thread and the channel (reminder)"
    ALREADY_ANNOUNCED = "already announced"
    ALREADY_MUTED = "already muted"
    NOT_SENT = "not sent"
    IN_FLIGHT = "in flight in another run"
    MUTED = "muted"
    GONE = "execution no longer exists"
    RECOVERY_NOTHING_OPEN = "recovery: nothing open"
    RECOVERY_OLDER = "recovery: older than the failure"
    RECOVERY_NOT_SENT = "recovery not sent"
    RECOVERY_IN_FLIGHT = "recovery in flight in another run"
    RECOVERY_ANNOUNCED = "recovery announced"


ANNOUNCED = frozenset({Outcome.ANNOUNCED, Outcome.ANNOUNCED_IN_THREAD, Outcome.FOUND, Outcome.FOUND_IN_THREAD,
                       Outcome.ANNOUNCED_IN_STREAK, Outcome.FOUND_IN_STREAK, Outcome.REMINDED,
                       Outcome.IN_REAP_REPORT})


def announced(in_thread: bool, found: bool) -> Outcome:
    """An alert that went out: in a digest's thread or not, posted now or found in Slack."""
    if found:
        return Outcome.FOUND_IN_THREAD if in_thread else Outcome.FOUND
    return Outcome.ANNOUNCED_IN_THREAD if in_thread else Outcome.ANNOUNCED


# ---- drill-down ----

@dataclass(frozen=True)
class TaskFailure:
    step: str
    category: str
    reason: str
    job_id: str = ""
    job_name: str = ""
    status_reason: str = ""
    log_stream: str = ""
    attempts: int = 0


@dataclass(frozen=True)
class StepSummary:
    name: str
    submitted: int
    failed: int
    reasons: tuple[tuple[str, int], ...]  # most common first


@dataclass(frozen=True)
class Incident:
    execution: Execution
    environment: str
    flow: str
    owner: str | None
    steps: tuple[StepSummary, ...]
    failures: tuple[TaskFailure, ...]
    execution_error: str = ""  # when nothing in Batch explains the failure
    execution_cause: str = ""

    @property
    def run_id(self) -> str:
        return f"sfn-{self.execution.name}"

    @property
    def submitted(self) -> int:
        return sum(s.submitted for s in self.steps)

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.steps)

    @property
    def reaped_by(self) -> str | None:
        """The reap run (its root run id) that cancelled every failed task, or None. Such a failure
        is the reaper's doing: it is answered in that reap's report thread (inhibition)."""
        runs = {reap_run_of(f.status_reason) for f in self.failures}
        return next(iter(runs)) if len(runs) == 1 and None not in runs else None

    @property
    def first_failure(self) -> TaskFailure | None:
        return next((f for f in self.failures if f.job_id), self.failures[0] if self.failures else None)

    @property
    def headline_reason(self) -> str:
        reasons = Counter(f.reason for f in self.failures)
        if reasons:
            return reasons.most_common(1)[0][0]
        return self.execution_error or self.execution.status.lower()


def _json(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


_DETAIL_KEYS = {
    "TaskScheduled": "taskScheduledEventDetails", "TaskSubmitted": "taskSubmittedEventDetails",
    "TaskFailed": "taskFailedEventDetails", "TaskTimedOut": "taskTimedOutEventDetails",
    "TaskSubmitFailed": "taskSubmitFailedEventDetails", "ExecutionFailed": "executionFailedEventDetails",
    "ExecutionTimedOut": "executionTimedOutEventDetails", "ExecutionAborted": "executionAbortedEventDetails",
}


def _details(event: Mapping[str, Any]) -> Mapping[str, Any]:
    return event.get(_DETAIL_KEYS.get(event.get("type", ""), ""), None) or {}


class _History:
    """Events by id, with each event's state and its task's scheduled parameters, found by
    walking previousEventId (Map iterations interleave, the chain does not)."""

    def __init__(self, events: list[Mapping[str, Any]]):
        self.by_id = {e.get("id"): e for e in events}
        self._state: dict[Any, str] = {}
        self._scheduled: dict[Any, Mapping[str, Any]] = {}

    def _walk(self, event_id: Any) -> Iterable[Mapping[str, Any]]:
        seen = set()
        while event_id in self.by_id and event_id not in seen:
            seen.add(event_id)
            event = self.by_id[event_id]
            yield event
            event_id = event.get("previousEventId")

    def state(self, event: Mapping[str, Any]) -> str:
        key = event.get("id")
        if key not in self._state:
            self._state[key] = next(
                (e["stateEnteredEventDetails"].get("name", "") for e in self._walk(key)
                 if e.get("type", "").endswith("StateEntered") and e.get("stateEnteredEventDetails")), "")
        return self._state[key]

    def scheduled_parameters(self, event: Mapping[str, Any]) -> Mapping[str, Any]:
        key = event.get("id")
        if key not in self._scheduled:
            scheduled = next((e for e in self._walk(key) if e.get("type") == "TaskScheduled"), None)
            params = _json(_details(scheduled).get("parameters")) if scheduled else None
            self._scheduled[key] = (params or {}).get("Parameters") or {} if isinstance(params, dict) else {}
        return self._scheduled[key]


def _step_of(history: _History, event: Mapping[str, Any], job: Mapping[str, Any] | None = None) -> str:
    for params in ((job or {}).get("Parameters") or {}, history.scheduled_parameters(event)):
        if isinstance(params, dict) and params.get("metaflow.step_name"):
            return str(params["metaflow.step_name"])
    return history.state(event).lstrip("#*") or "(execution)"


def drill_down(execution: Execution, events: list[Mapping[str, Any]], environment: str,
               definition: str | None = None) -> Incident:
    """What failed and why, per Metaflow step, from the whole history."""
    history = _History(events)
    submitted: Counter = Counter()
    failures: list[TaskFailure] = []
    seen_jobs: set[str] = set()
    facts: dict[str, str] = {}
    execution_error, execution_cause = "", ""

    def note(params: Mapping[str, Any]) -> None:
        for key in ("metaflow.owner", "metaflow.flow_name"):
            if isinstance(params, dict) and params.get(key) and key not in facts:
                facts[key] = str(params[key])

    for event in events:
        kind, details = event.get("type", ""), _details(event)
        batch = details.get("resourceType") == "batch"
        if kind == "TaskScheduled" and batch:
            note(history.scheduled_parameters(event))
        elif kind == "TaskSubmitted" and batch:
            submitted[_step_of(history, event)] += 1
        elif kind in ("TaskFailed", "TaskTimedOut") and batch:
            job = _json(details.get("cause"))
            if not isinstance(job, dict):
                step = _step_of(history, event)
                text = str(details.get("cause") or details.get("error") or UNKNOWN)[:300]
                failures.append(TaskFailure(step, UNKNOWN, f"{details.get('error', 'error')}: {text}"))
                continue
            job_id = str(job.get("JobId") or "")
            if job_id and job_id in seen_jobs:
                continue
            seen_jobs.add(job_id)
            note(job.get("Parameters") or {})
            category, reason = classify(job)
            if kind == "TaskTimedOut":
                category, reason = TIMEOUT, "Step Functions task timeout"
            container = _last_container(job)
            failures.append(TaskFailure(
                step=_step_of(history, event, job), category=category, reason=reason, job_id=job_id,
                job_name=str(job.get("JobName") or ""), status_reason=str(job.get("StatusReason") or ""),
                log_stream=str(container.get("LogStreamName") or ""), attempts=len(job.get("Attempts") or []),
            ))
        elif kind == "TaskSubmitFailed" or (kind == "TaskFailed" and not batch):
            step = _step_of(history, event)
            failures.append(TaskFailure(step, SUBMIT if kind == "TaskSubmitFailed" else UNKNOWN,
                                        f"{details.get('error', 'error')}: {str(details.get('cause', ''))[:300]}"))
        elif kind in ("ExecutionFailed", "ExecutionTimedOut", "ExecutionAborted") and not execution_error:
            execution_error = details.get("error") or {"ExecutionTimedOut": "States.Timeout",
                                                        "ExecutionAborted": "aborted"}.get(kind, "")
            execution_cause = str(details.get("cause") or "")

    if not execution_error:
        execution_error = execution.error or ("aborted" if execution.status == "ABORTED" else "")
        execution_cause = execution.cause
    failed_by_step: dict[str, list[TaskFailure]] = {}
    for f in failures:
        failed_by_step.setdefault(f.step, []).append(f)
    names = list(dict.fromkeys([*submitted, *failed_by_step]))
    steps = tuple(
        StepSummary(name, submitted[name], len(failed_by_step.get(name, [])),
                    tuple(sorted(Counter(f.reason for f in failed_by_step.get(name, [])).items(),
                                 key=lambda rc: (-rc[1], rc[0]))))
        for name in names)
    owner = facts.get("metaflow.owner") or owner_from_definition(definition)
    flow = facts.get("metaflow.flow_name") or execution.state_machine_name.rsplit(".", 1)[-1]
    batch_explains = any(f.job_id for f in failures)
    return Incident(execution, environment, flow, owner, steps, tuple(failures),
                    "" if batch_explains else execution_error, "" if batch_explains else execution_cause)


# ---- messages ----

@dataclass(frozen=True)
class Links:
    metaflow_ui: str
    dagster_run: str | None = None
    owners: Mapping[str, str] = field(default_factory=dict)

    def run(self, incident: Incident) -> str:
        return f"{self.metaflow_ui}/{incident.flow}/{incident.run_id}"

    def task(self, incident: Incident, failure: TaskFailure) -> str:
        url = f"{self.run(incident)}/{failure.step}/{failure.job_id}"
        return f"{url}?attempt={max(0, failure.attempts - 1)}" if failure.attempts else url

    @staticmethod
    def console(execution: Execution) -> str:
        region = execution.region
        return (f"https://{region}.console.aws.amazon.com/states/home?region={region}"
                f"#/v2/executions/details/{execution.arn}")

    def owner(self, owner: str | None) -> str:
        if not owner:
            return "unknown"
        slack_id = self.owners.get(owner)
        return f"<@{slack_id}>" if slack_id else escape(owner)


_STATUS_WORDS = {"FAILED": "failed", "TIMED_OUT": "timed out", "ABORTED": "was aborted"}
MAX_STEP_LINES = 12


def step_line(step: StepSummary) -> str:
    """'train: 47 of 50 failed: 45 out of memory, 2 exit 1'."""
    reasons = ", ".join(f"{n} {escape(r)}" for r, n in step.reasons[:4])
    more = len(step.reasons) - 4
    if more > 0:
        reasons += f", {more} other reason{'s' if more > 1 else ''}"
    total = f" of {step.submitted}" if step.submitted else ""
    return f"• `{escape(step.name)}`: {step.failed}{total} failed" + (f": {reasons}" if reasons else "")


def _duration(execution: Execution) -> str:
    if execution.stopped_at is None:
        return "still running"
    seconds = (execution.stopped_at - execution.started_at).total_seconds()
    return f"{int(seconds)}s" if seconds < 60 else format_duration(timedelta(seconds=seconds))


def _code_block(lines: list[str], budget: int) -> str:
    """The newest log lines that fit, fenced; never cut mid-markup."""
    kept: list[str] = []
    used = 8
    for line in reversed(lines):
        clean = escape(line.replace("```", "'''"))[:500]
        if used + len(clean) + 1 > budget:
            break
        kept.insert(0, clean)
        used += len(clean) + 1
    return "```\n" + "\n".join(kept) + "\n```" if kept else ""


def render_incident(incident: Incident, links: Links, log_lines: list[str] | None = None) -> SlackMessage:
    """One message per failed execution, readable on a phone, inside Block Kit's limits."""
    ex = incident.execution
    status = _STATUS_WORDS.get(ex.status, ex.status.lower())
    title = f"{incident.flow} {status} in {incident.environment}"
    owner = links.owner(incident.owner)
    tasks = f"{incident.failed} of {incident.submitted}" if incident.submitted else str(incident.failed)
    fields = [
        f"*Failed tasks*\n{tasks}", f"*Duration*\n{_duration(ex)}", f"*Owner*\n{owner}",
        f"*Run*\n<{links.run(incident)}|{escape(incident.run_id)}>",
        f"*State machine*\n`{escape(ex.state_machine_name)}`", f"*Account*\n{incident.environment} ({ex.account})",
    ]
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": f":red_circle: {title}"[:MAX_HEADER_CHARS]}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f[:2000]} for f in fields]},
    ]
    lines = [step_line(s) for s in incident.steps if s.failed][:MAX_STEP_LINES]
    hidden = sum(1 for s in incident.steps if s.failed) - len(lines)
    if hidden > 0:
        lines.append(f"…and {hidden} more failed steps")
    for text in pack(["*What failed*", *lines] if lines else []):
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    first = incident.first_failure
    if first and first.job_id:
        task = f"<{links.task(incident, first)}|{escape(first.job_id[:8])}>"
        detail = (f"*First failure*: `{escape(first.step)}` task {task}"
                  f"{f' after {first.attempts} attempts' if first.attempts > 1 else ''}: {escape(first.reason)}")
        if first.status_reason and first.status_reason not in first.reason:
            detail += f"\n_{escape(first.status_reason[:500])}_"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": detail[:MAX_SECTION_CHARS]}})
    elif incident.execution_error or first:
        what = incident.execution_error or first.reason
        cause = incident.execution_cause if incident.execution_error else ""
        text = f"*Execution error*: `{escape(what[:200])}`" + (f"\n{escape(cause[:1500])}" if cause else "")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:MAX_SECTION_CHARS]}})
    if log_lines:
        header = (f"*Last {len(log_lines)} log lines* of `{escape(first.job_name or first.job_id)}`" if first
                  else "*Logs*")
        code = _code_block(log_lines, MAX_SECTION_CHARS - len(header) - 1)
        if code:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"{header}\n{code}"}})
    buttons = [("Metaflow run", links.run(incident))]
    if first and first.job_id:
        buttons.append(("Failed task", links.task(incident, first)))
    buttons.append(("Step Functions", links.console(ex)))
    if links.dagster_run:
        buttons.append(("Dagster run", links.dagster_run))
    blocks.append({"type": "actions", "elements": [
        {"type": "button", "text": {"type": "plain_text", "text": label}, "url": url[:3000]}
        for label, url in buttons]})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text":
                   f"execution `{escape(ex.name)}` · {ex.region} · stopped {ex.stopped_at:%Y-%m-%d %H:%M UTC}"
                   if ex.stopped_at else f"execution `{escape(ex.name)}`"}]})
    text = f"{title} ({incident.run_id}): {tasks} tasks failed ({incident.headline_reason[:300]}). Owner: {owner}."
    return SlackMessage(text=text, blocks=tuple(blocks[:MAX_BLOCKS]))


def digest_line(incident: Incident, links: Links) -> str:
    ex = incident.execution
    tasks = f"{incident.failed}/{incident.submitted} tasks" if incident.submitted else "no task"
    return (f"• *{escape(incident.flow)}* {_STATUS_WORDS.get(ex.status, ex.status.lower())} in {incident.environment}"
            f" · {tasks} · {escape(incident.headline_reason[:120])} · {links.owner(incident.owner)}"
            f" · <{links.run(incident)}|{escape(incident.run_id)}>")


def render_digest(incidents: list[Incident], links: Links) -> SlackMessage:
    """One message for a storm: a line per execution, details follow in its thread."""
    title = f":rotating_light: {len(incidents)} Metaflow runs failed"
    lines = [digest_line(i, links) for i in incidents]
    blocks: list[dict] = [{"type": "header", "text": {"type": "plain_text", "text": title[:MAX_HEADER_CHARS]}}]
    for text in pack(lines):
        if len(blocks) >= MAX_BLOCKS - 1:
            break
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": "Details of each run in this thread."}]})
    flows = Counter(i.flow for i in incidents)
    text = f"{len(incidents)} Metaflow runs failed: " + ", ".join(f"{f} x{n}" for f, n in flows.most_common(5))
    return SlackMessage(text=text, blocks=tuple(blocks))


def render_recovery(execution: Execution, flow: str, links: Links, environment: str = "",
                    streak: Streak | None = None) -> SlackMessage:
    run_url = f"{links.metaflow_ui}/{flow}/sfn-{execution.name}"
    when = f" at {execution.stopped_at:%H:%M UTC}" if execution.stopped_at else ""
    where = f" in {escape(environment)}" if environment else ""
    after = ""
    if streak and execution.stopped_at:
        runs = f"{streak.failures} failed run{'s' if streak.failures != 1 else ''}"
        took = format_duration(timedelta(milliseconds=to_epoch_ms(execution.stopped_at) - streak.first_stopped_ms))
        after = f", after {runs} over {took}"
    text = (f":white_check_mark: Recovered: {escape(flow)}{where} run <{run_url}|sfn-{escape(execution.name)}>"
            f" succeeded{when}{after}.")
    return SlackMessage(text=text, blocks=({"type": "section", "text": {"type": "mrkdwn", "text": text}},))


def render_run_failure(job_name: str, run_id: str, error: str, run_url: str) -> SlackMessage:
    """A failed run of platform-ops itself (e.g. a reap or alert run)."""
    title = f":warning: platform-ops job {job_name} failed"
    detail = escape(error.strip()[:1500]) or "no error message"
    blocks = (
        {"type": "header", "text": {"type": "plain_text", "text": title[:MAX_HEADER_CHARS]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"```\n{detail.replace('```', chr(39) * 3)}\n```"}},
        {"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Dagster run"},
                                          "url": run_url}]},
    )
    return SlackMessage(text=f"platform-ops job {job_name} failed (run {run_id[:8]}): {error.strip()[:200]}",
                        blocks=blocks)


# ---- an alert run, planned ----

@dataclass(frozen=True)
class Result:
    """What became of one execution in an alert run: a row of the run's metadata."""

    ref: Ref
    outcome: Outcome
    detail: str = ""

    def row(self) -> dict[str, str]:
        return {**self.ref.row(), "result": str(self.outcome), "detail": self.detail}


def skipped(ref: Ref, step: exactly_once.Step, record: Mapping[str, Any] | None) -> Result | None:
    """Nothing to send, by the ledger alone: it went out (or was muted) before, or another live
    run is sending it. None: look into it."""
    if step is exactly_once.Step.DONE:
        outcome = Outcome.ALREADY_MUTED if record.get("state") == "muted" else Outcome.ALREADY_ANNOUNCED
        return Result(ref, outcome, record.get("ts", ""))
    if step is exactly_once.Step.BUSY:
        return Result(ref, Outcome.IN_FLIGHT, record.get("run_id") or "")
    return None


class Silence(Protocol):
    """A silence as the settings give it: state machines matching a glob, muted until a time."""

    state_machine_pattern: str
    until: datetime
    reason: str


@dataclass(frozen=True)
class Mute:
    """Record the execution as muted in the ledger, announce nothing."""

    ref: Ref
    reason: str
    until: datetime

    @property
    def result(self) -> Result:
        return Result(self.ref, Outcome.MUTED, f"{self.reason} (until {self.until:%Y-%m-%d %H:%M})")


def screen(ref: Ref, execution: Execution | None, silences: Iterable[Silence], now: datetime) -> Result | Mute | None:
    """Before the drill-down: gone (e.g. its state machine was deleted), silenced, or (None) drill
    into it."""
    if execution is None:
        return Result(ref, Outcome.GONE)
    name = execution.state_machine_name
    silence = next((s for s in silences if now < s.until and fnmatch.fnmatchcase(name, s.state_machine_pattern)),
                   None)
    return Mute(ref, silence.reason, silence.until) if silence else None


@dataclass(frozen=True)
class Finding:
    """An execution drilled into, to announce: what failed, and its first failed task's last log lines."""

    ref: Ref
    incident: Incident
    log_tail: list[str] | None = None

    @property
    def result(self) -> Result:
        i = self.incident
        return Result(self.ref, Outcome.TO_ANNOUNCE, f"{i.failed}/{i.submitted} tasks: {i.headline_reason}")


class Kind(StrEnum):
    """What a post announces (also its Slack metadata's `kind`)."""

    EXECUTION = "execution"
    DIGEST = "digest"
    RECOVERY = "recovery"


@dataclass(frozen=True)
class Post:
    """One Slack message to send exactly once under `key`, and what the ledger learns once it is
    out: an execution's failure opens (its recovery answers in its thread), a recovery closes it."""

    key: str
    kind: Kind
    message: SlackMessage
    label: str  # names it in an error (an execution's post: the execution's name)
    ref: Ref | None = None  # the execution it announces; none for a digest
    thread_ts: str | None = None
    in_digest: bool = False  # goes in the thread of the run's digest, known once the digest is out
    summary: str = ""  # its row's detail while it is not out
    stopped_ms: int = 0  # of the execution it announces (a failure, or the success that recovers)
    payload: Mapping[str, Any] = field(default_factory=dict)
    streak: bool = False  # a further failure of a state machine already failing: a reply in its thread
    reaped_by: str = ""  # caused by this reap run's cancels: a reply in its report's thread
    affected: str = ""  # how the report names the run it failed
    broadcast: bool = False  # the reply is also shown in the channel (a reminder)

    def opened(self, ts: str | None) -> dict[str, Any]:
        """The ledger's open failure after an execution's post: where its recovery replies."""
        return {"thread_ts": self.thread_ts or ts, "stopped_ms": self.stopped_ms,
                "execution": self.label}


@dataclass(frozen=True)
class Posts:
    """What to send, in order: in a storm a digest first, the rest in its thread."""

    digest: Post | None
    posts: tuple[Post, ...]


def digest_key(failures: Iterable[Ref]) -> str:
    """The digest of a set of failures: the same set, however often it is run, has one."""
    return f"digest/{ids_digest([f.execution_arn for f in failures])}"


def plan_posts(findings: list[Finding], asked: list[Ref], links: Links, threshold: int,
               digest_record: Mapping[str, Any] | None, reports: Mapping[str, str] | None = None) -> Posts:
    """One message per execution to announce; in a storm (more than `threshold`, or a digest
    already claimed for this set) a digest first, with the details in its thread. A failure the
    reaper caused (every failed task cancelled by one reap whose report is in `reports`, root run
    id -> the report's ts) is a reply in that report's thread instead, outside any storm."""
    reports = reports or {}
    caused = tuple(_caused_by_reap(f, links, reports[f.incident.reaped_by]) for f in findings
                   if f.incident.reaped_by in reports)
    findings = [f for f in findings if f.incident.reaped_by not in reports]
    if not findings:
        return Posts(None, caused)
    if caused:
        planned = plan_posts(findings, asked, links, threshold, digest_record)
        return Posts(planned.digest, planned.posts + caused)
    storm = exactly_once.is_storm(len(findings), threshold, digest_record)
    posts = tuple(_execution_post(f, links, in_digest=storm) for f in findings)
    if not storm:
        return Posts(None, posts)
    digest = Post(digest_key(asked), Kind.DIGEST, render_digest([f.incident for f in findings], links), "digest",
                  payload={"kind": Kind.DIGEST.value, "executions": len(asked)})
    return Posts(digest, posts)


def _caused_by_reap(finding: Finding, links: Links, report_ts: str) -> Post:
    post = _execution_post(finding, links, in_digest=False)
    return dataclasses.replace(post, thread_ts=report_ts, reaped_by=finding.incident.reaped_by,
                               affected=affected_line(finding.incident),
                               payload={**post.payload, "reaped_by": finding.incident.reaped_by})


def render_report_with_affected(report: Mapping[str, Any], affected: Iterable[str]) -> SlackMessage:
    """The reaper's report as it was posted, plus the runs its cancels failed (chat.update)."""
    line = "*Runs failed by these cancels* (details in the thread): " + ", ".join(affected)
    blocks = [*report.get("blocks", [])][:MAX_BLOCKS - 1]
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": line[:MAX_SECTION_CHARS]}]})
    return SlackMessage(text=report.get("text", ""), blocks=tuple(blocks))


def affected_line(incident: Incident) -> str:
    return f"{escape(incident.flow)} in {escape(incident.environment)} (`{escape(incident.run_id)}`)"


def _execution_post(finding: Finding, links: Links, in_digest: bool) -> Post:
    ex = finding.incident.execution
    return Post(f"execution/{ex.arn}", Kind.EXECUTION, render_incident(finding.incident, links, finding.log_tail),
                ex.name, finding.ref, in_digest=in_digest, summary=finding.result.detail,
                stopped_ms=to_epoch_ms(ex.stopped_at) if ex.stopped_at else 0,
                payload={"kind": Kind.EXECUTION.value, "execution_arn": ex.arn})


def after_digest(plan: Posts, how: str | None, ts: str | None) -> tuple[list[Post], list[Result]]:
    """The posts that go out once the digest's post answered (`how` as post_once says it, None if
    it failed), in its thread; and the results of those held back: when another live run is
    sending the digest, the details are that run's too. Failed, they wait for the retry."""
    if how == "busy":
        return [], [delivered(p, how, None) for p in plan.posts]
    if how is None or not ts:
        return [], []
    return [dataclasses.replace(p, thread_ts=ts) if p.in_digest else p for p in plan.posts], []


def delivered(post: Post, how: str, ts: str | None) -> Result:
    """A post's result once post_once answered: `busy` (another live run claimed it), or out
    (`posted`, `found` in Slack after a lost answer, `already` confirmed)."""
    recovery = post.kind is Kind.RECOVERY
    if how == "busy":
        return Result(post.ref, Outcome.RECOVERY_IN_FLIGHT if recovery else Outcome.IN_FLIGHT,
                      "" if recovery else post.summary)
    if recovery:
        return Result(post.ref, Outcome.RECOVERY_ANNOUNCED, post.thread_ts or "")
    if post.reaped_by:
        return Result(post.ref, Outcome.IN_REAP_REPORT, ts or "")
    if post.streak:
        outcome = Outcome.FOUND_IN_STREAK if how == "found" else (
            Outcome.REMINDED if post.broadcast else Outcome.ANNOUNCED_IN_STREAK)
        return Result(post.ref, outcome, ts or "")
    return Result(post.ref, announced(in_thread=bool(post.thread_ts), found=how == "found"), ts or "")


def not_sent(post: Post, error: str) -> Result:
    """Slack refused or could not be reached: the claim stays, the retry looks before posting."""
    return Result(post.ref, Outcome.RECOVERY_NOT_SENT if post.kind is Kind.RECOVERY else Outcome.NOT_SENT, error)


def plan_recovery(ref: Ref, opened: Mapping[str, Any] | None, execution: Execution | None,
                  links: Links) -> Result | Post:
    """A success answers in its state machine's open failure's thread, if it came after that
    failure; else it is only recorded."""
    if not opened:
        return Result(ref, Outcome.RECOVERY_NOTHING_OPEN)
    if execution is None:
        return Result(ref, Outcome.GONE)
    if not execution.stopped_at or to_epoch_ms(execution.stopped_at) <= opened.get("stopped_ms", 0):
        return Result(ref, Outcome.RECOVERY_OLDER)
    flow = execution.state_machine_name.rsplit(".", 1)[-1]
    message = render_recovery(execution, flow, links, ref.environment, Streak.from_record(opened))
    return Post(f"recovery/{ref.execution_arn}", Kind.RECOVERY, message,
                f"recovery {execution.name}", ref, thread_ts=opened["thread_ts"],
                stopped_ms=to_epoch_ms(execution.stopped_at),
                payload={"kind": Kind.RECOVERY.value, "execution_arn": ref.execution_arn})


# ---- failure streaks: one incident per state machine that keeps failing ----

def in_streak(post: Post, streak: Streak | None, now_ms: int, repeat_interval: timedelta) -> Post:
    """An execution's post when its state machine is already failing: a reply in the incident's
    thread, not a new top-level message (nor a digest line); broadcast as a reminder when the
    channel was last told `repeat_interval` ago or more."""
    if post.kind is not Kind.EXECUTION or streak is None:
        return post
    broadcast = streak.reminder_due(now_ms, repeat_interval)
    message = post.message
    if broadcast:
        message = as_reminder(post.message, streak.with_failure(post.label, post.stopped_ms), now_ms)
    return dataclasses.replace(post, thread_ts=streak.thread_ts, in_digest=False, streak=True,
                               broadcast=broadcast, message=message,
                               payload={**post.payload, "further_failure": True})


def streak_after(post: Post, ts: str | None, streak: Streak | None, now_ms: int) -> Streak:
    """The incident once an execution's post is out: opened by the first failure (its message is
    the one updated later), or one failure longer (and reminded, if the reply was broadcast)."""
    if streak is None:
        return Streak.opened(post.thread_ts or ts or "", ts or "", post.label, post.stopped_ms, post.message)
    longer = streak.with_failure(post.label, post.stopped_ms)
    return longer.reminded(now_ms) if post.broadcast else longer


def streaks_of(records: Mapping[str, Mapping[str, Any]]) -> dict[str, Streak]:
    """The ledger's open failures, by state machine, as streaks."""
    return {arn: streak for arn, record in records.items() if (streak := Streak.from_record(record))}


@dataclass
class Report:
    """What an alert run did: a result per execution, in the order asked (the last word on each
    counts), and the posts that failed."""

    results: dict[str, Result] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    posted: dict[str, str] = field(default_factory=dict)  # label -> ts of each message out (to link)

    def record(self, *results: Result) -> None:
        for result in results:
            self.results[result.ref.execution_arn] = result

    def failed(self, post: Post, error: str) -> None:
        self.errors.append(f"{post.label}: {error}")
        if post.ref is not None:
            self.record(not_sent(post, error))

    @property
    def counts(self) -> dict[str, int]:
        """By the words, as the metadata shows them."""
        return dict(Counter(str(r.outcome) for r in self.results.values()))

    @property
    def announced(self) -> int:
        return sum(1 for r in self.results.values() if r.outcome in ANNOUNCED)

    @property
    def rows(self) -> list[dict[str, str]]:
        return [r.row() for r in self.results.values()]
