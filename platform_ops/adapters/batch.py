"""AWS Batch: API pages in, BatchJob observations out; cancellations back."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from platform_ops.adapters.aws import aws_errors, pages
from platform_ops.observations import BatchJob, CancelResult
from platform_ops.redaction import redact, redact_data
from platform_ops.vocabulary import from_epoch_ms

DESCRIBE_CHUNK = 100  # DescribeJobs takes at most 100 ids
CANCEL_CHUNK = 50  # CancelJobs takes at most 50 ids
LIST_PAGE = 1000  # ListJobs with jobStatus returns at most 1000 a page


def _ts(ms: int | None) -> datetime | None:
    """A Batch timestamp; 0 (moto's startedAt of a job cancelled before it started) is none."""
    return from_epoch_ms(ms) if ms else None


def _definition_name(arn_or_name: str) -> str:
    """'arn:aws:batch:...:job-definition/metaflow_ab12:3' -> 'metaflow_ab12'."""
    return arn_or_name.rsplit("/", 1)[-1].split(":", 1)[0]


def _queue_name(arn_or_name: str) -> str:
    return arn_or_name.rsplit("/", 1)[-1]


def job_from_api(item: dict[str, Any], queue: str = "") -> BatchJob:
    """A ListJobs summary or a DescribeJobs detail as a BatchJob."""
    attempts = item.get("attempts")
    last_stop = None
    if attempts:
        last_stop = _ts(attempts[-1].get("stoppedAt"))
    return BatchJob(
        job_id=item["jobId"],
        name=item.get("jobName", ""),
        status=item.get("status", ""),
        created_at=_ts(item["createdAt"]),
        queue=_queue_name(item.get("jobQueue", queue)),
        status_reason=redact(item.get("statusReason", "")),  # CancelJob/TerminateJob callers write it
        job_definition=_definition_name(item.get("jobDefinition", "")),
        started_at=_ts(item.get("startedAt")),
        stopped_at=_ts(item.get("stoppedAt")),
        last_attempt_stopped_at=last_stop,
        attempts=len(attempts or []),
        tags=redact_data(dict(item.get("tags") or {})),
        parameters=dict(item.get("parameters") or {}),
        detailed="attempts" in item,
    )


def iter_jobs(client: Any, queue: str, status: str) -> Iterator[BatchJob]:
    """Every job of `queue` in `status`, following nextToken (1000 a page)."""
    for page in pages(client.list_jobs, jobQueue=queue, jobStatus=status, maxResults=LIST_PAGE):
        for item in page.get("jobSummaryList", []):
            yield job_from_api(item, queue)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def describe_jobs(client: Any, job_ids: Iterable[str]) -> dict[str, BatchJob]:
    """DescribeJobs in chunks of 100; jobs Batch no longer knows are simply absent."""
    ids = list(dict.fromkeys(job_ids))
    found: dict[str, BatchJob] = {}
    for chunk in _chunks(ids, DESCRIBE_CHUNK):
        with aws_errors():
            page = client.describe_jobs(jobs=chunk)
        for item in page.get("jobs", []):
            job = job_from_api(item)
            found[job.job_id] = job
    return found


def cancel_jobs(client: Any, job_ids: Iterable[str], reason: str) -> CancelResult:
    """CancelJobs, 50 ids a call. CancelJob (never TerminateJob) semantics: STARTING or RUNNING
    jobs are left alone, so a job that raced into STARTING is not killed."""
    accepted: list[str] = []
    errors: dict[str, str] = {}
    for chunk in _chunks(list(job_ids), CANCEL_CHUNK):
        with aws_errors():
            response = client.cancel_jobs(jobs=chunk, reason=reason[:1024])
        accepted.extend(response.get("successful", []))
        for error in response.get("errors", []):
            errors[error["job"]] = f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
    return CancelResult(tuple(accepted), errors)


def compute_environments(client: Any, names: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """(name, ECS cluster ARN) of compute environments (all, or the named ones)."""
    kwargs = {"computeEnvironments": list(names)} if names else {}
    return [(ce["computeEnvironmentName"], ce.get("ecsClusterArn", ""))
            for page in pages(client.describe_compute_environments, **kwargs)
            for ce in page.get("computeEnvironments", [])]


def queue_compute_environments(client: Any, queues: Iterable[str]) -> dict[str, list[str]]:
    """Compute environment names behind each queue."""
    with aws_errors():
        described = client.describe_job_queues(jobQueues=list(queues)).get("jobQueues", [])
    return {q["jobQueueName"]: [o["computeEnvironment"].rsplit("/", 1)[-1]
                                for o in q.get("computeEnvironmentOrder", [])]
            for q in described}
