"""How the sandbox acts in an account, and the names the world it builds and the flows it deploys
share: its own module so that world.py (which deploys the flows) and flows.py (which needs the
clients and the job definition) do not import each other."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import boto3

JOB_DEFINITION = "metaflow_sandbox"  # the Metaflow-style job definition world.py registers in each account
SANDBOX_CREDENTIALS = {"aws_access_key_id": "sandbox", "aws_secret_access_key": "sandbox"}


@lru_cache(maxsize=64)
def account_client(endpoint: str, service: str, account: str, region: str) -> Any:
    """A client acting in `account` (moto's x-moto-account-id header): the sandbox's own
    back door for seeding, never used by product code."""
    client = boto3.client(service, endpoint_url=endpoint, region_name=region, **SANDBOX_CREDENTIALS)

    def add_header(request: Any, **_: Any) -> None:
        request.headers["x-moto-account-id"] = account

    client.meta.events.register("before-sign", add_header)
    return client
