"""Least privilege, proven: every capability runs once against the sandbox (reaper, alerts,
metrics, missed schedules, promotion with create, update, no-op and rollback, history), every AWS operation is
collected with botocore's before-call hook, and the role policy in
deploy/cloudformation/platform-ops-account.yaml must grant exactly those actions: one missing
fails, one granted but never called fails."""

import dataclasses
from pathlib import Path

import dagster as dg
from cfnlint.decode import decode

from platform_ops.adapters.aws import count_calls
from platform_ops.code_location import build_defs
from platform_ops.promotion.defs import PROMOTION_TAG
from platform_ops.sandbox import flows
from platform_ops.sandbox import world as estate
from platform_ops.sandbox.daemon import Daemon
from platform_ops.sandbox.world import account_client

TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "cloudformation" / "platform-ops-account.yaml"
IAM_PREFIX = {"Batch": "batch", "SFN": "states", "CloudWatchLogs": "logs", "CloudWatch": "cloudwatch", "ECS": "ecs",
              "S3": "s3", "STS": "sts", "SQS": "sqs", "EventBridge": "events"}
# Operations whose IAM action is not "<prefix>:<Operation>", or that need more than one action
ACTIONS_FOR = {"S3.ListObjectsV2": {"s3:ListBucket"}, "Batch.CancelJobs": {"batch:CancelJob"},
               "S3.HeadObject": {"s3:GetObject"},
               "SQS.DeleteMessageBatch": {"sqs:DeleteMessage"},
               "SFN.CreateStateMachine": {"states:CreateStateMachine", "iam:PassRole"}}
CALLER_SIDE = {"sts:AssumeRole"}  # the principal's own permission (trust policy), not the role's
# Actions AWS authorises on "*" only (no resource-level permissions); everything else must be scoped
ONLY_ON_ANY_RESOURCE = {"batch:DescribeJobs", "batch:DescribeJobQueues", "batch:DescribeComputeEnvironments",
                        "states:ListStateMachines", "cloudwatch:PutMetricData", "cloudwatch:GetMetricData",
                        "events:ListRules"}


def iam_actions(operations) -> set[str]:
    actions = set()
    for op in operations:
        service, name = op.split(".", 1)
        actions |= ACTIONS_FOR.get(op, {f"{IAM_PREFIX[service]}:{name}"})
    return actions - CALLER_SIDE


def granted_actions() -> set[str]:
    template, matches = decode(str(TEMPLATE))
    assert not matches, matches
    statements = template["Resources"]["PlatformOpsRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    actions = set()
    for statement in statements:
        if "Fn::If" in statement:
            statement = statement["Fn::If"][1]  # the granted branch; the other is AWS::NoValue
        assert statement["Effect"] == "Allow", statement
        if statement["Resource"] == "*":
            assert set(statement["Action"]) <= ONLY_ON_ANY_RESOURCE, f"{statement['Sid']}: scope it"
        if "cloudwatch:PutMetricData" in statement["Action"]:
            assert "cloudwatch:namespace" in str(statement["Condition"])  # only its own namespace
        actions |= set(statement["Action"])
    return actions


def promote(defs, instance, job="promote_flow", **config):
    base = {"flow": "DemoFlow", "project": "mlplatform", "requested_by": "alice", "reason": "least privilege"}
    if job != "rollback_flow":
        base["branch"] = "feature_x"
    result = defs.resolve_job_def(job).execute_in_process(
        run_config={"ops": {job: {"config": {**base, **config}}}}, instance=instance,
        tags={PROMOTION_TAG: "mlplatform.prod.DemoFlow"})
    return result.output_for_node(job)["outcome"]


def schedule_rule(endpoint, env) -> None:
    """The rule Metaflow's @schedule makes (named after the state machine, targeting it). In staging:
    moto offers the production account's service events to a schedule rule as well, and fails."""
    name = flows.DEPLOYMENTS[env.name].name
    events = account_client(endpoint, "events", env.account_id, env.region)
    events.put_rule(Name=name, ScheduleExpression="cron(0 * * * ? *)", State="ENABLED")
    events.put_targets(Rule=name, Targets=[{"Id": name, "Arn": f"arn:aws:states:{env.region}:{env.account_id}:"
                                                                f"stateMachine:{name}"}])


def test_the_role_policy_grants_exactly_what_platform_ops_calls(world):
    envs = dict(world.settings.environments)  # production event-driven, staging polled: both paths
    envs["production"] = dataclasses.replace(envs["production"], events_queue="platform-ops-events")
    settings = dataclasses.replace(world.settings, environments=envs)
    staging, production = settings.environments["staging"], settings.environments["production"]
    endpoint = world.sandbox.endpoint
    world.stuck("staging", count=2)
    world.stuck("production", count=1)
    world.run_flow("production", "lp-oom", width=2, faults=[{"fault": "oom", "step": "train", "index": 0}])
    estate.register_instances(endpoint, production, 1)
    schedule_rule(endpoint, staging)  # missed_schedules_sensor: a rule whose targets it reads
    defs = build_defs(settings)
    with dg.instance_for_test() as instance, count_calls() as calls:
        daemon = Daemon(defs, instance, dedupe=False)
        first = daemon.cycle()
        assert len(first) >= 3  # 2 reaps, the alert (from the event; polling skips the key its run has)
        daemon.cycle()  # deletes the first cycle's events
        assert daemon.runs_failed == 0 and daemon.ticks_failed == 0
        assert defs.resolve_job_def("refresh_platform_metrics").execute_in_process(instance=instance).success
        # production has never run DemoFlow: the first promotion creates it
        account_client(endpoint, "stepfunctions", production.account_id, production.region).delete_state_machine(
            stateMachineArn=f"arn:aws:states:{production.region}:{production.account_id}:stateMachine:"
                            "mlplatform.prod.DemoFlow")
        world.run_flow("staging", "lp-v1", width=1)
        assert promote(defs, instance) == "promoted"  # create
        flows.redeploy(endpoint, staging, (flows.HERE / flows.FLOW_FILE).read_text() + "\n# v2\n")
        world.run_flow("staging", "lp-v2", width=1)
        assert promote(defs, instance) == "promoted"  # update
        assert promote(defs, instance, trigger=False) == "no-op"
        assert promote(defs, instance, "rollback_flow") == "rolled-back"
        history = defs.resolve_implicit_global_asset_job_def().get_subset(
            asset_selection={dg.AssetKey("promotion_history")}).execute_in_process(instance=instance)
        assert len(history.output_for_node("promotion_history")) == 4
    called, granted = iam_actions(calls), granted_actions()
    assert called - granted == set(), f"called but not granted: {sorted(called - granted)}"
    assert granted - called == set(), f"granted but never called: {sorted(granted - called)}"
