"""`make smoke`: one headless end-to-end pass over the sandbox.

Starts the sandbox, plays one round of a scenario, ticks every sensor twice on a real temporary
Dagster instance through the in-process daemon, executes the runs they request, and prints ONE
JSON line. Exit code 1 when a tick or a run failed (or, with the fault option, a fault scenario).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

SANDBOX_SETTINGS = Path(__file__).parent / "settings.yaml"


def promote(sandbox: Any, settings: Any, defs: Any, instance: Any) -> bool:
    """A data scientist's last staging run succeeded; they promote it, as CI would launch it."""
    from platform_ops.promotion.defs import PROMOTION_TAG
    from platform_ops.sandbox import flows

    if settings.promotion is None:
        return False
    flows.run_to_end(sandbox.endpoint, settings.environments[settings.promotion.source], "smoke-release", width=2)
    config = {"flow": "DemoFlow", "project": "mlplatform", "branch": "feature_x", "requested_by": "smoke",
              "reason": "make smoke"}
    run = defs.resolve_job_def("promote_flow").execute_in_process(
        run_config={"ops": {"promote_flow": {"config": config}},
                    "loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        instance=instance, tags={PROMOTION_TAG: "mlplatform.prod.DemoFlow"}, raise_on_error=False)
    if not run.success:
        return False
    outcome = run.output_for_node("promote_flow")["outcome"]
    if outcome != "promoted":
        print(f"promotion: {outcome}", file=sys.stderr)
    return outcome == "promoted"


def incident_figures(messages: list[dict]) -> dict[str, int]:
    """From the sink: incidents opened (an execution's message that is neither a further failure's
    reply nor a reply under the reap that caused it), the in-place updates of their messages, and
    the health sensor's posts."""
    def payload(m: dict) -> dict:
        return (m.get("metadata") or {}).get("event_payload") or {}

    executions = [m for m in messages if payload(m).get("kind") == "execution"]
    return {"incidents_opened": sum(1 for m in executions
                                    if not payload(m).get("further_failure") and not payload(m).get("reaped_by")),
            "streak_updates": sum(len(m.get("edits", [])) for m in executions),
            "health_alerts": sum(1 for m in messages if "/health/" in payload(m).get("key", ""))}


def missed_schedules(messages: list[dict]) -> int:
    """Missed-schedule announcements the sink holds (by their Slack metadata). 0 for a pass that
    ends, as it does in a few minutes, before the sandbox's scheduled deployment (sandbox/flows.py:
    SCHEDULED) misses its first fire time, 8 minutes in: one here is a schedule nobody missed."""
    from platform_ops.schedules.defs import KIND

    return sum(1 for m in messages if ((m.get("metadata") or {}).get("event_payload") or {}).get("kind") == KIND)


def main(scenario_name: str = "smoke", postgres_url: str | None = None, faults: bool = False,
         faults_report: str | None = None) -> int:
    """`postgres_url`: run on a Postgres-backed Dagster instance (production's storage) instead of
    a temporary SQLite one. `faults`: then run the fault suite (its table on stderr, its rows as
    JSON lines in `faults_report`) and add faults_passed / faults_total to the line."""
    import dagster as dg

    from platform_ops.sandbox.daemon import Daemon
    from platform_ops.sandbox.scenario import load_scenario, play_round, wait_until_quiet
    from platform_ops.sandbox.server import Sandbox
    from platform_ops.settings import SETTINGS_ENV_VAR, load_settings

    settings_path = os.environ.get("PLATFORM_OPS_SMOKE_SETTINGS", str(SANDBOX_SETTINGS))
    settings = load_settings(settings_path)
    sandbox = Sandbox(settings).start()
    try:
        os.environ.update(sandbox.product_env())
        os.environ[SETTINGS_ENV_VAR] = settings_path
        if faults:
            from platform_ops.sandbox.faults import distinctive_credentials

            os.environ.update(distinctive_credentials())
        play_round(sandbox, load_scenario(scenario_name), 0)
        wait_until_quiet(sandbox)  # Metaflow runs have submitted what they will submit

        from platform_ops.code_location import build_defs

        defs = build_defs(settings)
        totals = {"stuck_jobs_cancelled": 0, "failed_executions_alerted": 0}
        summary: dict[str, Any] = {}
        storage = {"storage": {"postgres": {"postgres_url": postgres_url}}} if postgres_url else None
        with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home, overrides=storage) as instance:
            # two passes: executions failed by the first pass's reaping are alerted by the second
            daemon = Daemon(defs, instance, dedupe=False)  # every request runs: the counts must still be exact
            for _ in range(2):
                for run in daemon.cycle():
                    for event in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_OUTPUT):
                        metadata = event.dagster_event.step_output_data.metadata
                        for key, total in (("cancelled", "stuck_jobs_cancelled"),
                                           ("announced", "failed_executions_alerted")):
                            totals[total] += metadata[key].value if key in metadata else 0
                wait_until_quiet(sandbox)
            for error in daemon.tick_errors:
                print(f"sensor tick failed: {error}", file=sys.stderr)
            summary = {"sensor_ticks_failed": daemon.ticks_failed, "runs": len(daemon.runs),
                       "runs_failed": daemon.runs_failed}
            metrics = defs.resolve_job_def("refresh_platform_metrics").execute_in_process(
                instance=instance, raise_on_error=False,
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
            summary["runs"] += 1
            summary["runs_failed"] += 0 if metrics.success else 1
            materialized = {m.asset_key.to_user_string(): m.metadata
                                for m in (e.event_specific_data.materialization
                                          for e in metrics.get_asset_materialization_events())}
            totals["metrics_published"] = materialized.get("cloudwatch_metrics", {}).get("metrics_published")
            totals["dashboards"] = materialized.get("cloudwatch_dashboards", {}).get("dashboards")
            promoted = promote(sandbox, settings, defs, instance)
            summary["runs"] += 1
            summary["runs_failed"] += 0 if promoted else 1
            totals["promotions"] = int(promoted)
            totals = {k: getattr(v, "value", v) or 0 for k, v in totals.items()}
        messages = sandbox.sink.state.messages
        totals["long_runs"] = sum(1 for m in messages  # long_runs_sensor's warnings, by their metadata
                                  if (m.get("metadata") or {}).get("event_payload", {}).get("kind") == "long_run")
        line = {**totals, "slack_messages": len(messages), **incident_figures(messages),
                "missed_schedules": missed_schedules(messages), **summary}
        ok = summary["runs_failed"] == 0 and summary["sensor_ticks_failed"] == 0
        if faults:
            from platform_ops.sandbox.faults import run_suite, table

            results = run_suite(sandbox, settings)
            print(table(results), file=sys.stderr)
            if faults_report:
                Path(faults_report).write_text("".join(json.dumps(f.row()) + "\n" for f in results))
            line.update(faults_passed=sum(f.passed for f in results), faults_total=len(results))
            ok = ok and line["faults_passed"] == line["faults_total"]
        print(json.dumps(line))
        return 0 if ok else 1
    finally:
        sandbox.stop()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
