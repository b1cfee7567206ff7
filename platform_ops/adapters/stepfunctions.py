"""Step Functions: state machines, executions and their histories, page by page."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from platform_ops.adapters.aws import AwsError, aws_errors, pages
from platform_ops.observations import Execution, StateMachine, StateMachineVersion
from platform_ops.redaction import redact, redact_data

HISTORY_PAGE = 1000  # GetExecutionHistory's maximum
LIST_PAGE = 1000


def list_state_machines(client: Any, prefixes: Iterable[str]) -> list[StateMachine]:
    """Every state machine whose name starts with one of `prefixes` ("" = all), with its creationDate."""
    prefixes = tuple(prefixes)
    return [StateMachine(m["name"], m["stateMachineArn"], m.get("creationDate"))
            for page in pages(client.list_state_machines, maxResults=LIST_PAGE)
            for m in page.get("stateMachines", []) if m["name"].startswith(prefixes)]


def execution_from_api(item: dict[str, Any]) -> Execution:
    return Execution(
        arn=item["executionArn"], name=item["name"], state_machine_arn=item["stateMachineArn"],
        status=item["status"], started_at=item["startDate"], stopped_at=item.get("stopDate"),
        error=redact(item.get("error", "")), cause=redact(item.get("cause", "")),
    )


def recent_executions(client: Any, state_machine_arn: str, started_after: datetime) -> Iterator[Execution]:
    """Executions newest first (ListExecutions' order), stopping at the first page that reaches
    back before `started_after`: one call for a quiet state machine."""
    for page in pages(client.list_executions, stateMachineArn=state_machine_arn, maxResults=LIST_PAGE):
        older = False
        for item in page.get("executions", []):
            if item["startDate"] < started_after:
                older = True
                continue
            yield execution_from_api(item)
        if older:
            return


def executions_in_status(client: Any, state_machine_arn: str, status: str,
                         started_after: datetime | None = None) -> Iterator[Execution]:
    """ListExecutions with statusFilter, newest first (one call while fewer than 1000 are in that
    status); with `started_after`, paging stops at the first page that reaches back before it."""
    for page in pages(client.list_executions, stateMachineArn=state_machine_arn, statusFilter=status,
                      maxResults=LIST_PAGE):
        older = False
        for item in page.get("executions", []):
            if started_after is not None and item["startDate"] < started_after:
                older = True
                continue
            yield execution_from_api(item)
        if older:
            return


def last_start(client: Any, state_machine_arn: str) -> datetime | None:
    """When the newest execution started (ListExecutions is newest first): one call, maxResults=1;
    None if it never ran (or Step Functions no longer keeps any: 90 days after they closed)."""
    with aws_errors():
        page = client.list_executions(stateMachineArn=state_machine_arn, maxResults=1)
    return next((item["startDate"] for item in page.get("executions", [])), None)


def describe_execution(client: Any, arn: str) -> Execution:
    with aws_errors():
        return execution_from_api(client.describe_execution(executionArn=arn))


def describe_execution_if_exists(client: Any, arn: str) -> Execution | None:
    """DescribeExecution, or None when AWS no longer has it (its state machine was deleted, or it
    is past Step Functions' 90-day retention): retrying cannot bring it back."""
    try:
        return describe_execution(client, arn)
    except AwsError as exc:
        if exc.code == "ExecutionDoesNotExist":
            return None
        raise


def execution_history(client: Any, arn: str) -> list[dict[str, Any]]:
    """Every event, oldest first, 1000 a page; every string in them (causes, inputs, outputs: staging
    code writes them) redacted."""
    return [redact_data(event) for page in pages(client.get_execution_history, executionArn=arn,
                                                 maxResults=HISTORY_PAGE)
            for event in page.get("events", [])]


def definition_for_execution(client: Any, arn: str) -> str:
    with aws_errors():
        return client.describe_state_machine_for_execution(executionArn=arn)["definition"]


def state_machine_arn(account: str, region: str, name: str) -> str:
    return f"arn:aws:states:{region}:{account}:stateMachine:{name}"


def describe_state_machine(client: Any, arn: str) -> dict[str, Any] | None:
    """DescribeStateMachine (of a state machine or one of its versions); None when absent."""
    try:
        with aws_errors():
            return client.describe_state_machine(stateMachineArn=arn)
    except AwsError as exc:
        if exc.code == "StateMachineDoesNotExist":
            return None
        raise


def versions(client: Any, arn: str) -> list[StateMachineVersion]:
    return [StateMachineVersion(v["stateMachineVersionArn"], v["creationDate"])
            for page in pages(client.list_state_machine_versions, stateMachineArn=arn, maxResults=LIST_PAGE)
            for v in page.get("stateMachineVersions", [])]


def publish(client: Any, *, arn: str, name: str, definition: str, role_arn: str, exists: bool,
            description: str) -> str:
    """Create or update the state machine and publish the result as a new version (one atomic
    call either way); the version's ARN."""
    with aws_errors():
        if exists:
            answer = client.update_state_machine(stateMachineArn=arn, definition=definition, publish=True,
                                                 versionDescription=description)
        else:
            answer = client.create_state_machine(name=name, definition=definition, roleArn=role_arn, publish=True,
                                                 versionDescription=description)
    return answer["stateMachineVersionArn"]


def start(client: Any, arn: str, input_json: str) -> str:
    with aws_errors():
        return client.start_execution(stateMachineArn=arn, input=input_json)["executionArn"]
