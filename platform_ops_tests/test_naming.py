"""The naming conventions shared by the template and promotion: accepted and rejected names."""

import pytest

from platform_ops import naming
from platform_ops.sandbox.flows import DEPLOYMENTS


@pytest.mark.parametrize("check, good", [
    (naming.check_project, "fraud_detection"), (naming.check_project, "mlplatform"),
    (naming.check_flow, "ScoringFlow"), (naming.check_flow, "DemoFlow"), (naming.check_branch, "feature_x"),
    (naming.check_user, "alice"), (naming.check_team, "risk-ml"), (naming.check_slack_id, "U0ALICE"),
    (naming.check_slack_id, ""),
])
def test_accepted(check, good):
    assert check(good) == good


@pytest.mark.parametrize("check, bad, message", [
    (naming.check_project, "fraud-detection", "project name 'fraud-detection': lowercase letters, digits and underscores"),
    (naming.check_project, "Fraud", "project name 'Fraud'"),
    (naming.check_project, "9lives", "starting with a letter"),
    (naming.check_project, "x" * 41, "at most 40 characters"),
    (naming.check_flow, "Training", "flow class name 'Training': CamelCase letters and digits ending in 'Flow'"),
    (naming.check_flow, "scoring_flow", "ending in 'Flow'"),
    (naming.check_branch, "feature-x", "branch name 'feature-x'"),
    (naming.check_user, "Alice", "owner 'Alice'"),
    (naming.check_team, "Risk ML", "team 'Risk ML'"),
    (naming.check_slack_id, "alice", "Slack user id 'alice'"),
])
def test_rejected_with_the_rule_and_an_example(check, bad, message):
    with pytest.raises(naming.NamingError) as err:
        check(bad)
    assert message in str(err.value) and "(e.g. " in str(err.value)


@pytest.mark.parametrize("git_branch, branch", [
    ("feature/New-Model", "feature_new_model"), ("main", "main"), ("JIRA-123_fix", "jira_123_fix"),
    ("--", "main"), ("a" * 80, "a" * 60),
])
def test_sanitize_branch(git_branch, branch):
    assert naming.sanitize_branch(git_branch) == branch
    naming.check_branch(naming.sanitize_branch(git_branch))


def test_state_machine_names_follow_metaflow_project_scheme():
    assert str(naming.state_machine_name("mlplatform", "DemoFlow", user="alice")) == "mlplatform.user.alice.DemoFlow"
    assert str(naming.state_machine_name("mlplatform", "DemoFlow", branch="feature_x")) == "mlplatform.test.feature_x.DemoFlow"
    assert str(naming.state_machine_name("mlplatform", "DemoFlow", production=True)) == "mlplatform.prod.DemoFlow"
    assert str(naming.state_machine_name("mlplatform", "DemoFlow", branch="b", production=True)) == "mlplatform.prod.b.DemoFlow"
    parsed = naming.parse_state_machine_name("mlplatform.test.feature_x.DemoFlow")
    assert (parsed.project, parsed.branch, parsed.flow, parsed.kind, parsed.is_production) == (
        "mlplatform", "test.feature_x", "DemoFlow", "test", False)
    assert naming.parse_state_machine_name("mlplatform.prod.DemoFlow").is_production
    for bad in ("DemoFlow", "mlplatform.staging.DemoFlow", "ml-platform.prod.DemoFlow", "mlplatform.prod.demo"):
        with pytest.raises(naming.NamingError):
            naming.parse_state_machine_name(bad)


def test_the_sandbox_deployments_obey_the_conventions():
    for deployment in DEPLOYMENTS.values():
        naming.parse_state_machine_name(deployment.name)


def test_project_tags():
    assert naming.project_tags("alice", "fraud_detection", "risk-ml") == {
        "owner": "alice", "project": "fraud_detection", "team": "risk-ml"}
    with pytest.raises(naming.NamingError, match="project name"):
        naming.project_tags("alice", "fraud-detection", "risk-ml")
