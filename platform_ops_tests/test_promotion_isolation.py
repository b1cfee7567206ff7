"""Promotion with hostile staging code, end to end: the audit record in S3 says how the lint ran
and carries no secret; a host that cannot isolate blocks the promotion, audited."""

import dataclasses
import json

from platform_ops.redaction import REDACTED
from platform_ops.sandbox import flows
from platform_ops.sandbox.server import SANDBOX_TOKEN
from platform_ops_tests.test_promotion_e2e import CONFIG, SOURCE, failure, instance, launch, records  # noqa: F401

PRINTS_THE_TOKEN = f"print('stolen: {SANDBOX_TOKEN}')\nraise SystemExit(2)\n" + SOURCE


def with_isolation(settings, mode):
    return dataclasses.replace(settings, promotion=dataclasses.replace(settings.promotion, lint_isolation=mode))


def test_lint_output_never_reaches_the_record_unredacted_and_the_record_says_isolated(world, instance):
    flows.redeploy(world.sandbox.endpoint, world.settings.environments["staging"],
                   PRINTS_THE_TOKEN)
    world.run_flow("staging", "staging-leaky", width=1)
    result, _ = launch(world, instance, "promote_flow", CONFIG)
    assert not result.success and "lint: `python demoflow.py check` failed (exit 2)" in failure(result)
    [record] = records(world)
    text = json.dumps(record)
    assert record["outcome"] == "blocked" and record["lint_isolation"] == "namespaces"
    assert SANDBOX_TOKEN not in text and f"stolen: {REDACTED}" in text
    assert SANDBOX_TOKEN not in failure(result)


def test_an_unisolated_promotion_is_recorded_as_such(world, instance):
    assert world.run_flow("staging", "staging-ok", width=2)["status"] == "SUCCEEDED"
    result, _ = launch(world, instance, "promote_flow", CONFIG, settings=with_isolation(world.settings, "none"))
    assert result.success
    [record] = records(world)
    lint = next(c for c in record["checks"] if c["name"] == "lint")
    assert record["outcome"] == "promoted" and record["lint_isolation"] == "none"
    assert lint["passed"] and "UNSAFE" in lint["detail"]


def test_a_host_that_cannot_isolate_blocks_the_promotion_with_the_setting_named(world, instance, monkeypatch, tmp_path):
    assert world.run_flow("staging", "staging-ok", width=2)["status"] == "SUCCEEDED"
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap here
    result, _ = launch(world, instance, "promote_flow", CONFIG)
    assert not result.success
    assert "lint: cannot isolate the lint on this host: bubblewrap (`bwrap`) is not installed" in failure(result)
    assert "promotion.lint_isolation" in failure(result)
    assert [r["outcome"] for r in records(world)] == ["blocked"]
