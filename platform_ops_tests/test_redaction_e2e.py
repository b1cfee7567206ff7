"""Redaction over the wire: a staging task that prints our credentials is alerted on with none of
them in Slack or the run's metadata; and the Slack resource scrubs whatever it is handed."""

import json

from platform_ops.adapters.aws import forget_sessions
from platform_ops.adapters.slack import PlatformSlackResource
from platform_ops.code_location import build_defs
from platform_ops.messages import SlackMessage
from platform_ops.redaction import REDACTED
from platform_ops.sandbox.server import SANDBOX_TOKEN
from platform_ops_tests.test_alerts_e2e import alert_settings, instance, run, tick  # noqa: F401

SECRET = "e2e/redaction/SecretAccessKey+0123456789abcdef"


def test_a_task_that_prints_our_credentials_is_alerted_without_them(world, instance, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # the sandbox's own ("sandbox") is no secret to find
    forget_sessions()
    world.run_flow("staging", "leaky-run", width=1, faults=[{"fault": "leaky", "step": "train", "index": 0}])
    defs = build_defs(alert_settings(world))
    [request] = tick(defs, instance).run_requests
    result = run(defs, request, instance)
    assert result.success
    [alert] = world.messages
    text = json.dumps(alert)
    assert "ValueError: leaked on purpose" in text  # the log tail is there
    assert REDACTED in text
    logged = json.dumps([str(e.dagster_event) for e in instance.all_logs(result.run_id) if e.dagster_event])
    for secret in (SANDBOX_TOKEN, SECRET):
        assert secret not in text and secret not in logged


def test_the_slack_resource_redacts_text_and_blocks_on_the_way_out(world):
    slack = PlatformSlackResource(token=SANDBOX_TOKEN, base_url=world.sandbox.sink.api_url)
    message = SlackMessage(f"token {SANDBOX_TOKEN}", ({"type": "section", "text": {
        "type": "mrkdwn", "text": "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}},))
    slack.post(world.settings.slack.channel, message)
    [posted] = world.messages
    assert posted["text"] == f"token {REDACTED}"
    assert posted["blocks"][0]["text"]["text"] == f"aws_secret_access_key = {REDACTED}"
