"""Promotion end to end in the sandbox, through boto3: checks (lint of the real code package,
naming, latest staging run, definition safety), productionize with published versions, rollback,
immutable audit records in the production account's S3, serialized launches, one Slack message
per attempt (exactly once, never at the audit's expense), launches from a partition as the
Launchpad makes them; then pieces of the wiring alone (attempt, productionize, the audit log's
description), without the sandbox."""

import dataclasses
import json
import os

import dagster as dg
import pytest
import yaml

from platform_ops.adapters.aws import AwsError, count_calls
from platform_ops.adapters.ledger import Ledger
from platform_ops.adapters.s3 import RecordExists, put_new_json
from platform_ops.code_location import build_defs
from platform_ops.promotion import core
from platform_ops.promotion.core import Step
from platform_ops.promotion.defs import (
    PROMOTION_TAG,
    Run,
    Wiring,
    announce,
    attempt,
    audit_log_spec,
    productionize,
    promotion_defs,
)
from platform_ops.sandbox import flows
from platform_ops.settings import SETTINGS_ENV_VAR, load_settings
from platform_ops_tests.conftest import World

ROOT = flows.HERE.parents[2]
PROD = "mlplatform.prod.DemoFlow"
STAGING = "mlplatform.test.feature_x.DemoFlow"
CONFIG = {"flow": "DemoFlow", "project": "mlplatform", "branch": "feature_x", "requested_by": "alice",
          "reason": "new model"}
WRITES = {"SFN.CreateStateMachine", "SFN.UpdateStateMachine", "SFN.StartExecution",
          "S3.PutObject"}
SOURCE = (flows.HERE / flows.FLOW_FILE).read_text()


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def staged(world: World) -> World:
    """A staging deployment whose latest run succeeded on its current definition."""
    assert world.run_flow("staging", "staging-ok", width=2)["status"] == "SUCCEEDED"
    return world


def launch(world, instance, job, config, tags=None, settings=None):
    defs = build_defs(settings or world.settings)
    tags = {PROMOTION_TAG: f"{config['project']}.prod.{config['flow']}"} if tags is None else tags
    with count_calls() as calls:
        result = defs.resolve_job_def(job).execute_in_process(
            run_config={"ops": {job: {"config": config}}}, instance=instance, tags=tags, raise_on_error=False)
    return result, calls


def failure(result) -> str:
    return next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE) \
        .step_failure_data.user_failure_data.description


def message_text(message) -> str:
    return json.dumps(message["blocks"], ensure_ascii=False)


def announcement(instance, result) -> str:
    """What the run's audit-log materialization says of its Slack announcement."""
    [m] = [r.asset_materialization for r in instance.fetch_materializations(dg.AssetKey("promotion_audit_log"),
                                                                             limit=100).records
           if r.run_id == result.run_id]
    return m.metadata["announcement"].value


def assert_announces(world, message, record, header, versions):
    """The message is the attempt's, posted once with metadata naming it, linking the Dagster
    run, the audit record and the production state machine."""
    assert message["blocks"][0]["text"]["text"] == header
    assert f"*Version*\\n{versions}" in message_text(message)
    key = f"platform_ops/promotion/announcement/{record['promotion_id']}"
    assert message["metadata"]["event_payload"]["key"] == key
    buttons = {e["text"]["text"]: e["url"] for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]}
    p = world.settings.promotion
    record_key = f"{p.audit_prefix}/{record['flow']}/{record['promotion_id']}.json"
    assert buttons["Dagster run"] == f"{world.settings.dagster_url}/runs/{record['dagster_run_id']}"
    assert buttons["Audit record"].endswith(f"/s3/object/{p.audit_bucket}?region=us-east-1&prefix={record_key}")
    assert buttons["Step Functions"].endswith(f"#/statemachines/view/{arn(world)}")
    assert f"s3://{p.audit_bucket}/{record_key}" in message_text(message)


def sfn(world, env="production"):
    return world.resources()[f"aws_{env}"].client("stepfunctions")


def arn(world, name=PROD, env="production"):
    e = world.settings.environments[env]
    return f"arn:aws:states:{e.region}:{e.account_id}:stateMachine:{name}"


def production_definition(world):
    return sfn(world).describe_state_machine(stateMachineArn=arn(world))["definition"]


def records(world):
    s3 = world.resources()["aws_production"].client("s3")
    p = world.settings.promotion
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=p.audit_bucket, Prefix=p.audit_prefix + "/")
            .get("Contents", [])]
    return [json.loads(s3.get_object(Bucket=p.audit_bucket, Key=k)["Body"].read()) for k in sorted(keys)]


def versions(world):
    return sfn(world).list_state_machine_versions(stateMachineArn=arn(world))["stateMachineVersions"]


def test_promote_then_rerun_is_a_no_op_then_rollback_restores(staged, instance):
    before = production_definition(staged)
    result, calls = launch(staged, instance, "promote_flow", CONFIG)
    assert result.success, failure(result)
    out = result.output_for_node("promote_flow")
    assert out["outcome"] == "promoted"
    assert [c["name"] for c in out["checks"]] == ["lint", "naming", "latest staging run",
                                                  "definition: no_staging_identifiers", "definition: retry_strategy",
                                                  "definition: no_debug_images"]
    assert all(c["passed"] for c in out["checks"])
    after = production_definition(staged)
    assert after != before and "111111111111" not in after and "ml-staging" not in after and "mf-staging" not in after
    assert '"ml-production"' in after and "mf-production" in after
    # Metaflow keeps the production token on redeploy
    assert json.loads(after)["States"]["start"]["Parameters"]["Parameters"]["metaflow.production_token"] == \
        json.loads(before)["States"]["start"]["Parameters"]["Parameters"]["metaflow.production_token"]
    assert out["target"]["version_arn"].endswith(":2") and out["target"]["previous_version_arn"].endswith(":1")
    assert sfn(staged).describe_execution(executionArn=out["execution_arn"])["input"] == '{"Parameters": "{}"}'
    # the production run can fetch its code: the package was copied to production's datastore
    s3 = staged.resources()["aws_production"].client("s3")
    sha = out["code_package"]["sha"]
    assert s3.head_object(Bucket="mf-production", Key=f"metaflow/DemoFlow/data/{sha[:2]}/{sha}")
    assert calls["SFN.UpdateStateMachine"] == 1 and calls["SFN.CreateStateMachine"] == 0
    [message] = staged.messages  # one announcement, with what on-call needs and where to click
    assert_announces(staged, message, out, ":rocket: DemoFlow promoted to production", "1 → 2")
    assert "*From staging*\\n`mlplatform.test.feature_x.DemoFlow`\\nrun `staging-ok`" in message_text(message)
    assert "*Requested by*\\nalice" in message_text(message)
    assert result.output_for_node("promote_flow") and announcement(instance, result).startswith("posted")

    rerun, calls = launch(staged, instance, "promote_flow", CONFIG)
    assert rerun.success and rerun.output_for_node("promote_flow")["outcome"] == "no-op"
    assert len(staged.messages) == 1 and announcement(instance, rerun).startswith("not announced")  # nothing changed
    assert not {k for k in calls if k in WRITES} - {"S3.PutObject"} and calls["S3.PutObject"] == 1  # the record
    assert production_definition(staged) == after and len(versions(staged)) == 2

    rollback, _ = launch(staged, instance, "rollback_flow", {"flow": "DemoFlow", "project": "mlplatform",
                                                            "requested_by": "bob", "reason": "AUC dropped"})
    assert rollback.success, failure(rollback)
    assert rollback.output_for_node("rollback_flow")["outcome"] == "rolled-back"
    assert production_definition(staged) == before
    assert len(versions(staged)) == 3  # the rollback is published too: history is never rewritten
    assert_announces(staged, staged.messages[1], rollback.output_for_node("rollback_flow"),
                     ":rewind: DemoFlow rolled back in production", "2 → 3 (version 1's definition)")
    assert len(staged.messages) == 2

    trail = records(staged)
    assert [(r["kind"], r["outcome"]) for r in trail] == [("promotion", "promoted"), ("promotion", "no-op"),
                                                           ("rollback", "rolled-back")]
    first = trail[0]
    assert first["requested_by"] == "alice" and first["reason"] == "new model"
    assert first["source"]["state_machine_arn"] == arn(staged, STAGING, "staging")
    assert first["source"]["latest_run_arn"].endswith(":staging-ok")
    assert first["target"]["definition_digest"] != first["target"]["previous_definition_digest"]
    assert first["dagster_run_id"] == result.run_id and first["finished_at"] >= first["started_at"]
    assert trail[2]["target"]["restored_version_arn"].endswith(":1")

    materialized = instance.fetch_materializations(dg.AssetKey("promotion_audit_log"), limit=10).records
    assert len(materialized) == 3 and {m.partition_key for m in materialized} == {PROD}

    history = build_defs(staged.settings).resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey("promotion_history")}).execute_in_process(instance=instance)
    frame = history.output_for_node("promotion_history")
    assert list(frame["outcome"]) == ["promoted", "no-op", "rolled-back"]
    assert list(frame["requested_by"]) == ["alice", "alice", "bob"]


def test_a_failed_check_leaves_production_untouched_and_still_writes_a_record(world, instance):
    world.run_flow("staging", "staging-oom", width=2, faults=[{"fault": "oom", "step": "train", "index": 0}])
    before = production_definition(world)
    result, calls = launch(world, instance, "promote_flow", CONFIG)
    assert not result.success
    assert "latest staging run" in failure(result) and "staging-oom FAILED" in failure(result)
    assert production_definition(world) == before and len(versions(world)) == 1
    assert {k for k in calls if k in WRITES} == {"S3.PutObject"} and calls["S3.PutObject"] == 1
    [record] = records(world)
    assert record["outcome"] == "blocked" and record["steps"] == []
    checks = {c["name"]: c["passed"] for c in record["checks"]}
    assert checks["latest staging run"] is False and checks["lint"] is True  # every check ran and is reported
    [message] = world.messages
    assert_announces(world, message, record, ":no_entry: DemoFlow promotion blocked", "unchanged")
    text = message_text(message)
    assert f"*Failed checks (1 of {len(checks)})*" in text and "• `latest staging run`: staging-oom FAILED" in text
    assert "• `lint`" not in text  # the passed ones are not listed


def test_a_failed_deploy_changes_nothing_and_is_recorded(staged, instance):
    """Production's datastore bucket does not exist: the code package copy fails, the state
    machine is never touched, the record says which step failed, and a fixed rerun promotes."""
    broken = dataclasses.replace(staged.settings, promotion=dataclasses.replace(
        staged.settings.promotion, buckets={"mf-staging": "mf-nowhere"}))
    before = production_definition(staged)
    result, calls = launch(staged, instance, "promote_flow", CONFIG, settings=broken)
    assert not result.success and "promotion failed: code package: NoSuchBucket" in failure(result), failure(result)
    assert production_definition(staged) == before and len(versions(staged)) == 1
    assert calls["SFN.UpdateStateMachine"] == 0 and calls["SFN.StartExecution"] == 0
    [record] = records(staged)
    assert record["outcome"] == "failed" and all(c["passed"] for c in record["checks"])
    assert [(s["name"], s["passed"]) for s in record["steps"]] == [("code package", False)]
    rerun, _ = launch(staged, instance, "promote_flow", CONFIG)
    assert rerun.success and rerun.output_for_node("promote_flow")["outcome"] == "promoted"


def test_lint_catches_a_syntax_error_and_a_graph_error_in_the_staged_code(world, instance):
    env = world.settings.environments["staging"]
    broken = {
        "syntax": SOURCE.replace("    @step\n    def end(self):", "    @step\n    def end(self:"),
        "graph": SOURCE.replace("self.next(self.end)", "self.next(self.train)"),
    }
    for kind, source in broken.items():
        flows.redeploy(world.sandbox.endpoint, env, source)
        world.run_flow("staging", f"staging-{kind}", width=1)
        result, calls = launch(world, instance, "promotion_checks", CONFIG, tags={})
        assert not result.success
        lint = failure(result).removeprefix("checks failed: ").split(" | ")[0]
        assert lint.startswith("lint: `python demoflow.py check` failed"), lint
        assert ("SyntaxError" in lint or "invalid syntax" in lint) if kind == "syntax" else "join" in lint.lower(), lint
        assert not {k for k in calls if k in WRITES}  # the checks alone write nothing


def test_a_staging_queue_left_in_the_definition_blocks(staged, instance):
    """Without a queue mapping the translation keeps ml-staging; the safety rule knows staging's
    queues from the settings and blocks."""
    settings = dataclasses.replace(staged.settings,
                                   promotion=dataclasses.replace(staged.settings.promotion, queues={}))
    before = production_definition(staged)
    result, _ = launch(staged, instance, "promote_flow", CONFIG, settings=settings)
    assert not result.success
    assert "definition: no_staging_identifiers:" in failure(result)
    assert "start: JobQueue ml-staging" in failure(result) and "queue=ml-staging" in failure(result)
    assert production_definition(staged) == before
    assert records(staged)[0]["outcome"] == "blocked"
    # announced by the attempt itself: the run-failure sensor does not say it a second time
    [announcement] = staged.messages
    run = instance.get_run_by_id(result.run_id)
    failure_event = next(e for e in instance.all_logs(result.run_id) if e.dagster_event and
                         e.dagster_event.event_type_value == "PIPELINE_FAILURE").dagster_event
    defs = build_defs(settings)
    sensor = defs.resolve_sensor_def("platform_ops_run_failure_sensor")
    sensor(dg.build_run_status_sensor_context(sensor_name=sensor.name, dagster_event=failure_event,
                                              dagster_instance=instance, dagster_run=run,
                                              resources=defs.resources).for_run_failure())
    assert staged.messages == [announcement] and "blocked" in announcement["text"]


def test_bad_config_fails_before_any_aws_write(world, instance):
    missing = {k: v for k, v in CONFIG.items() if k != "requested_by"}
    with pytest.raises(dg.DagsterInvalidConfigError, match="requested_by"):
        launch(world, instance, "promote_flow", missing)
    for config, expected in [({**CONFIG, "flow": "NoSuchFlow"}, "no staging deployment mlplatform.test.feature_x.NoSuchFlow"),
                             ({**CONFIG, "flow": "demo-flow"}, "flow class name 'demo-flow'"),
                             ({**CONFIG, "requested_by": "  "}, "requested_by: required")]:
        result, calls = launch(world, instance, "promote_flow", config)
        assert not result.success and expected in failure(result), failure(result)
        assert not {k for k in calls if k in WRITES}
    assert records(world) == []


def test_a_launch_without_the_serializing_tag_is_refused(staged, instance):
    result, calls = launch(staged, instance, "promote_flow", CONFIG, tags={})
    assert not result.success and f"{PROMOTION_TAG}={PROD}" in failure(result)
    assert sum(calls.values()) == 0


def test_two_launches_for_one_flow_are_serialized_by_the_instance_config(tmp_path):
    """The queued run coordinator's own counter, fed dagster.yaml: the second promotion of a
    flow waits while the first is in progress; another flow's does not."""
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._core.test_utils import create_run_for_test
    from dagster._utils.tags import TagConcurrencyLimitsCounter

    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides={"concurrency": config["concurrency"]}) as instance:
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits

        def queued(flow_tag):
            return create_run_for_test(instance, job_name="promote_flow", status=DagsterRunStatus.NOT_STARTED,
                                       tags={PROMOTION_TAG: flow_tag})

        first, second, other = queued(PROD), queued(PROD), queued("mlplatform.prod.OtherFlow")
        counter = TagConcurrencyLimitsCounter(limits, [])
        assert not counter.is_blocked(first)
        counter.update_counters_with_launched_item(first)
        assert counter.is_blocked(second) and not counter.is_blocked(other)


def test_two_launches_of_one_flow_from_the_launchpad_share_the_concurrency_key(tmp_path, sandbox_settings):
    """Launched from the partition, with nothing typed into the tags: the second promotion (or a
    rollback) of the flow waits behind the first, CI's launch with the tag too."""
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._core.test_utils import create_run_for_test
    from dagster._utils.tags import TagConcurrencyLimitsCounter

    defs = build_defs(sandbox_settings)
    for path in ("dagster.yaml", "deploy/dagster.yaml"):
        config = yaml.safe_load((ROOT / path).read_text())
        home = tmp_path / path.replace("/", "_")
        home.mkdir()
        with dg.instance_for_test(temp_dir=str(home), overrides={"concurrency": config["concurrency"]}) as instance:
            limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits

            def queued(job, key=PROD, tags=None):
                tags = launchpad(defs, job, key)[1] if tags is None else tags
                return create_run_for_test(instance, job_name=job, status=DagsterRunStatus.NOT_STARTED,
                                           tags={**tags, "dagster/partition": key})

            first, second, rollback = queued("promote_flow"), queued("promote_flow"), queued("rollback_flow")
            ci = create_run_for_test(instance, job_name="promote_flow", status=DagsterRunStatus.NOT_STARTED,
                                     tags={PROMOTION_TAG: PROD})
            other = queued("promote_flow", "mlplatform.prod.OtherFlow")
            counter = TagConcurrencyLimitsCounter(limits, [])
            assert not counter.is_blocked(first)
            counter.update_counters_with_launched_item(first)
            assert all(counter.is_blocked(r) for r in (second, rollback, ci)) and not counter.is_blocked(other)


def test_audit_records_are_never_overwritten(world):
    """S3 conditional writes (If-None-Match: *), as AWS answers them: 412 on an existing key."""
    s3 = world.resources()["aws_production"].client("s3")
    bucket = world.settings.promotion.audit_bucket
    put_new_json(s3, bucket, "promotions/DemoFlow/x.json", {"n": 1})
    with pytest.raises(RecordExists, match="already exists"):
        put_new_json(s3, bucket, "promotions/DemoFlow/x.json", {"n": 2})
    assert json.loads(s3.get_object(Bucket=bucket, Key="promotions/DemoFlow/x.json")["Body"].read()) == {"n": 1}


def fail(world, service, operation, match, times=1):
    """The sandbox answers AccessDenied (not retried, so the one time is the call's only attempt)
    to the next `times` calls of that operation naming `match`."""
    world.control("aws-faults", {"kind": "fail-operation", "service": service, "operation": operation,
                                 "match": match, "times": times})


def only_the_record_was_written(calls):
    return {k for k in calls if k in WRITES} == {"S3.PutObject"} and calls["S3.PutObject"] == 1


@pytest.mark.parametrize("operation, match, step, checks", [
    ("DescribeStateMachine", STAGING, "resolve", []),
    ("ListExecutions", STAGING, "read staging runs", ["lint", "naming"]),
    ("DescribeStateMachine", PROD, "read production", ["lint", "naming", "latest staging run"]),
])
def test_an_aws_failure_while_reading_is_a_recorded_failed_attempt(staged, instance, operation, match, step, checks):
    """Resolution and every read happen inside the recorded attempt: the record names the step
    that failed and keeps the checks that ran before it; production is untouched."""
    before = production_definition(staged)
    fail(staged, "states", operation, match)
    result, calls = launch(staged, instance, "promote_flow", CONFIG)
    assert not result.success
    assert failure(result).startswith(f"promotion failed: {step}: AccessDeniedException: sandbox fault: {operation}")
    assert only_the_record_was_written(calls)
    [record] = records(staged)
    assert record["outcome"] == "failed" and record["production_changed"] is False
    assert [(s["name"], s["passed"]) for s in record["steps"]] == [(step, False)]
    assert [c["name"] for c in record["checks"]] == checks and all(c["passed"] for c in record["checks"])
    assert record["source"]["state_machine_arn"] == arn(staged, STAGING, "staging")
    assert record["target"]["state_machine_arn"] == arn(staged)
    assert production_definition(staged) == before and len(versions(staged)) == 1


def test_checks_alone_name_the_read_that_failed_and_write_nothing(staged, instance):
    fail(staged, "states", "ListExecutions", STAGING)
    result, calls = launch(staged, instance, "promotion_checks", CONFIG, tags={})
    assert not result.success and failure(result).startswith("read staging runs: AccessDeniedException")
    assert not {k for k in calls if k in WRITES}
    assert records(staged) == []


@pytest.mark.parametrize("operation, step, done", [
    ("ListStateMachineVersions", "read production versions", []),
    ("UpdateStateMachine", "deploy", ["code package"]),
])
def test_a_failed_step_before_production_changed_is_failed_and_changes_nothing(staged, instance, operation, step, done):
    before = production_definition(staged)
    fail(staged, "states", operation, PROD)
    result, calls = launch(staged, instance, "promote_flow", CONFIG)
    assert not result.success and failure(result).startswith(f"promotion failed: {step}: AccessDeniedException")
    assert production_definition(staged) == before and len(versions(staged)) == 1
    assert calls["SFN.StartExecution"] == 0
    [record] = records(staged)
    assert record["outcome"] == "failed" and record["production_changed"] is False
    assert [(s["name"], s["passed"]) for s in record["steps"]] == [*((d, True) for d in done), (step, False)]
    rerun, _ = launch(staged, instance, "promote_flow", CONFIG)  # nothing half-applied: a rerun promotes
    assert rerun.success and rerun.output_for_node("promote_flow")["outcome"] == "promoted"


def test_a_deploy_whose_trigger_failed_is_promoted_not_triggered_and_says_production_changed(staged, instance):
    before = production_definition(staged)
    fail(staged, "states", "StartExecution", PROD)
    result, calls = launch(staged, instance, "promote_flow", CONFIG)
    assert not result.success
    message = failure(result)
    assert message.startswith("promotion promoted-not-triggered: trigger: AccessDeniedException"), message
    assert message.endswith(f"production changed: {PROD} now runs version 2"), message
    assert production_definition(staged) != before and len(versions(staged)) == 2
    assert sfn(staged).list_executions(stateMachineArn=arn(staged))["executions"] == []
    [record] = records(staged)
    assert record["outcome"] == "promoted-not-triggered" and record["production_changed"] is True
    assert record["target"]["version_arn"].endswith(":2") and record["execution_arn"] is None
    assert [(s["name"], s["passed"], s["changed"]) for s in record["steps"]] == [
        ("code package", True, False), ("deploy", True, True), ("trigger", False, False)]
    materialized = instance.fetch_materializations(dg.AssetKey("promotion_audit_log"), limit=1).records
    assert materialized[0].asset_materialization.metadata["production_changed"].value is True


def test_a_record_that_cannot_be_stored_fails_the_run_and_is_in_its_logs(staged, instance):
    bucket = staged.settings.promotion.audit_bucket
    fail(staged, "s3", "PutObject", f"/{bucket}/")
    result, _ = launch(staged, instance, "promote_flow", CONFIG)
    assert not result.success and "but its audit record was not stored" in failure(result)
    logged = [e.user_message for e in instance.all_logs(result.run_id) if "audit record not stored" in e.user_message]
    record = json.loads(logged[0].split("here it is: ", 1)[1])
    assert record["outcome"] == "promoted" and record["production_changed"] is True
    assert records(staged) == [] and len(versions(staged)) == 2  # promoted, and the record only in the logs


ROLLBACK = {"flow": "DemoFlow", "project": "mlplatform", "requested_by": "bob", "reason": "AUC dropped"}


def test_every_rollback_read_and_its_deploy_are_recorded_when_aws_fails_them(staged, instance):
    """Rollback reads happen inside the recorded attempt: each failure is a record naming its
    step, production stays on the promoted version, and the rollback after them restores."""
    assert launch(staged, instance, "promote_flow", CONFIG)[0].success
    promoted = production_definition(staged)
    for operation, match, step in [("ListStateMachineVersions", PROD, "read versions"),
                                   ("DescribeStateMachine", f"{PROD}:1", "read version"),
                                   ("UpdateStateMachine", PROD, "deploy")]:
        fail(staged, "states", operation, match)
        result, _ = launch(staged, instance, "rollback_flow", ROLLBACK)
        assert not result.success and failure(result).startswith(f"rollback failed: {step}: AccessDeniedException")
        assert production_definition(staged) == promoted and len(versions(staged)) == 2
    rolled, _ = launch(staged, instance, "rollback_flow", ROLLBACK)
    assert rolled.success and len(versions(staged)) == 3
    trail = [r for r in records(staged) if r["kind"] == "rollback"]
    assert sorted((r["outcome"], [s["name"] for s in r["steps"] if not s["passed"]]) for r in trail) == [
        ("failed", ["deploy"]), ("failed", ["read version"]), ("failed", ["read versions"]), ("rolled-back", [])]
    assert all(r["production_changed"] is (r["outcome"] == "rolled-back") for r in trail)


# ---- the wiring's pieces alone: no sandbox ----

class _Log:
    def __init__(self):
        self.errors = []

    def error(self, message):
        self.errors.append(message)


class _Context:
    run_id = "abcdef0123456789"
    log = None


def _run(sandbox_settings):
    context = _Context()
    context.log = _Log()
    return Run(Wiring.of(sandbox_settings), context, Step.READ_STAGING_RUNS), context.log


def _record():
    return core.AuditRecord("p1", core.Kind.PROMOTION, "DemoFlow", "mlplatform", "alice", "why", "r1", "t0")


def test_a_step_that_raises_is_recorded_against_the_step_in_progress(sandbox_settings):
    run, log = _run(sandbox_settings)
    record = _record()
    attempt(run, record, lambda: {}["stateMachineVersionArn"])
    assert record.steps == [core.StepResult("read staging runs", False, "KeyError: 'stateMachineVersionArn'")]
    assert "promotion step 'read staging runs' raised:" in log.errors[0] and "KeyError" in log.errors[0]

    def denied():
        run.step = Step.DEPLOY
        raise AwsError("AccessDeniedException", "no")

    attempt(run, record, denied)
    assert record.steps[-1] == core.StepResult("deploy", False, "AccessDeniedException: no") and len(log.errors) == 1
    core.conclude(record, "t1")
    assert record.outcome is core.Outcome.FAILED


def test_an_announcement_that_raises_is_reported_and_never_raised(sandbox_settings, monkeypatch):
    """The record is stored before the announcement: whatever goes wrong there (a bug too) comes
    back as the failure the run reports, after the audit log's materialization."""
    run, log = _run(sandbox_settings)
    monkeypatch.setattr(core, "render_announcement", lambda record, links: 1 / 0)
    record = _record()
    core.conclude(record, "t1")
    assert announce(run, record.to_dict(), "promotions/DemoFlow/p1.json") == (
        "failed: ZeroDivisionError: division by zero", "ZeroDivisionError: division by zero")
    assert "announcing raised" in log.errors[0] and "was not posted" in log.errors[1]


def test_bad_config_is_not_an_attempt(sandbox_settings):
    run, _ = _run(sandbox_settings)
    record = _record()
    with pytest.raises(dg.Failure, match="bad config: nope"):
        attempt(run, record, lambda: (_ for _ in ()).throw(dg.Failure("bad config: nope")))
    assert record.steps == []


def test_the_audit_log_description_keeps_its_key_pattern_when_rendered(sandbox_settings):
    """The UI renders descriptions as CommonMark: a bare <flow> is an HTML tag and disappears."""
    from markdown_it import MarkdownIt

    p = sandbox_settings.promotion
    html = MarkdownIt("commonmark").render(audit_log_spec(Wiring.of(sandbox_settings)).description)
    assert f"<code>s3://{p.audit_bucket}/{p.audit_prefix}/&lt;flow&gt;/</code>" in html, html


def test_no_promotion_section_offers_no_jobs(sandbox_settings):
    assert Wiring.of(dataclasses.replace(sandbox_settings, promotion=None)) is None
    assert not list(promotion_defs(dataclasses.replace(sandbox_settings, promotion=None)).jobs or [])


class _Sfn:
    """Step Functions as productionize calls it, each call kept."""

    def __init__(self, published):
        self.calls, self.published = [], published

    def list_state_machine_versions(self, **kwargs):
        self.calls.append("list_state_machine_versions")
        return {"stateMachineVersions": [{"stateMachineVersionArn": a, "creationDate": None} for a in self.published]}

    def create_state_machine(self, **kwargs):
        self.calls.append(("create_state_machine", kwargs["roleArn"], kwargs["versionDescription"]))
        return {"stateMachineVersionArn": f"{kwargs['name']}:1"}

    def start_execution(self, **kwargs):
        self.calls.append("start_execution")
        return {"executionArn": "arn:aws:states:us-east-1:2:execution:mlplatform.prod.DemoFlow:run-1"}


class _S3:
    def __init__(self):
        self.puts = []

    def put_object(self, **kwargs):
        self.puts.append((kwargs["Bucket"], kwargs["Key"]))


class _FakeRun(Run):
    def client(self, env, service):
        return self.fakes[service]


def _plan(action, previous=None):
    return core.PromotionPlan(action, "mlplatform.prod.DemoFlow", "{}", "s3://mf-production/metaflow/p", "role",
                              "promotion p1 by alice", True, previous)


def test_productionize_a_no_op_reads_the_versions_and_writes_nothing(sandbox_settings):
    run, _ = _run(sandbox_settings)
    run = _FakeRun(run.w, run.context)
    run.fakes = {"stepfunctions": _Sfn(["sm:1", "sm:3", "sm:2"]), "s3": _S3()}
    record = _record()
    record.target["state_machine_arn"] = "sm"
    productionize(run, _plan(core.DeployAction.NOOP, "d0"), b"package", record)
    assert run.fakes["stepfunctions"].calls == ["list_state_machine_versions"] and run.fakes["s3"].puts == []
    assert record.target["previous_version_arn"] == "sm:3" and record.target["previous_definition_digest"] == "d0"
    assert [(s.name, s.changed) for s in record.steps] == [("deploy", False)]


def test_productionize_a_first_deploy_copies_creates_and_triggers(sandbox_settings):
    run, _ = _run(sandbox_settings)
    run = _FakeRun(run.w, run.context)
    run.fakes = {"stepfunctions": _Sfn([]), "s3": _S3()}
    record = _record()
    record.target["state_machine_arn"] = "sm"
    productionize(run, _plan(core.DeployAction.CREATE), b"package", record)
    assert run.fakes["s3"].puts == [("mf-production", "metaflow/p")]
    assert run.fakes["stepfunctions"].calls == [("create_state_machine", "role", "promotion p1 by alice"),
                                                "start_execution"]  # no versions to read before the first
    assert "previous_version_arn" not in record.target and run.step is Step.TRIGGER
    assert [(s.name, s.passed, s.changed) for s in record.steps] == [
        ("code package", True, False), ("deploy", True, True), ("trigger", True, False)]
    assert record.execution_arn.endswith(":run-1") and record.steps[-1].detail == "run-1"


# ---- Slack: one message per attempt, exactly once, never at the audit's expense ----

def promote_job():
    """promote_flow, reconstructable (execute_job re-executes only such a job): the sandbox's settings."""
    return build_defs(load_settings(os.environ[SETTINGS_ENV_VAR])).resolve_job_def("promote_flow")


def reexecute(instance, parent_run_id):
    """What the UI's "Re-execute from failure" does (all steps when the parent succeeded): a new run
    in the same lineage, with the parent's config and tags."""
    parent = instance.get_run_by_id(parent_run_id)
    options = (dg.ReexecutionOptions.from_failure(parent_run_id, instance) if parent.is_failure else
               dg.ReexecutionOptions(parent_run_id, step_selection=["promote_flow"]))
    tags = {k: v for k, v in parent.tags.items() if not k.startswith("dagster/")}  # the UI keeps the user's tags
    with dg.execute_job(dg.reconstructable(promote_job), instance, reexecution_options=options, tags=tags,
                        raise_on_error=False) as result:
        return result.success, result.run_id, [e for e in result.all_events]


def test_slack_down_still_audits_reports_the_failure_and_a_re_execution_sends_it_once(staged, instance):
    staged.sandbox.sink.go_down()
    try:
        result, _ = launch(staged, instance, "promote_flow", CONFIG)
    finally:
        staged.sandbox.sink.come_back()
    assert not result.success
    [record] = records(staged)  # audited first, whatever Slack did
    assert record["outcome"] == "promoted" and len(versions(staged)) == 2
    message = failure(result)
    assert message.startswith("promotion promoted | audited at s3://") and "Slack announcement failed" in message
    assert "re-executing this run sends it first" in message
    assert announcement(instance, result).startswith("failed: chat.postMessage to")
    assert staged.messages == []

    ok, rerun_id, events = reexecute(instance, result.run_id)
    assert ok
    [sent] = staged.messages  # the promoted attempt's, read back from its record; the new attempt is a no-op
    assert_announces(staged, sent, record, ":rocket: DemoFlow promoted to production", "1 → 2")
    assert [r["outcome"] for r in records(staged)] == ["promoted", "no-op"]

    ok, _, _ = reexecute(instance, rerun_id)  # and again: nothing more goes out
    assert ok and len(staged.messages) == 1 and len(versions(staged)) == 2


def test_a_retried_step_posts_nothing_more(staged, instance):
    result, _ = launch(staged, instance, "promote_flow", CONFIG)
    assert result.success and len(staged.messages) == 1
    ok, _, _ = reexecute(instance, result.run_id)
    assert ok and len(staged.messages) == 1
    record = records(staged)[0]
    assert Ledger(instance, "promotion").get(f"announcement/{record['promotion_id']}")["state"] == "announced"


# ---- launching from the UI: a partition, and only what the Launchpad asks for ----

def launchpad(defs, job, key, **typed):
    """What the Launchpad holds once the partition `key` is picked (its config and tags, from the
    same calls the UI's GraphQL makes) and the person launching typed `typed` into the blanks."""
    partitioned = defs.resolve_job_def(job).partitioned_config
    config = partitioned.get_run_config_for_partition_key(key)
    assert set(typed) <= {k for k, v in config["ops"][job]["config"].items() if v == ""}  # only blanks are typed
    config["ops"][job]["config"].update(typed)
    return config, dict(partitioned.get_tags_for_partition_key(key, job_name=job))


PARTITION_QUERY = """query($repo: RepositorySelector!, $set: String!, $key: String!) {
  partitionSetOrError(repositorySelector: $repo, partitionSetName: $set) {
    ... on PartitionSet { partition(partitionName: $key) {
      runConfigOrError { ... on PartitionRunConfig { yaml } ... on PythonError { message } }
      tagsOrError { ... on PartitionTags { results { key value } } ... on PythonError { message } } } }
    ... on PythonError { message } } }"""
LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } } }"""


def test_the_launchpad_promotes_with_a_partition_and_three_typed_fields(staged, tmp_path):
    """Through the GraphQL the UI speaks, against the code location served as `dagster dev` does:
    picking the partition gives the config (flow, project, blanks) and the concurrency tag; the
    person types branch, requested_by and reason and launches. The run promotes and announces;
    CI's launch of the same flow (whole config, the tag, no partition) gets the same key."""
    from dagster._core.test_utils import poll_for_finished_run
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    # the queue's own counter is test_two_launches_of_one_flow_from_the_launchpad_share_the_concurrency_key's;
    # here each launch starts at once, as the daemon would dequeue it
    with dg.instance_for_test(temp_dir=str(tmp_path), synchronous_run_coordinator=True) as instance:
        instance.add_dynamic_partitions("promoted_state_machines", [PROD])  # "Add partition", or a checks run
        with define_out_of_process_context(str(ROOT / "platform_ops" / "definitions.py"), "defs", instance) as ctx:
            repo = {"repositoryLocationName": ctx.code_location_names[0], "repositoryName": "__repository__"}
            picked = execute_dagster_graphql(ctx, PARTITION_QUERY, {"repo": repo, "set": "promote_flow_partition_set",
                                                                      "key": PROD}).data
            partition = picked["partitionSetOrError"]["partition"]
            run_config = yaml.safe_load(partition["runConfigOrError"]["yaml"])
            tags = partition["tagsOrError"]["results"]
            assert {"key": PROMOTION_TAG, "value": PROD} in tags  # nothing to type in "Edit tags"
            assert run_config == {"ops": {"promote_flow": {"config": {
                "flow": "DemoFlow", "project": "mlplatform", "branch": "", "requested_by": "", "reason": ""}}}}
            run_config["ops"]["promote_flow"]["config"].update(branch="feature_x", requested_by="alice",
                                                               reason="new model")

            def launch_run(config, run_tags):
                launched = execute_dagster_graphql(ctx, LAUNCH, {"p": {
                    "selector": {**repo, "jobName": "promote_flow"}, "runConfigData": config,
                    "executionMetadata": {"tags": run_tags}}}).data["launchRun"]
                assert launched["__typename"] == "LaunchRunSuccess", launched
                return poll_for_finished_run(instance, launched["run"]["runId"], timeout=180)

            run = launch_run(run_config, tags)
            assert run.is_success, [e.message for e in instance.all_logs(run.run_id) if e.is_error]
            assert run.tags[PROMOTION_TAG] == PROD and run.tags["dagster/partition"] == PROD
            [record] = records(staged)
            assert record["outcome"] == "promoted" and record["dagster_run_id"] == run.run_id
            [message] = staged.messages
            assert_announces(staged, message, record, ":rocket: DemoFlow promoted to production", "1 → 2")

            ci = launch_run({"ops": {"promote_flow": {"config": CONFIG}}}, [{"key": PROMOTION_TAG, "value": PROD}])
            assert ci.is_success and ci.tags[PROMOTION_TAG] == run.tags[PROMOTION_TAG]
            assert "dagster/partition" not in ci.tags
            assert [r["outcome"] for r in records(staged)] == ["promoted", "no-op"] and len(staged.messages) == 1


def test_a_partition_launch_left_blank_or_edited_to_another_flow_is_refused_before_aws(world, instance):
    defs = build_defs(world.settings)
    job = defs.resolve_job_def("promote_flow")
    assert job.partitions_def.name == "promoted_state_machines"  # the audit log's partitions
    instance.add_dynamic_partitions("promoted_state_machines", [PROD])
    # the blanks left as they are: bad config (a backfill over every partition promotes nothing)
    blank, _ = launchpad(defs, "promote_flow", PROD)
    with count_calls() as calls:
        untyped = job.execute_in_process(run_config=blank, partition_key=PROD, instance=instance, raise_on_error=False)
    assert not untyped.success and "bad config: branch" in failure(untyped), failure(untyped)
    # the config edited to another flow than the partition's: the concurrency key would be wrong
    other, _ = launchpad(defs, "promote_flow", PROD, branch="feature_x", requested_by="alice", reason="x")
    other["ops"]["promote_flow"]["config"]["flow"] = "OtherFlow"
    with count_calls() as more:
        refused = job.execute_in_process(run_config=other, partition_key=PROD, instance=instance,
                                         raise_on_error=False)
    assert not refused.success and f"{PROMOTION_TAG}=mlplatform.prod.OtherFlow" in failure(refused)
    assert sum(calls.values()) == sum(more.values()) == 0 and records(world) == [] and world.messages == []


def test_rollback_and_checks_from_a_partition(sandbox_settings):
    defs = build_defs(sandbox_settings)
    config, tags = launchpad(defs, "rollback_flow", PROD, requested_by="bob", reason="AUC dropped")
    assert tags[PROMOTION_TAG] == PROD
    dg.validate_run_config(defs.resolve_job_def("rollback_flow"), config)
    config, tags = launchpad(defs, "promotion_checks", PROD, branch="feature_x")
    assert PROMOTION_TAG not in tags  # read-only: it waits for nobody
    dg.validate_run_config(defs.resolve_job_def("promotion_checks"), config)
