"""Promotion's pure core on the real definitions Metaflow generated (sandbox/metaflow/)."""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from platform_ops.naming import NamingError
from platform_ops.promotion import core

FLOWS = Path(__file__).resolve().parents[1] / "platform_ops" / "sandbox" / "metaflow"
BRANCH = (FLOWS / "sm_branch.json").read_text()
PROD = (FLOWS / "sm_prod_full.json").read_text()
NO_MAPPING = core.IdentifierMap()
MAPPING = core.IdentifierMap(
    accounts={"111122223333": "222222222222"}, queues={"mf-queue": "mf-prod-queue"},
    roles={"arn:aws:iam::111122223333:role/mf-batch": "arn:aws:iam::222222222222:role/mf-batch-prod"},
    buckets={"mf-bucket": "mf-prod-bucket"})


def normalised(definition: str) -> dict:
    """Metaflow names its temp files at random per render (set_batch_environment ... <word>)."""
    text = re.sub(r"(set_batch_environment \w+ )(\w+)( && \. `pwd`/)\2", r"\1TMP\3TMP", definition)
    return json.loads(text)


def test_production_token_is_metaflows():
    assert core.token_prefix("mlplatform", "prod") == "mfprj-sm3d4emlqz44ioc2"
    assert core.first_token("mfprj-sm3d4emlqz44ioc2") == "mfprj-sm3d4emlqz44ioc2-0-zgip"  # as in sm_prod_full.json
    assert core.token_prefix("mlplatform", "test.feature_x") == "mfprj-l64lar47wbxzxjwz"


def test_translating_the_branch_deployment_gives_what_metaflow_deploys_to_production():
    translated = core.translate(BRANCH, project="mlplatform", flow="DemoFlow", branch="feature_x", mapping=NO_MAPPING)
    assert normalised(translated) == normalised(PROD)


def test_translation_maps_staging_identifiers_and_the_safety_rules_agree():
    translated = core.translate(BRANCH, project="mlplatform", flow="DemoFlow", branch="feature_x", mapping=MAPPING)
    assert "111122223333" not in translated and "mf-bucket" not in translated
    start = json.loads(translated)["States"]["start"]["Parameters"]
    assert start["JobQueue"] == "mf-prod-queue"
    assert "queue=mf-prod-queue," in start["ContainerOverrides"]["Command"][2]
    assert all(r.passed for r in core.check_definition(translated, MAPPING)), core.check_definition(translated, MAPPING)


def test_a_definition_that_still_names_a_staging_queue_is_caught():
    partial = core.IdentifierMap(accounts=MAPPING.accounts, roles=MAPPING.roles, buckets=MAPPING.buckets)
    translated = core.translate(BRANCH, project="mlplatform", flow="DemoFlow", branch="feature_x", mapping=partial)
    [identifiers, retries] = core.check_definition(translated, MAPPING)
    assert not identifiers.passed and "start: JobQueue mf-queue" in identifiers.detail
    assert retries.passed


def test_a_batch_task_without_retry_strategy_is_caught_and_rules_are_data():
    data = json.loads(PROD)
    del data["States"]["*train"]["Iterator"]["States"]["train"]["Parameters"]["RetryStrategy"]
    results = core.check_definition(json.dumps(data), NO_MAPPING)
    retries = next(r for r in results if r.name == "definition: retry_strategy")
    assert not retries.passed and retries.detail == "*train/train: no RetryStrategy"
    no_gpu = core.Rule("no_gpu", "no GPU asks", lambda d, m: [
        s for s in core._strings(d) if '"GPU"' in s])
    assert [r.name for r in core.check_definition(PROD, NO_MAPPING, [*core.DEFAULT_RULES, no_gpu])][-1] == "definition: no_gpu"


def test_digest_ignores_formatting():
    assert core.digest(PROD) == core.digest(json.dumps(json.loads(PROD)))
    assert core.digest(PROD) != core.digest(BRANCH)


def test_bad_names_fail_before_anything_else():
    with pytest.raises(NamingError, match="project name 'ml-platform'"):
        core.translate(BRANCH, project="ml-platform", flow="DemoFlow", branch="feature_x", mapping=NO_MAPPING)


# ---- the rest of the core: deployment facts, checks, decisions, records ----

from datetime import UTC, datetime, timedelta  # noqa: E402

from platform_ops.observations import Execution, StateMachineVersion  # noqa: E402

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
REQUEST = core.PromotionRequest("DemoFlow", "mlplatform", "feature_x", "alice", "new model")


def test_what_a_metaflow_definition_says_about_its_deployment():
    d = core.deployment_of(BRANCH)
    assert (d.owner, d.flow_name, d.state_machine, d.script) == ("alice", "DemoFlow",
                                                                 "mlplatform.test.feature_x.DemoFlow", "demoflow.py")
    assert d.code_url == "s3://mf-bucket/metaflow/DemoFlow/data/01/0123456789abcdef0123456789abcdef01234567"
    assert d.code_sha == "0123456789abcdef0123456789abcdef01234567"
    assert d.production_token == "mfprj-l64lar47wbxzxjwz-0-exqh"
    assert "metaflow.run_id.$" not in d.tags and d.tags["metaflow.owner"] == "alice"
    assert core.production_token_of(PROD) == "mfprj-sm3d4emlqz44ioc2-0-zgip"
    assert core.production_token_of(None) is None
    with pytest.raises(ValueError, match="lacks METAFLOW_CODE_URL"):
        core.deployment_of(json.dumps({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}}))
    with pytest.raises(ValueError, match="not JSON"):
        core.deployment_of("{")


def test_translation_keeps_an_existing_production_token():
    translated = core.translate(BRANCH, project="mlplatform", flow="DemoFlow", branch="feature_x", mapping=NO_MAPPING,
                                production_token="mfprj-sm3d4emlqz44ioc2-7-abcd")
    assert core.deployment_of(translated).production_token == "mfprj-sm3d4emlqz44ioc2-7-abcd"
    assert "mfprj-l64lar47wbxzxjwz" not in translated


def test_naming_check_reports_every_problem():
    ok = core.check_names(REQUEST, core.deployment_of(BRANCH))
    assert ok.passed and "owner 'alice'" in ok.detail
    data = json.loads(BRANCH)
    start = data["States"]["start"]["Parameters"]
    start["Parameters"]["metaflow.owner"] = "Alice Smith"
    start["Tags"]["Cost Center"] = "ml"
    bad = core.check_names(dataclasses.replace(REQUEST, flow="DemoFlow"), core.deployment_of(json.dumps(data)))
    assert not bad.passed
    assert "owner 'Alice Smith'" in bad.detail and "tag key 'Cost Center'" in bad.detail
    other = core.check_names(dataclasses.replace(REQUEST, branch="other"), core.deployment_of(BRANCH))
    assert "calls itself 'mlplatform.test.feature_x.DemoFlow', not 'mlplatform.test.other.DemoFlow'" in other.detail


def test_requests_are_validated_before_anything_else():
    core.validate_request(REQUEST)
    for bad, expected in [(dataclasses.replace(REQUEST, requested_by=" "), "requested_by: required"),
                          (dataclasses.replace(REQUEST, branch="feature-x"), "branch name 'feature-x'"),
                          (dataclasses.replace(REQUEST, staging_state_machine="mlplatform.prod.DemoFlow"),
                           "is a production deployment"),
                          (dataclasses.replace(REQUEST, staging_state_machine="other.test.x.DemoFlow"),
                           "is not mlplatform's DemoFlow")]:
        with pytest.raises(ValueError, match=re.escape(expected)):
            core.validate_request(bad)
    core.validate_request(dataclasses.replace(REQUEST, reason=""), needs_reason=False)
    assert REQUEST.source_name == "mlplatform.test.feature_x.DemoFlow" and REQUEST.target_name == "mlplatform.prod.DemoFlow"


def _execution(name, status, hours_ago, error=""):
    stopped = NOW - timedelta(hours=hours_ago)
    return Execution(f"arn:aws:states:us-east-1:111111111111:execution:sm:{name}", name, "sm", status,
                     stopped - timedelta(minutes=5), None if status == "RUNNING" else stopped, error)


@pytest.mark.parametrize("executions, digests, passed, detail", [
    ([_execution("r2", "RUNNING", 0), _execution("r1", "SUCCEEDED", 2)], {"r1": "d"}, True, "r1 SUCCEEDED 2h0m ago"),
    ([_execution("r2", "FAILED", 1, "States.TaskFailed"), _execution("r1", "SUCCEEDED", 2)], {}, False,
     "r2 FAILED (States.TaskFailed)"),
    ([_execution("r1", "SUCCEEDED", 200)], {"r1": "d"}, False, "finished 8d8h ago (limit 168 h)"),
    ([_execution("r1", "SUCCEEDED", 1)], {"r1": "older"}, False, "ran an older definition"),
    ([_execution("r1", "RUNNING", 0)], {}, False, "no finished execution in staging in the last 168 h"),
    ([], {}, False, "no finished execution"),
])
def test_latest_staging_run(executions, digests, passed, detail):
    result = core.check_latest_run(executions, NOW, 168, "d", lambda e: digests[e.name])
    assert result.passed is passed and detail in result.detail, result


def test_deploy_action():
    assert core.deploy_action(None, PROD) is core.DeployAction.CREATE
    assert core.deploy_action(json.dumps(json.loads(PROD)), PROD) is core.DeployAction.NOOP
    assert core.deploy_action(BRANCH, PROD) is core.DeployAction.UPDATE


CHECKS = [core.CheckResult("lint", True, "`python demoflow.py check`: ok"),
          core.CheckResult("naming", True, "flow, project, branch, owner 'alice' and 3 tags follow the conventions"),
          core.CheckResult("latest staging run", True, "staging-ok SUCCEEDED 6m ago on this definition")]
BLOCKED = [*CHECKS[:2], core.CheckResult("latest staging run", False, "staging-oom FAILED (States.TaskFailed)")]
PACKAGE = core.StepResult("code package", True, "copied to s3://mf-production/metaflow/DemoFlow/data/ab/abcd")
DEPLOYED = core.StepResult("deploy", True, "updated mlplatform.prod.DemoFlow, published 2", changed=True)
TRIGGERED = core.StepResult("trigger", True, "c0ffee00-0000-4000-8000-000000000001")
DENIED = "AccessDeniedException: User is not authorized to perform: states:{}"


@pytest.mark.parametrize("kind, checks, steps, outcome, changed", [
    ("promotion", CHECKS, [PACKAGE, DEPLOYED, TRIGGERED], "promoted", True),
    ("promotion", CHECKS, [PACKAGE, DEPLOYED], "promoted", True),  # trigger: false
    ("promotion", CHECKS, [core.StepResult("deploy", True, "mlplatform.prod.DemoFlow already runs this definition")],
     "no-op", False),
    ("promotion", BLOCKED, [], "blocked", False),
    ("promotion", CHECKS[:2], [core.StepResult("resolve", False, DENIED.format("DescribeStateMachine"))],
     "failed", False),
    ("promotion", CHECKS[:2], [core.StepResult("read staging runs", False, DENIED.format("ListExecutions"))],
     "failed", False),
    ("promotion", CHECKS, [core.StepResult("read production versions", False, DENIED.format("ListStateMachineVersions"))],
     "failed", False),
    ("promotion", CHECKS, [PACKAGE, core.StepResult("deploy", False, DENIED.format("UpdateStateMachine"))],
     "failed", False),
    ("promotion", CHECKS, [PACKAGE, DEPLOYED, core.StepResult("trigger", False, DENIED.format("StartExecution"))],
     "promoted-not-triggered", True),
    ("promotion", CHECKS, [PACKAGE, DEPLOYED, core.StepResult("deploy", False, "KeyError: 'stateMachineVersionArn'")],
     "incomplete", True),
    ("rollback", [core.CheckResult("version", True, "restore version 1")],
     [core.StepResult("deploy", True, "published version 1's definition as 3", changed=True)], "rolled-back", True),
    ("rollback", [], [core.StepResult("read versions", False, DENIED.format("ListStateMachineVersions"))],
     "failed", False),
    ("rollback", [core.CheckResult("version", True, "restore version 1")],
     [core.StepResult("read version", False, "version 1 is gone")], "failed", False),
])
def test_the_outcome_follows_from_the_checks_and_steps(kind, checks, steps, outcome, changed):
    assert core.outcome(kind, checks, steps) is core.Outcome(outcome)
    assert core.production_changed(steps) is changed
    assert outcome in core.OUTCOMES
    assert (outcome in core.FAILING) is any(not r.passed for r in [*checks, *steps])


def test_a_failing_attempt_says_what_failed_and_whether_production_changed():
    record = core.AuditRecord("p1", "promotion", "DemoFlow", "mlplatform", "alice", "why", "r1", NOW.isoformat(),
                              checks=list(CHECKS),
                              target={"state_machine_arn": "arn:aws:states:us-east-1:222222222222:stateMachine:"
                                                           "mlplatform.prod.DemoFlow",
                                      "version_arn": "arn:aws:states:us-east-1:222222222222:stateMachine:"
                                                     "mlplatform.prod.DemoFlow:2"})
    record.steps = [PACKAGE, DEPLOYED, core.StepResult("trigger", False, DENIED.format("StartExecution"))]
    record.outcome, record.production_changed = core.outcome("promotion", record.checks, record.steps), True
    assert core.failure_summary(record) == (
        "promotion promoted-not-triggered: trigger: AccessDeniedException: User is not authorized to perform: "
        "states:StartExecution | production changed: mlplatform.prod.DemoFlow now runs version 2")
    record.steps, record.production_changed = [PACKAGE, core.StepResult("deploy", False, "boom")], False
    record.outcome = core.outcome("promotion", record.checks, record.steps)
    assert core.failure_summary(record) == "promotion failed: deploy: boom"


def test_rollback_target():
    sm = "arn:aws:states:us-east-1:222222222222:stateMachine:mlplatform.prod.DemoFlow"
    published = [StateMachineVersion(f"{sm}:{n}", NOW) for n in (1, 3, 2)]
    assert core.rollback_target(published, f"{sm}:3", None).number == 2
    assert core.rollback_target(published, f"{sm}:3", "1").number == 1
    assert core.rollback_target(published, f"{sm}:3", f"{sm}:2").number == 2
    with pytest.raises(ValueError, match=r"to_version '9': no such version \(published: 3, 2, 1\)"):
        core.rollback_target(published, f"{sm}:3", "9")
    with pytest.raises(ValueError, match="no version before the current one"):
        core.rollback_target(published[:1], f"{sm}:1", None)


def test_identifier_helpers_and_team_rules():
    assert core.translate_url("s3://mf-bucket/metaflow/x", MAPPING) == "s3://mf-prod-bucket/metaflow/x"
    assert core.translate_url("s3://other/x", MAPPING) == "s3://other/x"
    assert core.production_role("arn:aws:iam::111122223333:role/mf-batch", MAPPING) == \
        "arn:aws:iam::222222222222:role/mf-batch-prod"
    assert core.production_role("arn:aws:iam::111122223333:role/mf-sfn", MAPPING) == \
        "arn:aws:iam::222222222222:role/mf-sfn"
    rule = core.forbid_rule("no_python_311", "no python 3.11 images", r"image=python:3\.11")
    [result] = core.check_definition(PROD, NO_MAPPING, [rule])
    assert not result.passed and "image=python:3.11" in result.detail


def test_audit_record_serialises_checks_and_steps():
    record = core.AuditRecord(core.promotion_id("promotion", "DemoFlow", NOW, "abcdef0123"), "promotion", "DemoFlow",
                              "mlplatform", "alice", "why", "abcdef0123", NOW.isoformat(),
                              checks=[core.CheckResult("lint", True, "ok")])
    data = json.loads(json.dumps(record.to_dict()))
    assert data["promotion_id"] == "20261128T120000Z-promotion-DemoFlow-abcdef01"
    assert data["checks"] == [{"name": "lint", "passed": True, "detail": "ok"}]
    record.steps.append(core.StepResult("deploy", True, "published 2", changed=True))
    data = json.loads(json.dumps(record.to_dict()))
    assert data["steps"] == [{"name": "deploy", "passed": True, "detail": "published 2", "changed": True}]
    assert core.record_key("promotions", "DemoFlow", data["promotion_id"]) == \
        "promotions/DemoFlow/20261128T120000Z-promotion-DemoFlow-abcdef01.json"


# ---- the plans: what an attempt does once it has read, and what it records ----

SM = "arn:aws:states:us-east-1:222222222222:stateMachine:mlplatform.prod.DemoFlow"
STAGING_ROLE = "arn:aws:iam::111122223333:role/mf-sfn"


def _staging(production_definition):
    deployment = core.deployment_of(BRANCH)
    translated = core.translate(BRANCH, project="mlplatform", flow="DemoFlow", branch="feature_x", mapping=MAPPING)
    return core.Staging(f"arn:aws:states:us-east-1:111122223333:stateMachine:{deployment.state_machine}", BRANCH,
                        STAGING_ROLE, deployment, b"package", translated,
                        "arn:aws:states:us-east-1:111122223333:execution:sm:staging-ok", production_definition)


def test_the_code_package_is_linted_only_when_it_is_the_one_deployed():
    d = core.deployment_of(BRANCH)
    assert core.package_check(d, None, d.code_sha) is None
    swapped = core.package_check(d, None, "f" * 40)
    assert (swapped.name, swapped.passed) == ("lint", False)
    assert swapped.detail == f"the code package's SHA-1 is {'f' * 40}, the deployment says {d.code_sha}"
    unreadable = core.package_check(d, "NoSuchKey: The specified key does not exist.", None)
    assert not unreadable.passed and unreadable.detail.startswith(f"cannot read the code package {d.code_url}: ")


def test_a_promotion_proceeds_only_when_every_check_passed():
    assert core.may_proceed(CHECKS) and core.checks_failed(CHECKS) is None
    assert not core.may_proceed(BLOCKED)
    assert core.checks_failed(BLOCKED) == "checks failed: latest staging run: staging-oom FAILED (States.TaskFailed)"


def test_a_first_promotion_creates_production_with_mapped_identifiers():
    plan = core.plan_promotion(dataclasses.replace(REQUEST, trigger=False), _staging(None), MAPPING, "p1")
    assert plan.action is core.DeployAction.CREATE and plan.previous_definition_digest is None
    assert plan.name == "mlplatform.prod.DemoFlow" and plan.trigger is False
    assert plan.code_url == "s3://mf-prod-bucket/metaflow/DemoFlow/data/01/0123456789abcdef0123456789abcdef01234567"
    assert plan.role_arn == "arn:aws:iam::222222222222:role/mf-sfn" and plan.description == "promotion p1 by alice"
    assert plan.deployed(f"{SM}:1") == core.StepResult("deploy", True, "created mlplatform.prod.DemoFlow, published 1",
                                                       changed=True)


def test_promoting_over_an_older_production_updates_and_records_what_it_replaces():
    plan = core.plan_promotion(REQUEST, _staging(PROD), MAPPING, "p1")
    assert plan.action is core.DeployAction.UPDATE and plan.trigger is True
    assert plan.previous_definition_digest == core.digest(PROD)
    assert plan.deployed(f"{SM}:2") == DEPLOYED
    assert plan.copied(True).detail == f"copied to {plan.code_url}" and plan.copied(False).detail.startswith("already")
    assert plan.triggered(f"{SM.replace('stateMachine', 'execution')}:c0ffee00-0000-4000-8000-000000000001") == \
        TRIGGERED


def test_promoting_what_production_runs_is_a_no_op():
    staging = _staging(None)
    plan = core.plan_promotion(REQUEST, dataclasses.replace(staging, production_definition=staging.translated),
                               MAPPING, "p1")
    assert plan.action is core.DeployAction.NOOP
    step = plan.unchanged()
    assert step == core.StepResult("deploy", True, "mlplatform.prod.DemoFlow already runs this definition")
    assert core.outcome(core.Kind.PROMOTION, CHECKS, [step]) is core.Outcome.NO_OP


def test_a_rollback_to_the_definition_production_runs_is_a_no_op_else_it_publishes_it():
    version = StateMachineVersion(f"{SM}:1", NOW)
    same = core.plan_rollback("mlplatform.prod.DemoFlow", PROD, "arn:aws:iam::222222222222:role/mf-sfn", version,
                              json.dumps(json.loads(PROD)), "r1", "bob")
    assert same.action is core.DeployAction.NOOP
    assert same.unchanged().detail == "mlplatform.prod.DemoFlow already runs version 1's definition"
    back = core.plan_rollback("mlplatform.prod.DemoFlow", BRANCH, "arn:aws:iam::222222222222:role/mf-sfn", version,
                              PROD, "r1", "bob")
    assert back.action is core.DeployAction.UPDATE and back.definition == PROD
    assert back.role_arn == "arn:aws:iam::222222222222:role/mf-sfn"  # production keeps its role
    assert back.description == "rollback r1 to version 1 by bob"
    assert back.deployed(f"{SM}:3") == core.StepResult("deploy", True, "published version 1's definition as 3",
                                                       changed=True)
    assert core.version_gone(version) == core.StepResult("read version", False, f"version 1 is gone ({SM}:1)")
    assert core.restore_check(version).detail == "restore version 1"


def test_newest_version_and_arn_tails():
    published = [StateMachineVersion(f"{SM}:{n}", NOW) for n in (1, 3, 2)]
    assert core.newest_version(published).number == 3 and core.newest_version([]) is None
    assert core.tail(SM) == "mlplatform.prod.DemoFlow" and core.tail(f"{SM}:3") == "3"


def test_a_record_is_opened_filled_and_concluded_in_plain_words():
    target = {"environment": "production", "account_id": "222222222222", "state_machine_arn": SM}
    record = core.new_record(core.Kind.PROMOTION, REQUEST, run_id="abcdef0123", started=NOW,
                             dagster_user="alice@example.com", target=target, lint_isolation="namespaces")
    assert record.promotion_id == "20261128T120000Z-promotion-DemoFlow-abcdef01" and record.branch == "feature_x"
    assert record.lint_isolation == "namespaces" and record.target == target and record.target is not target
    staging = _staging(PROD)
    core.record_staging(record, staging)
    assert record.source == {"definition_digest": core.digest(BRANCH), "latest_run_arn": staging.latest_run_arn}
    assert record.code_package == {"url": staging.deployment.code_url, "sha": staging.deployment.code_sha}
    assert record.target["definition_digest"] == core.digest(staging.translated)
    record.checks, record.steps = list(CHECKS), [PACKAGE, DEPLOYED, core.StepResult(core.Step.TRIGGER, False, "x")]
    core.conclude(record, "2026-11-28T12:01:00+00:00")
    assert record.outcome is core.Outcome.PROMOTED_NOT_TRIGGERED and record.production_changed is True
    data = record.to_dict()
    assert type(data["outcome"]) is str and type(data["kind"]) is str and type(data["steps"][2]["name"]) is str
    assert json.loads(json.dumps(data)) == data and data["finished_at"] == "2026-11-28T12:01:00+00:00"
    rollback = core.new_record(core.Kind.ROLLBACK, dataclasses.replace(REQUEST, branch=None), run_id="abcdef0123",
                               started=NOW, dagster_user=None, target=target, lint_isolation="namespaces")
    assert rollback.lint_isolation is None and rollback.branch is None  # a rollback lints nothing
    assert rollback.promotion_id == "20261128T120000Z-rollback-DemoFlow-abcdef01"


# ---- launching from the UI, and what on-call reads in Slack ----

def test_a_partition_gives_the_launchpad_flow_and_project_and_blanks_for_the_rest():
    assert core.launch_fields(core.Kind.PROMOTION, "mlplatform.prod.DemoFlow") == {
        "flow": "DemoFlow", "project": "mlplatform", "branch": "", "requested_by": "", "reason": ""}
    assert core.launch_fields(core.Kind.ROLLBACK, "mlplatform.prod.DemoFlow") == {
        "flow": "DemoFlow", "project": "mlplatform", "requested_by": "", "reason": ""}
    assert core.launch_fields("checks", "mlplatform.prod.DemoFlow") == {
        "flow": "DemoFlow", "project": "mlplatform", "branch": ""}
    # the blanks are bad config: a launch (or a backfill over every partition) that leaves them promotes nothing
    blank = core.PromotionRequest(**{k: v for k, v in core.launch_fields(core.Kind.PROMOTION,
                                                                         "mlplatform.prod.DemoFlow").items()})
    with pytest.raises(ValueError):
        core.validate_request(blank)
    for bad in ("mlplatform.test.feature_x.DemoFlow", "mlplatform.prod.hotfix.DemoFlow", "DemoFlow"):
        with pytest.raises(ValueError):
            core.launch_fields(core.Kind.PROMOTION, bad)


STAGING_SM = "arn:aws:states:us-east-1:111111111111:stateMachine:mlplatform.test.feature_x.DemoFlow"
LINT_OUTPUT = ("`python demoflow.py check` failed (exit 1):\n  File \"demoflow.py\", line 14\n    def end(self:\n"
               "SyntaxError: '(' was never closed <!channel> & <https://evil.example|click>")


def _attempt(checks, steps, kind=core.Kind.PROMOTION, **target):
    """A concluded record as the wiring stores it (to_dict, then JSON): the announcement's input."""
    request = REQUEST if kind == core.Kind.PROMOTION else dataclasses.replace(REQUEST, branch=None,
                                                                               requested_by="bob",
                                                                               reason="AUC <dropped> & worse")
    record = core.new_record(kind, request, run_id="0f1e2d3c4b5a69788796a5b4c3d2e1f0", started=NOW,
                             dagster_user="ci-bot", target={"environment": "production",
                                                             "account_id": "222222222222", "state_machine_arn": SM},
                             lint_isolation="namespaces")
    if kind == core.Kind.PROMOTION:
        record.source = {"environment": "staging", "account_id": "111111111111", "state_machine_arn": STAGING_SM,
                         "latest_run_arn": STAGING_SM.replace("stateMachine", "execution") + ":staging-ok"}
    record.target.update(target)
    record.checks, record.steps = list(checks), list(steps)
    if TRIGGERED in steps:
        record.execution_arn = f"{SM.replace('stateMachine', 'execution')}:{TRIGGERED.detail}"
    core.conclude(record, (NOW + timedelta(minutes=2)).isoformat())
    return json.loads(json.dumps(record.to_dict()))


LINKS = core.announcement_links("https://dagster.example.com/runs/0f1e2d3c", "audit-bucket",
                                "promotions/DemoFlow/20261128T120000Z-promotion-DemoFlow-0f1e2d3c.json", SM)


def _texts(message):
    return json.dumps(message.blocks, ensure_ascii=False)


def test_a_promotion_is_announced_with_who_what_from_where_the_versions_and_links():
    data = _attempt(CHECKS, [PACKAGE, DEPLOYED, TRIGGERED], version_arn=f"{SM}:2", previous_version_arn=f"{SM}:1")
    message = core.render_announcement(data, LINKS)
    header = message.blocks[0]["text"]["text"]
    assert header == ":rocket: DemoFlow promoted to production"
    fields = [f["text"] for f in message.blocks[1]["fields"]]
    assert "*State machine*\n`mlplatform.prod.DemoFlow`" in fields
    assert "*Requested by*\nalice (launched by ci-bot)" in fields
    assert "*Version*\n1 → 2" in fields and "*Production changed*\nyes" in fields
    assert "*From staging*\n`mlplatform.test.feature_x.DemoFlow`\nrun `staging-ok`" in fields
    assert "*Production run*\n`c0ffee00-0000-4000-8000-000000000001`" in fields
    assert "*Checks*: all 3 passed (`lint`, `naming`, `latest staging run`)" in _texts(message)
    buttons = {e["text"]["text"]: e["url"] for e in message.blocks[-2]["elements"]}
    assert buttons == {
        "Dagster run": "https://dagster.example.com/runs/0f1e2d3c",
        "Audit record": "https://us-east-1.console.aws.amazon.com/s3/object/audit-bucket?region=us-east-1&prefix="
                        "promotions/DemoFlow/20261128T120000Z-promotion-DemoFlow-0f1e2d3c.json",
        "Step Functions": f"https://us-east-1.console.aws.amazon.com/states/home?region=us-east-1"
                          f"#/statemachines/view/{SM}"}
    context = message.blocks[-1]["elements"][0]["text"]
    assert data["promotion_id"] in context and LINKS.record_url in context
    assert message.text == "DemoFlow promoted to production: mlplatform.prod.DemoFlow 1 → 2, requested by alice."


def test_a_first_promotion_has_no_previous_version():
    data = _attempt(CHECKS, [PACKAGE, DEPLOYED], version_arn=f"{SM}:1")
    assert "*Version*\\nnone → 1" in _texts(core.render_announcement(data, LINKS))


def test_a_blocked_promotion_lists_its_failed_checks_escaped():
    lint = core.CheckResult("lint", False, LINT_OUTPUT)
    data = _attempt([lint, *BLOCKED[1:]], [])
    message = core.render_announcement(data, LINKS)
    assert message.blocks[0]["text"]["text"] == ":no_entry: DemoFlow promotion blocked"
    text = _texts(message)
    assert "*Failed checks (2 of 3)*" in text and "`naming`" not in text  # passed checks are not listed
    assert "• `latest staging run`: staging-oom FAILED (States.TaskFailed)" in text
    assert "SyntaxError: '(' was never closed &lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;" in text
    assert "<!channel>" not in text and "<https://evil" not in text  # staging text cannot ping or link
    assert "*Version*\\nunchanged" in text  # a blocked attempt never reads production's versions
    assert "*Production changed*\\nno" in text
    assert message.text.endswith("Failed: lint, latest staging run.")


def test_a_failed_attempt_names_its_step_and_a_rollback_its_versions():
    denied = core.StepResult("deploy", False, DENIED.format("UpdateStateMachine"))
    failed = core.render_announcement(_attempt(CHECKS, [PACKAGE, denied], previous_version_arn=f"{SM}:1"), LINKS)
    assert failed.blocks[0]["text"]["text"] == ":x: DemoFlow promotion failed, production unchanged"
    assert "*Failed step*\\n• `deploy`: AccessDeniedException" in _texts(failed)
    assert "*Version*\\n1, unchanged" in _texts(failed)
    rollback = _attempt([core.CheckResult("version", True, "restore version 1")],
                        [core.StepResult("deploy", True, "published version 1's definition as 3", changed=True)],
                        kind=core.Kind.ROLLBACK, previous_version_arn=f"{SM}:2", restored_version_arn=f"{SM}:1",
                        version_arn=f"{SM}:3")
    message = core.render_announcement(rollback, LINKS)
    assert message.blocks[0]["text"]["text"] == ":rewind: DemoFlow rolled back in production"
    text = _texts(message)
    assert "*Version*\\n2 → 3 (version 1's definition)" in text and "From staging" not in text
    assert "*Reason*: AUC &lt;dropped&gt; &amp; worse" in text and "*Requested by*\\nbob (launched by ci-bot)" in text
    denied = _attempt([core.CheckResult("version", True, "restore version 1")], [denied], kind=core.Kind.ROLLBACK,
                      previous_version_arn=f"{SM}:2", restored_version_arn=f"{SM}:1")
    message = core.render_announcement(denied, LINKS)
    assert message.blocks[0]["text"]["text"] == ":x: DemoFlow rollback failed, production unchanged"
    assert "*Version*\\n2, unchanged" in _texts(message)


def test_a_no_op_is_not_announced_but_a_deploy_whose_trigger_failed_is():
    assert core.render_announcement(_attempt(CHECKS, [core.StepResult("deploy", True, "already runs it")]),
                                    LINKS) is None
    data = _attempt(CHECKS, [PACKAGE, DEPLOYED, core.StepResult("trigger", False, DENIED.format("StartExecution"))],
                    version_arn=f"{SM}:2", previous_version_arn=f"{SM}:1")
    message = core.render_announcement(data, LINKS)
    assert message.blocks[0]["text"]["text"] == ":warning: DemoFlow promoted to production, its run not started"
    assert "*Failed step*\\n• `trigger`: AccessDeniedException" in _texts(message)


def test_many_failed_checks_are_counted_past_the_first_ten_and_long_details_cut():
    many = [core.CheckResult(f"definition: rule_{i}", False, "x" * 5000) for i in range(25)]
    text = _texts(core.render_announcement(_attempt(many, []), LINKS))
    assert text.count("• `definition: rule_") == core.MAX_LISTED and "…and 15 more (all in the audit record)" in text
    assert "x" * core.MAX_DETAIL not in text and "x" * (core.MAX_DETAIL - 1) + "…" in text
    assert core.announcement_key("p1") == "announcement/p1"
