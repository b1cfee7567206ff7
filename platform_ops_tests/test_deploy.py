"""The production deployment files are what Dagster and AWS accept: deploy/dagster.yaml against
Dagster's own instance schema and each configurable class's schema."""

import json
from pathlib import Path

import pytest
import yaml
from dagster._config import validate_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._serdes.config_class import class_from_code_pointer

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def test_the_production_instance_config_passes_dagsters_schema():
    config, _ = dagster_instance_config(str(DEPLOY))
    for section in ("run_launcher", "compute_logs"):
        entry = config[section]
        cls = class_from_code_pointer(entry["module"], entry["class"])
        result = validate_config(cls.config_type(), entry["config"])
        assert result.success, (section, [e.message for e in result.errors])
    from dagster_postgres import DagsterPostgresStorage

    result = validate_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"])
    assert result.success, [e.message for e in result.errors]


def test_the_production_storage_uses_the_driver_dagster_postgres_ships():
    """SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which dagster-postgres does not
    install: the scheme must name psycopg2, or the instance cannot connect."""
    import importlib.util

    config, _ = dagster_instance_config(str(DEPLOY))
    assert config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert importlib.util.find_spec("psycopg2") is not None


def test_production_keeps_every_local_concurrency_limit():
    """One reap per queue, one promotion per flow: in production too."""
    local = yaml.safe_load((ROOT / "dagster.yaml").read_text())["concurrency"]["runs"]["tag_concurrency_limits"]
    production = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["concurrency"]["runs"]["tag_concurrency_limits"]
    assert local == production
    launcher = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]["config"]
    assert {limit["key"] for limit in local} <= set(launcher["propagate_tags"]["allow_list"])


def test_a_broken_instance_config_is_refused(tmp_path):
    """The validation above can fail: a misspelt key is an error, not ignored."""
    data = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    data["run_monitoring"]["start_timout_seconds"] = data["run_monitoring"].pop("start_timeout_seconds")
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(DagsterInvalidConfigError, match="start_timout_seconds"):
        dagster_instance_config(str(tmp_path))


TEMPLATE = DEPLOY / "cloudformation" / "platform-ops-account.yaml"


def test_the_account_template_passes_cfn_lint():
    """cfn-lint checks resource schemas, intrinsic functions and every IAM action name."""
    import subprocess
    import sys

    proc = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(TEMPLATE)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_sandbox_runs_on_the_template_in_both_accounts(world):
    """The sandbox deploys the same template through CloudFormation in moto, and runs on what it
    creates: the queue, the three rules targeting it, the role production is reached through (with its
    external id), and in the promotion target the audit bucket. moto's CloudFormation skips
    AWS::SQS::QueuePolicy and the bucket's versioning/Object Lock (cfn-lint checks those)."""
    from platform_ops.sandbox.world import STACK_NAME, account_client

    promotion = world.settings.promotion
    for env in world.settings.environments.values():
        client = lambda service, env=env: account_client(world.sandbox.endpoint, service, env.account_id, env.region)  # noqa: E731
        [stack] = client("cloudformation").describe_stacks(StackName=STACK_NAME)["Stacks"]
        assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
        assert outputs["RoleArn"] == f"arn:aws:iam::{env.account_id}:role/platform-ops"
        if env.role_arn:
            assert env.role_arn == outputs["RoleArn"]  # settings point at what the stack made
        queue_arn = f"arn:aws:sqs:{env.region}:{env.account_id}:platform-ops-events"
        # the stack's rules match events; a Metaflow @schedule rule (the sandbox's nightly flow) has none
        rules = [r for r in client("events").list_rules()["Rules"] if "EventPattern" in r]
        patterns = sorted(json.loads(r["EventPattern"])["detail-type"][0] for r in rules)
        assert patterns == ["Batch Job Queue Blocked", "Batch Job State Change",
                            "Step Functions Execution Status Change"]
        for rule in rules:
            assert [t["Arn"] for t in client("events").list_targets_by_rule(Rule=rule["Name"])["Targets"]] == [queue_arn]
        trust = client("iam").get_role(RoleName="platform-ops")["Role"]["AssumeRolePolicyDocument"]
        assert (env.role_external_id or "sandbox-external-id") in json.dumps(trust)
        buckets = {b["Name"] for b in client("s3").list_buckets()["Buckets"]}
        if env.name == promotion.target:
            assert outputs["AuditBucket"] == promotion.audit_bucket and promotion.audit_bucket in buckets
        else:
            assert "AuditBucket" not in outputs


def test_smoke_runs_on_a_postgres_backed_instance(smoke_run):
    """Production's storage exercised, not only parsed: the session's `make smoke` ran on
    dagster-postgres against a real PostgreSQL, and its runs and ledger are there afterwards."""
    import psycopg2

    if smoke_run.postgres_url is None:
        pytest.skip("PostgreSQL is not installed here (.ci/run installs it)")
    summary = smoke_run.summary
    assert smoke_run.proc.returncode == 0, smoke_run.proc.stderr[-3000:]
    assert summary["runs_failed"] == 0 and summary["promotions"] == 1
    with psycopg2.connect(smoke_run.postgres_url) as conn, conn.cursor() as cur:
        cur.execute("select status, count(*) from runs group by status")
        assert dict(cur.fetchall()) == {"SUCCESS": summary["runs"]}
        cur.execute("select count(*) from kvs where key like 'platform_ops/alerts/%'")
        assert cur.fetchone()[0] >= summary["failed_executions_alerted"]  # the alert ledger lives there too


def test_the_home_account_alarms_when_a_heartbeat_goes_missing(world):
    """With WatchTheWatcher=true the stack makes one alarm per heartbeat the health sensor sends
    (same sensor names, namespace and metric as the code), missing data counting as breaching,
    notifying an SNS topic the team subscribes to. moto 5.2.5's CloudFormation has no model for
    AWS::CloudWatch::Alarm (it skips the resource), so the alarms are read from the template
    (cfn-lint checks their schema above); the topic is created in moto."""
    from cfnlint.decode import decode

    from platform_ops.health.defs import HEARTBEAT_METRIC, HEARTBEAT_NAMESPACE, HEARTBEAT_SENSORS
    from platform_ops.sandbox.world import account_client, stack_parameters

    template, _ = decode(str(TEMPLATE))
    alarms = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert sorted(a["Dimensions"][0]["Value"] for a in alarms) == sorted(HEARTBEAT_SENSORS)
    for alarm in alarms:
        assert (alarm["Namespace"], alarm["MetricName"]) == (HEARTBEAT_NAMESPACE, HEARTBEAT_METRIC)
        assert alarm["Dimensions"][0]["Name"] == "Sensor"
        assert alarm["TreatMissingData"] == "breaching" and alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
        assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("LessThanThreshold", 1)

    env = next(e for e in world.settings.environments.values() if not e.role_arn)
    account = "444455556666"  # a spare account: the world's stacks stay as they are
    client = lambda service: account_client(world.sandbox.endpoint, service, account, env.region)  # noqa: E731
    parameters = {**stack_parameters(env, world.settings), "WatchTheWatcher": "true", "AlarmEmail": "oncall@example.com"}
    client("cloudformation").create_stack(
        StackName="platform-ops", TemplateBody=TEMPLATE.read_text(), Capabilities=["CAPABILITY_NAMED_IAM"],
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()])
    [stack] = client("cloudformation").describe_stacks(StackName="platform-ops")["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    topic = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}["AlarmTopicArn"]
    assert topic in [t["TopicArn"] for t in client("sns").list_topics()["Topics"]]
    # moto resolves the topic's conditional Subscription to none: the email subscription is read
    # from the template (cfn-lint checks the !If)
    subscription = template["Resources"]["AlarmTopic"]["Properties"]["Subscription"]["Fn::If"]
    assert subscription[0] == "HasAlarmEmail" and subscription[1] == [{"Protocol": "email", "Endpoint": {"Ref": "AlarmEmail"}}]
