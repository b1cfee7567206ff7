"""The project template renders a working Metaflow project, rejects bad names with the rule, and
takes template updates through cruft."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "templates" / "metaflow-project"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "USERNAME": "tester", "METAFLOW_USER": "tester", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}


def sh(*cmd, cwd, check=True):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, env=ENV, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def render(out: Path, template: Path = TEMPLATE, **context) -> subprocess.CompletedProcess:
    return sh(BIN / "cookiecutter", "--no-input", template, *[f"{k}={v}" for k, v in context.items()], "-o", out,
              cwd=out.parent, check=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    out = tmp_path_factory.mktemp("rendered")
    result = render(out, project="fraud_detection", flow_name="ScoringFlow", owner="alice", team="risk-ml")
    assert result.returncode == 0, result.stderr
    return out / "fraud_detection"


def test_the_rendered_flow_passes_metaflow_check(project):
    flow = (project / "flow.py").read_text()
    assert '@project(name="fraud_detection")' in flow and "class ScoringFlow(FlowSpec)" in flow
    assert "@retry(times=2)" in flow and 'foreach="shards"' in flow
    out = sh(sys.executable, "flow.py", "check", cwd=project)
    assert "The graph looks good!" in out.stdout + out.stderr


def test_the_rendered_project_passes_its_own_test(project):
    out = sh(sys.executable, "-m", "pytest", "-q", "tests", cwd=project)
    assert "1 passed" in out.stdout


def test_deploy_uses_the_sanitised_git_branch_and_the_tags(project, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(project, work)
    sh("git", "init", "-q", "-b", "Feature/New-Model", cwd=work)
    dry = sh("make", "-n", "deploy-staging", cwd=work).stdout
    assert "flow.py --branch feature_new_model step-functions create" in dry
    assert "--tag owner:alice --tag project:fraud_detection --tag team:risk-ml" in dry
    assert "--aws-batch-tag owner=alice" in dry
    promote = sh("make", "-n", "promotion-checks", "REASON=try", cwd=work).stdout
    assert "launchRun" in promote and "promotion_checks" in promote and '\\"branch\\": \\"feature_new_model\\"' in promote


@pytest.mark.parametrize("context, message", [
    ({"project": "fraud-detection"}, "project name 'fraud-detection': lowercase letters, digits and underscores"),
    ({"flow_name": "Training"}, "flow class name 'Training': CamelCase letters and digits ending in 'Flow'"),
    ({"owner": "Alice"}, "owner 'Alice'"),
    ({"owner_slack_id": "alice"}, "Slack user id 'alice'"),
])
def test_a_bad_name_is_rejected_by_the_hook_with_the_rule(tmp_path, context, message):
    result = render(tmp_path, **context)
    assert result.returncode != 0
    assert message in result.stderr
    assert not any(tmp_path.iterdir())  # nothing generated


def test_cruft_update_applies_a_template_change(tmp_path):
    repo = tmp_path / "template-repo"
    shutil.copytree(TEMPLATE, repo)
    naming = repo / "platform_ops" / "naming.py"  # the hook finds the rules beside the template
    naming.parent.mkdir()
    shutil.copy(ROOT / "platform_ops" / "naming.py", naming)
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "template v1", cwd=repo)
    out = tmp_path / "projects"
    out.mkdir()
    sh(BIN / "cruft", "create", repo, "--no-input", "--output-dir", out,
       "--extra-context", json.dumps({"project": "churn", "flow_name": "ChurnFlow"}), cwd=tmp_path)
    project = out / "churn"
    assert json.loads((project / ".cruft.json").read_text())["context"]["cookiecutter"]["project"] == "churn"
    sh("git", "init", "-q", "-b", "main", cwd=project)
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", "generated", cwd=project)
    readme = repo / "{{cookiecutter.project}}" / "README.md"
    readme.write_text(readme.read_text() + "\nOn call: #{{ cookiecutter.team }}-oncall\n")
    sh("git", "commit", "-qam", "template v2: on-call channel", cwd=repo)
    sh(BIN / "cruft", "update", "--skip-apply-ask", cwd=project)
    assert "On call: #ml-platform-oncall" in (project / "README.md").read_text()
    assert "class ChurnFlow(FlowSpec)" in (project / "flow.py").read_text()
    check = sh(BIN / "cruft", "check", cwd=project)
    assert "up to date" in check.stdout.lower()


@pytest.mark.parametrize("target, job", [("promotion-checks", "promotion_checks"), ("promote", "promote_flow")])
def test_the_promotion_targets_launch_what_platform_ops_accepts(project, tmp_path, sandbox_settings, target, job):
    """The real curl call, caught by a local HTTP server: its run config validates against the
    job's config schema, and it carries the tag that serializes promotions of this flow."""
    import http.server
    import threading

    import dagster as dg

    from platform_ops.code_location import build_defs
    from platform_ops.promotion.defs import PROMOTION_TAG

    bodies = []

    class Catch(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            answer = json.dumps({"data": {"launchRun": {"__typename": "LaunchRunSuccess", "run": {"runId": "r1"}}}})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(answer.encode())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Catch)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    work = tmp_path / "work"
    shutil.copytree(project, work)
    sh("git", "init", "-q", "-b", "feature/new-model", cwd=work)
    try:
        out = sh("make", "-s", target, f"DAGSTER_URL=http://127.0.0.1:{server.server_port}", "REASON=try it",
                 "REQUESTED_BY=alice", cwd=work)
    finally:
        server.shutdown()
    assert "LaunchRunSuccess" in out.stdout
    [params] = [b["variables"]["p"] for b in bodies]
    assert params["selector"]["jobName"] == job
    job_def = build_defs(sandbox_settings).resolve_job_def(job)
    dg.validate_run_config(job_def, params["runConfigData"])  # raises naming the bad key
    config = params["runConfigData"]["ops"][job]["config"]
    assert (config["flow"], config["project"], config["branch"], config["reason"]) == (
        "ScoringFlow", "fraud_detection", "feature_new_model", "try it")
    assert {"key": PROMOTION_TAG, "value": "fraud_detection.prod.ScoringFlow"} in params["executionMetadata"]["tags"]
