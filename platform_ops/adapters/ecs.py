"""ECS: the container instances behind Batch compute environments, as plain rows."""

from __future__ import annotations

from typing import Any

from platform_ops.adapters.aws import aws_errors, pages

DESCRIBE_CHUNK = 100


def _resource(resources: list[dict], name: str) -> int:
    return int(next((r.get("integerValue", 0) for r in resources or [] if r.get("name") == name), 0))


def container_instances(client: Any, cluster: str) -> list[dict]:
    """ACTIVE and DRAINING instances of `cluster` with their registration time and resources."""
    arns = [arn for status in ("ACTIVE", "DRAINING")
            for page in pages(client.list_container_instances, cluster=cluster, status=status, maxResults=100)
            for arn in page.get("containerInstanceArns", [])]
    rows = []
    for start in range(0, len(arns), DESCRIBE_CHUNK):
        with aws_errors():
            described = client.describe_container_instances(cluster=cluster, containerInstances=arns[start:start + 100])
        for ci in described.get("containerInstances", []):
            rows.append({
                "arn": ci["containerInstanceArn"], "status": ci.get("status", ""),
                "registered_at": ci.get("registeredAt"),
                "registered_cpu": _resource(ci.get("registeredResources"), "CPU"),
                "remaining_cpu": _resource(ci.get("remainingResources"), "CPU"),
                "registered_memory": _resource(ci.get("registeredResources"), "MEMORY"),
                "remaining_memory": _resource(ci.get("remainingResources"), "MEMORY"),
            })
    return rows
