"""The environment, chosen in one place: settings file, AWS and Slack from the standard env vars."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from platform_ops.adapters.aws import AwsEnvironmentResource
from platform_ops.adapters.slack import SLACK_API_URL, PlatformSlackResource
from platform_ops.settings import Settings


def aws_resource_key(environment: str) -> str:
    return f"aws_{environment}"


def aws_for(context: Any, environment: str) -> AwsEnvironmentResource:
    """The environment's AWS resource, from an op's or a sensor's context."""
    return getattr(context.resources, aws_resource_key(environment))


def build_resources(settings: Settings) -> dict[str, Any]:
    """One AWS resource per environment, plus Slack. Endpoints and credentials come from the
    standard AWS environment (AWS_ENDPOINT_URL, AWS_PROFILE, ...); the token from SLACK_BOT_TOKEN,
    resolved at run time and shown in the UI by name only."""
    resources: dict[str, Any] = {
        aws_resource_key(env.name): AwsEnvironmentResource(
            environment=env.name,
            account_id=env.account_id,
            region_name=env.region,
            role_arn=env.role_arn,
            role_external_id=env.role_external_id,
        )
        for env in settings.environments.values()
    }
    resources["metrics_io_manager"] = _metrics_io_manager(settings)
    resources["slack"] = PlatformSlackResource(
        token=dg.EnvVar("SLACK_BOT_TOKEN"),
        base_url=os.environ.get("SLACK_API_URL") or SLACK_API_URL,
    )
    return resources


def _metrics_io_manager(settings: Settings) -> Any:
    """Metrics tables: local files in the sandbox and on a laptop, S3 in production."""
    m = settings.metrics
    if m.storage == "s3":
        from dagster_aws.s3 import S3PickleIOManager, S3Resource

        home = next((e for e in settings.environments.values() if not e.role_arn),
                    next(iter(settings.environments.values())))
        return S3PickleIOManager(s3_resource=S3Resource(region_name=home.region), s3_bucket=m.s3_bucket,
                                 s3_prefix=m.s3_prefix)
    return dg.FilesystemIOManager(base_dir=m.local_dir)


def dagster_run_url(settings: Settings, run_id: str) -> str:
    return f"{settings.dagster_url}/runs/{run_id}"
