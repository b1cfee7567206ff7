"""The reaper's decisions, as pure functions over BatchJob observations.

Filters first (what is stuck, what may be cancelled), actions after (what was asked, what actually
happened), in the manner of Cloud Custodian. Nothing here talks to AWS, Slack or Dagster.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from platform_ops.messages import MAX_BLOCKS, MAX_HEADER_CHARS, MAX_SECTION_CHARS, SlackMessage, escape, pack
from platform_ops.observations import BatchJob, CancelResult
from platform_ops.vocabulary import REASON_PREFIX, format_duration, from_epoch_ms, reap_reason_suffix, to_epoch_ms

RUNNABLE = "RUNNABLE"
OWNER_TAG = "metaflow.owner"  # Metaflow tags every Batch job with the user who ran the flow


@dataclass(frozen=True)
class ReapPolicy:
    threshold: timedelta
    dry_run: bool
    max_cancels: int
    protect_tag: str


def runnable_since(job: BatchJob) -> datetime:
    """When the job (re-)entered RUNNABLE: a retried job comes back to RUNNABLE after its last
    attempt stopped and must not be judged by its first attempt's createdAt."""
    if job.last_attempt_stopped_at and job.last_attempt_stopped_at > job.created_at:
        return job.last_attempt_stopped_at
    return job.created_at


def stuck_candidates(jobs: Iterable[BatchJob], threshold: timedelta, now: datetime) -> list[BatchJob]:
    """RUNNABLE jobs created longer than `threshold` ago, oldest first. A summary has no attempts,
    so this is only a first cut: the run re-checks every candidate against its details."""
    cutoff = now - threshold
    stuck = [job for job in jobs if job.status == RUNNABLE and job.created_at <= cutoff]
    return sorted(stuck, key=lambda job: (job.created_at, job.job_id))


JOB_EVENT = "Batch Job State Change"


@dataclass(frozen=True)
class JobChange:
    """A "Batch Job State Change" event: job `job_id` of `queue` entered `status` at `at`."""

    job_id: str
    queue: str
    status: str
    at: datetime


def job_changes_from_events(bodies: Iterable[str]) -> tuple[list[JobChange], int]:
    """The Batch job transitions in EventBridge envelopes (as SQS delivers them), in the order
    they happened; and how many bodies were anything else (other events, malformed). The
    envelope's `time` is the transition time: a retried job re-enters RUNNABLE long after its
    createdAt."""
    changes, other = [], 0
    for body in bodies:
        try:
            event = json.loads(body)
            if event.get("detail-type") != JOB_EVENT:
                raise ValueError("not a Batch job event")
            detail = event["detail"]
            at = datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
            if at.tzinfo is None:
                raise ValueError("event time without a zone")
            changes.append(JobChange(detail["jobId"], detail["jobQueue"].rsplit("/", 1)[-1], detail["status"], at))
        except (ValueError, KeyError, TypeError, AttributeError):
            other += 1
    return sorted(changes, key=lambda c: c.at), other


QUEUE_BLOCKED_EVENT = "Batch Job Queue Blocked"
MAX_BLOCK_REASON_CHARS = 300  # a block is kept per queue in the instance: bounded


@dataclass(frozen=True)
class QueueBlock:
    """Batch said job `job_id` is blocking `queue` since `since`, for `reason` (its statusReason,
    e.g. "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job resource requirement ... is higher
    than that can be met by the CE(s) attached to the job queue.")."""

    queue: str
    job_id: str
    since: datetime
    reason: str

    @property
    def category(self) -> str:
        return classify(self.reason)


def queue_blocks_from_events(bodies: Iterable[str]) -> list[QueueBlock]:
    """The "Batch Job Queue Blocked" events among EventBridge envelopes, oldest first.

    The shape relied on, from the AWS Batch User Guide, "Job queue blocked events"
    (https://docs.aws.amazon.com/batch/latest/userguide/batch-job-queue-blocked-events.html):
    source `aws.batch`, detail-type "Batch Job Queue Blocked", `time` (ISO 8601, UTC), and a
    `detail` that "resembles the JobDetail object" of DescribeJobs for the job at the head of the
    queue: `jobId`, `jobName`, `jobArn`, `jobQueue` (the queue's ARN), `status` ("RUNNABLE"),
    `statusReason` (the blocking reason, "the same reason ... in the statusReason field in the
    DescribeJobs API action"; categories as in "Jobs stuck in a RUNNABLE status"), `createdAt`.
    Anything else, or a body missing these, is not a block."""
    blocks = []
    for body in bodies:
        try:
            event = json.loads(body)
            if event.get("detail-type") != QUEUE_BLOCKED_EVENT or event.get("source") != "aws.batch":
                continue
            detail = event["detail"]
            at = datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
            if at.tzinfo is None:
                continue
            reason = str(detail.get("statusReason") or "")[:MAX_BLOCK_REASON_CHARS]
            blocks.append(QueueBlock(detail["jobQueue"].rsplit("/", 1)[-1], str(detail["jobId"]), at, reason))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return sorted(blocks, key=lambda b: b.since)


def track_blocks(blocks: Mapping[str, QueueBlock], new: Iterable[QueueBlock],
                 queues: Iterable[str]) -> dict[str, QueueBlock]:
    """One block per watched queue: a later event keeps the block's earlier `since` (the queue has
    been blocked all along) and takes its job and reason (what blocks it now)."""
    watched, result = set(queues), dict(blocks)
    for block in new:
        if block.queue in watched:
            earlier = result.get(block.queue)
            result[block.queue] = replace(block, since=min(earlier.since, block.since)) if earlier else block
    return result


def lift_blocks(blocks: Mapping[str, QueueBlock], watch: Mapping[str, tuple[str, datetime]]) -> dict[str, QueueBlock]:
    """A block lasts while its job is RUNNABLE: once the watch lost it (an event, a reap run's
    describe, a reconciling listing, the age bound), the queue is no longer known to be blocked."""
    return {queue: b for queue, b in blocks.items() if b.job_id in watch}


def block_changes(blocks: Iterable[QueueBlock]) -> list[JobChange]:
    """A blocked queue's job is RUNNABLE at the event's time: watched from then at the latest."""
    return [JobChange(b.job_id, b.queue, RUNNABLE, b.since) for b in blocks]


def blocks_record(blocks: Mapping[str, QueueBlock]) -> dict[str, list]:
    """The blocks as stored: queue -> [job id, since in epoch ms, reason] (JSON, compact)."""
    return {queue: [b.job_id, to_epoch_ms(b.since), b.reason] for queue, b in blocks.items()}


def blocks_from_record(record: Mapping[str, list]) -> dict[str, QueueBlock]:
    return {queue: QueueBlock(queue, job_id, from_epoch_ms(ms), reason)
            for queue, (job_id, ms, reason) in record.items()}


def block_text(block: QueueBlock) -> str:
    """'queue ml-production blocked since 2026-12-01 10:02 UTC: MISCONFIGURATION:... - ...'."""
    since = block.since.astimezone(UTC)
    return f"queue {block.queue} blocked since {since:%Y-%m-%d %H:%M} UTC: {block.reason or UNKNOWN}"


def track_runnable(watch: Mapping[str, tuple[str, datetime]], changes: Iterable[JobChange],
                   queues: Iterable[str]) -> dict[str, tuple[str, datetime]]:
    """The jobs of `queues` whose last event said RUNNABLE, with when they entered it: any other
    status drops a job; a repeated RUNNABLE event (SQS delivers at least once) keeps the earlier
    time. What events miss, polling reconciliation finds; the reap run re-checks everything."""
    watched = set(queues)
    result = dict(watch)
    for change in changes:
        if change.status != RUNNABLE:
            result.pop(change.job_id, None)
        elif change.queue in watched:
            queue, since = result.get(change.job_id, (change.queue, change.at))
            result[change.job_id] = (queue, min(since, change.at))
    return result


def due(watch: Mapping[str, tuple[str, datetime]], threshold: Callable[[str], timedelta],
        now: datetime) -> dict[str, list[str]]:
    """Per queue, the watched jobs RUNNABLE for at least the queue's threshold, oldest first."""
    by_queue: dict[str, list[tuple[datetime, str]]] = {}
    for job_id, (queue, since) in watch.items():
        if now - since >= threshold(queue):
            by_queue.setdefault(queue, []).append((since, job_id))
    return {queue: [job_id for _, job_id in sorted(jobs)] for queue, jobs in sorted(by_queue.items())}


def settle(watch: Mapping[str, tuple[str, datetime]], checked: Iterable[str], found: Mapping[str, BatchJob],
           observed_at: datetime) -> dict[str, tuple[str, datetime]]:
    """The watch after DescribeJobs of `checked` (sent at `observed_at`, e.g. by a reap run): a job
    Batch no longer knows or that left RUNNABLE goes, so a lost terminal event cannot keep it due;
    one still RUNNABLE keeps the later RUNNABLE-since of both. An entry newer than the describe
    (a later event) is not the job the describe saw, and stays."""
    result = dict(watch)
    for job_id in checked:
        if job_id not in result or result[job_id][1] > observed_at:
            continue
        queue, since = result[job_id]
        job = found.get(job_id)
        if job is None or job.status != RUNNABLE:
            del result[job_id]
        else:
            result[job_id] = (queue, max(since, runnable_since(job)))
    return result


def reconcile(watch: Mapping[str, tuple[str, datetime]], queue: str, listed: Iterable[str],
              listed_at: datetime) -> dict[str, tuple[str, datetime]]:
    """The watch after a complete RUNNABLE listing of `queue` begun at `listed_at`: the queue's jobs
    it did not show have moved on or are gone, unless they entered RUNNABLE after it began."""
    shown = set(listed)
    return {job_id: (q, since) for job_id, (q, since) in watch.items()
            if q != queue or job_id in shown or since >= listed_at}


def expire(watch: Mapping[str, tuple[str, datetime]], now: datetime,
           max_age: timedelta) -> dict[str, tuple[str, datetime]]:
    """Entries RUNNABLE for longer than `max_age` go: the bound on what lost events and missed
    reconciliations can leave behind (the listing still finds a job that really is there)."""
    return {job_id: (queue, since) for job_id, (queue, since) in watch.items() if now - since <= max_age}


class Watched(NamedTuple):
    """A watch entry: the job's queue and when it entered RUNNABLE (equal to the plain tuple)."""

    queue: str
    since: datetime


class Described(NamedTuple):
    """A DescribeJobs of `job_ids`, sent at `at`, and what Batch said of them."""

    job_ids: list[str]
    found: Mapping[str, BatchJob]
    at: datetime


def follow_events(watch: Mapping[str, tuple[str, datetime]], changes: Iterable[JobChange], queues: Iterable[str],
                  now: datetime, max_age: timedelta) -> dict[str, tuple[str, datetime]]:
    """The watch after a batch of events: tracked, then bounded by age."""
    return expire(track_runnable(watch, changes, queues), now, max_age)


def settle_all(watch: Mapping[str, tuple[str, datetime]], observed: Iterable[Described]
               ) -> dict[str, tuple[str, datetime]]:
    """The watch after every describe of a reap run, in the order they were sent."""
    result = dict(watch)
    for job_ids, found, at in observed:
        result = settle(result, job_ids, found, at)
    return result


def reconcile_all(watch: Mapping[str, tuple[str, datetime]], listed: Mapping[str, Iterable[str]],
                  listed_at: datetime) -> dict[str, tuple[str, datetime]]:
    """The watch after complete listings (queue -> RUNNABLE ids) begun at `listed_at`."""
    result = dict(watch)
    for queue, job_ids in listed.items():
        result = reconcile(result, queue, job_ids, listed_at)
    return result


def watch_record(watch: Mapping[str, tuple[str, datetime]]) -> dict[str, list]:
    """The watch as it is stored: job id -> [queue, RUNNABLE-since in epoch ms] (JSON, compact)."""
    return {job_id: [queue, to_epoch_ms(since)] for job_id, (queue, since) in watch.items()}


def watch_from_record(record: Mapping[str, list]) -> dict[str, Watched]:
    """The watch from its stored form (`watch_record`)."""
    return {job_id: Watched(queue, from_epoch_ms(ms)) for job_id, (queue, ms) in record.items()}


def lists_now(event_driven: bool, last_listed: datetime | None, now: datetime, interval: timedelta) -> bool:
    """Whether a tick lists an environment: always where polling carries it; where events do,
    only to reconcile, once the interval since the last complete listing has passed."""
    if not event_driven or last_listed is None:
        return True
    return to_epoch_ms(now) - to_epoch_ms(last_listed) >= interval.total_seconds() * 1000


# statusReason category -> (what it means, what to do)
REASON_HINTS: dict[str, tuple[str, str]] = {
    "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT": (
        "asks for more vCPU/memory than any instance type of the compute environment",
        "lower the step's @resources/@batch ask, or add a bigger instance type to the compute environment",
    ),
    "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY": (
        "EC2 has no capacity for the compute environment's instance types",
        "allow more instance types or subnets/AZs, or add an on-demand fallback compute environment",
    ),
    "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE": (
        "needs more vCPU than the compute environment's maxvCpus",
        "raise maxvCpus of the compute environment or lower the job's vCPU ask",
    ),
    "MISCONFIGURATION:SERVICE_ROLE_PERMISSIONS": (
        "Batch's service role lacks the permissions to scale the compute environment",
        "attach AWSBatchServiceRole (or the service-linked role) to the compute environment",
    ),
}
UNKNOWN = "UNKNOWN"
UNKNOWN_HINT = (
    "Batch gave no blocking reason",
    "check the compute environment is VALID and ENABLED and that instances join its ECS cluster "
    "(ECS agent, instance role, awslogs driver, NAT/internet access)",
)


def classify(status_reason: str) -> str:
    """The statusReason's category, e.g. 'CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY', or UNKNOWN."""
    head = (status_reason or "").split(" - ", 1)[0].strip()
    return head if head in REASON_HINTS else UNKNOWN


def hint(category: str) -> tuple[str, str]:
    return REASON_HINTS.get(category, UNKNOWN_HINT)


class Outcome(StrEnum):
    """What the reaper decided for a job, then what became of it; each value is the words the
    run's metadata and the Slack report show."""

    # decided, from fresh details
    CANCEL = "cancel"
    WOULD_CANCEL = "would cancel (dry run)"
    SKIP_GONE = "skipped: Batch no longer knows the job"
    SKIP_NOT_RUNNABLE = "skipped: no longer RUNNABLE"
    SKIP_PROTECTED = "skipped: protected by tag"
    SKIP_RETRIED = "skipped: re-entered RUNNABLE after a retry, under the threshold"
    SKIP_BREAKER = "skipped: breaker tripped"
    # found after the cancel
    CANCELLED = "cancelled"
    CANCEL_PENDING = "cancel requested, still RUNNABLE"
    NOT_CANCELLED = "not cancelled"  # shown with the status it moved on to
    CANCEL_FAILED = "cancel failed"  # shown with the error


@dataclass(frozen=True)
class Decision:
    job_id: str
    action: Outcome
    job: BatchJob | None = None
    runnable_for: timedelta = timedelta(0)
    protected_by: str = ""  # the protect tag's value: why its owner asked to keep it

    @property
    def category(self) -> str:
        return classify(self.job.status_reason) if self.job else UNKNOWN


@dataclass(frozen=True)
class ReapPlan:
    decisions: tuple[Decision, ...]
    eligible: int  # stuck jobs that passed every filter, before the breaker
    breaker_tripped: bool

    def with_action(self, action: Outcome) -> list[Decision]:
        return [d for d in self.decisions if d.action == action]


def plan_reap(candidate_ids: Iterable[str], details: Mapping[str, BatchJob], policy: ReapPolicy,
              now: datetime) -> ReapPlan:
    """Decide per candidate from fresh DescribeJobs details: cancel the oldest stuck jobs up to
    the breaker cap, skip the rest with the reason why."""
    decisions: list[Decision] = []
    eligible: list[Decision] = []
    for job_id in dict.fromkeys(candidate_ids):
        job = details.get(job_id)
        if job is None:
            decisions.append(Decision(job_id, Outcome.SKIP_GONE))
            continue
        age = now - runnable_since(job)
        if job.status != RUNNABLE:
            decisions.append(Decision(job_id, Outcome.SKIP_NOT_RUNNABLE, job, age))
        elif policy.protect_tag in job.tags:
            decisions.append(Decision(job_id, Outcome.SKIP_PROTECTED, job, age, job.tags[policy.protect_tag]))
        elif age < policy.threshold:
            decisions.append(Decision(job_id, Outcome.SKIP_RETRIED, job, age))
        else:
            eligible.append(Decision(job_id, Outcome.CANCEL, job, age))
    eligible.sort(key=lambda d: (-d.runnable_for, d.job_id))
    act = Outcome.WOULD_CANCEL if policy.dry_run else Outcome.CANCEL
    for i, d in enumerate(eligible):
        action = act if i < policy.max_cancels else Outcome.SKIP_BREAKER
        decisions.append(Decision(d.job_id, action, d.job, d.runnable_for))
    return ReapPlan(tuple(decisions), len(eligible), len(eligible) > policy.max_cancels)


MAX_REASON_CHARS = 1024  # CancelJobs' reason; Batch keeps no more


def cancel_reason(runnable_for: timedelta, threshold: timedelta, category: str, root_run_id: str = "") -> str:
    """The statusReason a reaped job carries: alerting recognises REASON_PREFIX, and reads the reap
    run back from the suffix (`vocabulary.reap_run_of`) to thread the failure under its report;
    the suffix survives the length cap."""
    suffix = reap_reason_suffix(root_run_id) if root_run_id else ""
    body = (f"{REASON_PREFIX} RUNNABLE for {format_duration(runnable_for)} > {format_duration(threshold)} "
            f"({category})")
    return body[:MAX_REASON_CHARS - len(suffix)] + suffix


@dataclass(frozen=True)
class CancelBatch:
    job_ids: tuple[str, ...]
    reason: str


def cancel_batches(plan: ReapPlan, threshold: timedelta, chunk: int = 50, root_run_id: str = "") -> list[CancelBatch]:
    """CancelJobs takes one reason for up to 50 ids: group by category, oldest first, and state
    the youngest age in each group (every job in it has been RUNNABLE at least that long)."""
    by_category: dict[str, list[Decision]] = {}
    for d in plan.with_action(Outcome.CANCEL):
        by_category.setdefault(d.category, []).append(d)
    batches = []
    for category, decisions in by_category.items():
        for start in range(0, len(decisions), chunk):
            group = decisions[start:start + chunk]
            youngest = min(d.runnable_for for d in group)
            reason = cancel_reason(youngest, threshold, category, root_run_id)
            batches.append(CancelBatch(tuple(d.job_id for d in group), reason))
    return batches


@dataclass(frozen=True)
class JobResult:
    job_id: str
    name: str
    runnable_for: timedelta
    status_reason: str
    category: str
    outcome: Outcome
    detail: str = ""  # the status a job moved on to, the error a cancel met
    owner: str = ""  # its metaflow.owner tag
    protected_by: str = ""  # its protect tag's value (staging text)

    @property
    def result(self) -> str:
        """The outcome as the metadata and the report show it, e.g. 'not cancelled: moved on to STARTING'."""
        return self.outcome.value + (f": {self.detail}" if self.detail else "")


def verify(plan: ReapPlan, cancel: CancelResult | None, after: Mapping[str, BatchJob]) -> list[JobResult]:
    """What really happened, from a DescribeJobs after the cancel: CancelJobs succeeds even for a
    job that raced into STARTING, so only the job's status tells."""
    results = []
    for d in plan.decisions:
        job = d.job
        outcome, detail = d.action, ""
        if d.action is Outcome.CANCEL:
            error = cancel.errors.get(d.job_id) if cancel else "not sent"
            now_job = after.get(d.job_id)
            if error:
                outcome, detail = Outcome.CANCEL_FAILED, error
            elif now_job is None:
                outcome = Outcome.SKIP_GONE
            elif now_job.status == "FAILED" and now_job.status_reason.startswith(REASON_PREFIX):
                outcome = Outcome.CANCELLED
            elif now_job.status == RUNNABLE:
                outcome = Outcome.CANCEL_PENDING
            else:
                outcome, detail = Outcome.NOT_CANCELLED, f"moved on to {now_job.status}"
        elif d.action is Outcome.SKIP_NOT_RUNNABLE and job:
            outcome, detail = Outcome.NOT_CANCELLED, f"moved on to {job.status}"
        results.append(JobResult(
            job_id=d.job_id,
            name=job.name if job else "",
            runnable_for=d.runnable_for,
            status_reason=job.status_reason if job else "",
            category=d.category,
            outcome=outcome,
            detail=detail,
            owner=job.tags.get(OWNER_TAG, "") if job else "",
            protected_by=d.protected_by,
        ))
    return results


MAX_JOB_LINES = 40
QUIET_OUTCOMES = {Outcome.SKIP_GONE, Outcome.SKIP_PROTECTED, Outcome.SKIP_RETRIED, Outcome.SKIP_NOT_RUNNABLE,
                  Outcome.NOT_CANCELLED}


def worth_reporting(plan: ReapPlan, results: list[JobResult]) -> bool:
    """A run that only re-met protected, retried or vanished jobs stays off Slack (its metadata
    still says so); anything cancelled, pending, failed or held back by the breaker is reported."""
    return plan.breaker_tripped or any(r.outcome not in QUIET_OUTCOMES for r in results)


def console_url(region: str, job_id: str) -> str:
    """The job's page in the AWS Batch console."""
    return f"https://{region}.console.aws.amazon.com/batch/home?region={region}#jobs/detail/{job_id}"


def owner_text(owner: str, owners: Mapping[str, str]) -> str:
    """An owner @-mentioned through `slack.owners`, else named (escaped: a tag is staging text)."""
    if not owner:
        return "unknown"
    slack_id = owners.get(owner)
    return f"<@{slack_id}>" if slack_id else escape(owner)


@dataclass(frozen=True)
class ReportContext:
    """What a report links and names beyond the run's results: the region (console links), the
    Slack ids of Metaflow users, the queue's block as Batch reported it, the Dagster run."""

    region: str = ""
    owners: Mapping[str, str] = field(default_factory=dict)
    block: QueueBlock | None = None
    run_url: str | None = None


def job_line(r: JobResult, ctx: ReportContext) -> str:
    """'• <console|`train-job`> `1a2b3c4d` RUNNABLE 2h14m: cancelled · <@U1>' (staging text escaped)."""
    name = f"`{escape(r.name or r.job_id)}`"
    if ctx.region:
        name = f"<{console_url(ctx.region, r.job_id)}|{name}>"
    result = r.result + (f" ({escape(r.protected_by)})" if r.protected_by else "")
    return (f"• {name} `{escape(r.job_id[:8])}` RUNNABLE {format_duration(r.runnable_for)}: {result}"
            f" · {owner_text(r.owner, ctx.owners)}")


def owners_line(results: Iterable[JobResult], owners: Mapping[str, str]) -> str:
    """'Owners: <@U1> 3, bob 1.': whose jobs these were, mentioned so they hear of it."""
    counts = Counter(r.owner for r in results)
    return "Owners: " + ", ".join(f"{owner_text(o, owners)} {n}" for o, n in sorted(
        counts.items(), key=lambda item: (-item[1], item[0]))) + "."


def block_section(block: QueueBlock) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": (
        f":no_entry: *Batch reported the queue blocked* since {block.since.astimezone(UTC):%Y-%m-%d %H:%M} UTC "
        f"by `{escape(block.job_id[:8])}`: {escape(block.reason or UNKNOWN)}")[:MAX_SECTION_CHARS]}}


def report(environment: str, queue: str, policy: ReapPolicy, plan: ReapPlan, results: list[JobResult],
           run_url: str | None = None, ctx: ReportContext | None = None) -> SlackMessage:
    """One Slack message per reap run: counts, whose jobs, the queue's block, the breaker, and per
    category what it means and which jobs (console links), summarised past the first
    MAX_JOB_LINES to stay inside Block Kit's limits."""
    ctx = ctx or ReportContext(run_url=run_url)
    run_url = run_url or ctx.run_url
    outcomes = Counter(r.outcome for r in results)
    cancelled = outcomes[Outcome.CANCELLED]
    would = outcomes[Outcome.WOULD_CANCEL]
    verb = f"Would cancel {would}" if policy.dry_run else f"Cancelled {cancelled}"
    title = f"Reaper: {verb} stuck job{'s' if (would or cancelled) != 1 else ''} in {environment} / {queue}"
    summary = [f"*{verb}* of {len(results)} RUNNABLE longer than {format_duration(policy.threshold)} "
               f"in `{escape(queue)}` ({environment})."]
    if policy.dry_run:
        summary.append("Dry run: nothing was cancelled.")
    others = Counter(r.result for r in results if r.outcome not in (Outcome.CANCELLED, Outcome.WOULD_CANCEL))
    if others:
        summary.append("Not cancelled: " + ", ".join(f"{v} {escape(k)}" for k, v in sorted(others.items())) + ".")
    if results:
        summary.append(owners_line(results, ctx.owners))
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:MAX_HEADER_CHARS]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": " ".join(summary)[:MAX_SECTION_CHARS]}},
    ]
    if ctx.block is not None:
        blocks.append(block_section(ctx.block))
    if plan.breaker_tripped:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": (
            f":rotating_light: *Breaker tripped*: {plan.eligible} stuck jobs > max_cancels_per_run "
            f"{policy.max_cancels}; {outcomes[Outcome.SKIP_BREAKER]} left RUNNABLE. Something is wrong with the queue "
            f"or its compute environment: look before raising the cap.")}})
    by_category: dict[str, list[JobResult]] = {}
    for r in sorted(results, key=lambda r: -r.runnable_for):
        by_category.setdefault(r.category, []).append(r)
    shown = 0
    for category, rows in by_category.items():
        meaning, fix = hint(category)
        lines = [f"*{category}*: {meaning}. _Fix:_ {fix}."]
        for r in rows:
            if shown >= MAX_JOB_LINES:
                break
            shown += 1
            lines.append(job_line(r, ctx))
        for text in pack(lines):
            if len(blocks) >= MAX_BLOCKS - 2:
                break
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    if shown < len(results):
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text":
                       f"…and {len(results) - shown} more jobs: the Dagster run has the full table."}})
    if run_url:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{run_url}|Dagster run>"}]})
    text = f"{title}." + (" Breaker tripped." if plan.breaker_tripped else "")
    return SlackMessage(text=text, blocks=tuple(blocks[:MAX_BLOCKS]))


def result_counts(results: Iterable[JobResult]) -> dict[str, int]:
    """How many jobs got each result, as the run's metadata shows them."""
    return dict(Counter(r.result for r in results))


def cancelled_count(results: Iterable[JobResult]) -> int:
    return sum(r.outcome is Outcome.CANCELLED for r in results)


# ---- a reap attempt: an op retry or a re-execution must neither cancel twice nor lose the report ----

@dataclass(frozen=True)
class SentCancel:
    """A job this run sent to CancelJobs, recorded before it is sent: what the report needs of it."""

    reason: str
    name: str
    category: str
    runnable_for: timedelta
    status_reason: str
    owner: str = ""


def sent_record(sent: Mapping[str, SentCancel]) -> dict[str, dict]:
    """The stored form of what a run sent (JSON: job id -> fields, the age in seconds)."""
    return {job_id: {"reason": s.reason, "name": s.name, "category": s.category,
                     "runnable_for_s": s.runnable_for.total_seconds(), "status_reason": s.status_reason,
                     "owner": s.owner}
            for job_id, s in sent.items()}


def sent_from_record(record: Mapping[str, Mapping]) -> dict[str, SentCancel]:
    return {job_id: SentCancel(was["reason"], was["name"], was["category"], timedelta(seconds=was["runnable_for_s"]),
                               was["status_reason"], was.get("owner", "")) for job_id, was in record.items()}


def cancelled_earlier(sent: Mapping[str, SentCancel], details: Mapping[str, BatchJob]) -> dict[str, JobResult]:
    """Jobs an earlier attempt of this run sent to CancelJobs that Batch now shows cancelled with
    that very reason: this run's cancellations, reported as such."""
    done = {}
    for job_id, was in sent.items():
        job = details.get(job_id)
        if job is not None and job.status == "FAILED" and job.status_reason == was.reason:
            done[job_id] = JobResult(job_id=job_id, name=was.name, runnable_for=was.runnable_for,
                                     status_reason=was.status_reason, category=was.category,
                                     outcome=Outcome.CANCELLED, owner=was.owner)
    return done


@dataclass(frozen=True)
class AttemptPlan:
    """One attempt's decisions: what earlier attempts already cancelled, what this one decides,
    the CancelJobs calls it sends and what it records before sending them."""

    plan: ReapPlan
    done: dict[str, JobResult]
    batches: list[CancelBatch]
    sent: dict[str, SentCancel] = field(default_factory=dict)  # earlier attempts' and this one's


def plan_attempt(job_ids: Iterable[str], details: Mapping[str, BatchJob], policy: ReapPolicy, now: datetime,
                 sent: Mapping[str, SentCancel], root_run_id: str = "") -> AttemptPlan:
    """`plan_reap` for an attempt that may follow others: their cancellations count against the
    breaker cap and are not decided again. The reasons name `root_run_id`, the run's root."""
    done = cancelled_earlier(sent, details)
    plan = plan_reap([j for j in job_ids if j not in done], details,
                     replace(policy, max_cancels=max(0, policy.max_cancels - len(done))), now)
    plan = replace(plan, eligible=plan.eligible + len(done))
    batches = cancel_batches(plan, policy.threshold, root_run_id=root_run_id)
    decided = {d.job_id: d for d in plan.decisions}
    now_sent = {job_id: SentCancel(b.reason[:MAX_REASON_CHARS], decided[job_id].job.name, decided[job_id].category,
                                   decided[job_id].runnable_for, decided[job_id].job.status_reason,
                                   decided[job_id].job.tags.get(OWNER_TAG, ""))
                for b in batches for job_id in b.job_ids}
    return AttemptPlan(plan, done, batches, {**sent, **now_sent})


class SlackReport(StrEnum):
    """What became of a run's Slack report; the value is what the run's metadata shows."""

    SENT = "sent"
    FAILED = "failed"
    NOT_NEEDED = "not needed: nothing acted on"
