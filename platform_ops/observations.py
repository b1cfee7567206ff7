"""What platform-ops observes in AWS, as plain dataclasses (no boto3, no Dagster)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class BatchJob:
    """A Batch job as ListJobs (summary) or DescribeJobs (detail) reports it."""

    job_id: str
    name: str
    status: str
    created_at: datetime
    queue: str = ""
    status_reason: str = ""
    job_definition: str = ""
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    last_attempt_stopped_at: datetime | None = None
    attempts: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    detailed: bool = False  # True when it came from DescribeJobs (tags, attempts are known)


@dataclass(frozen=True)
class CancelResult:
    """What CancelJobs accepted; acceptance is not proof, a describe afterwards is."""

    accepted: tuple[str, ...]
    errors: dict[str, str]


@dataclass(frozen=True)
class StateMachine:
    name: str
    arn: str
    created_at: datetime | None = None  # ListStateMachines' creationDate: missed schedules never predate it


@dataclass(frozen=True)
class Execution:
    """A Step Functions execution as ListExecutions/DescribeExecution report it."""

    arn: str
    name: str
    state_machine_arn: str
    status: str
    started_at: datetime
    stopped_at: datetime | None = None
    error: str = ""
    cause: str = ""

    @property
    def state_machine_name(self) -> str:
        return self.state_machine_arn.rsplit(":", 1)[-1]

    @property
    def account(self) -> str:
        return self.arn.split(":")[4]

    @property
    def region(self) -> str:
        return self.arn.split(":")[3]


@dataclass(frozen=True)
class StateMachineVersion:
    """A published version (ListStateMachineVersions)."""

    arn: str
    created_at: datetime

    @property
    def number(self) -> int:
        return int(self.arn.rsplit(":", 1)[-1])
