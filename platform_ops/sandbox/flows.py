"""Metaflow-shaped Step Functions deployments in the sandbox.

The definitions are the real ones Metaflow 2.19.38 generated for `demoflow.py` (a foreach over
`train` with @retry), copied from shared/fixtures/metaflow and pointed at the sandbox account's
queue, job definition and DynamoDB table. Names follow Metaflow's @project scheme.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from platform_ops.sandbox.world import JOB_DEFINITION, account_client
from platform_ops.settings import EnvironmentSettings

HERE = Path(__file__).parent / "metaflow"
FIXTURE_ACCOUNT = "111122223333"
FIXTURE_QUEUE = "mf-queue"
FIXTURE_JOB_DEFINITION = "metaflow_0123abcd:1"
DYNAMO_TABLE = "metaflow-sfn-table"


@dataclass(frozen=True)
class FlowDeployment:
    name: str  # state machine name, e.g. mlplatform.prod.DemoFlow
    template: str  # file under sandbox/metaflow/


# What each environment runs: a branch deployment in staging, the production one in production.
DEPLOYMENTS = {
    "staging": FlowDeployment("mlplatform.test.feature_x.DemoFlow", "sm_branch.json"),
    "production": FlowDeployment("mlplatform.prod.DemoFlow", "sm_prod_full.json"),
}


def definition_for(env: EnvironmentSettings, template: str, max_workers: int | None = None) -> str:
    text = (HERE / template).read_text()
    if max_workers:  # `step-functions create --max-workers N`
        text = text.replace('"MaxConcurrency": 100', f'"MaxConcurrency": {max_workers}')
    text = text.replace(FIXTURE_JOB_DEFINITION, f"{JOB_DEFINITION}:1")
    text = text.replace(f'"JobQueue": "{FIXTURE_QUEUE}"', f'"JobQueue": "{env.job_queues[0]}"')
    text = text.replace(FIXTURE_ACCOUNT, env.account_id).replace("us-east-1", env.region)
    return text


def deploy(endpoint: str, env: EnvironmentSettings, deployment: FlowDeployment | None = None,
           max_workers: int | None = None) -> str | None:
    """Create the DynamoDB table Metaflow's foreach needs (once) and a flow deployment; its ARN."""
    deployment = deployment or DEPLOYMENTS.get(env.name)
    if deployment is None or not env.job_queues:
        return None
    dynamodb = account_client(endpoint, "dynamodb", env.account_id, env.region)
    if DYNAMO_TABLE not in dynamodb.list_tables()["TableNames"]:
        dynamodb.create_table(TableName=DYNAMO_TABLE, BillingMode="PAY_PER_REQUEST",
                              KeySchema=[{"AttributeName": "pathspec", "KeyType": "HASH"}],
                              AttributeDefinitions=[{"AttributeName": "pathspec", "AttributeType": "S"}])
    sfn = account_client(endpoint, "stepfunctions", env.account_id, env.region)
    return sfn.create_state_machine(
        name=deployment.name, definition=definition_for(env, deployment.template, max_workers),
        roleArn=f"arn:aws:iam::{env.account_id}:role/mf-sfn",
    )["stateMachineArn"]


def trigger(endpoint: str, env: EnvironmentSettings, width: int = 3, name: str | None = None,
            state_machine: str | None = None) -> str:
    """Start a run the way `step-functions trigger` does; `width` is how many `train` tasks the
    foreach fans out to (the sandbox plays the flow's code). Returns the execution name."""
    arn = (f"arn:aws:states:{env.region}:{env.account_id}:stateMachine:"
           f"{state_machine or DEPLOYMENTS[env.name].name}")
    name = name or str(uuid.uuid4())
    sfn = account_client(endpoint, "stepfunctions", env.account_id, env.region)
    sfn.start_execution(stateMachineArn=arn, name=name,
                        input=json.dumps({"Parameters": json.dumps({"alpha": 0.5, "width": width})}))
    return name
