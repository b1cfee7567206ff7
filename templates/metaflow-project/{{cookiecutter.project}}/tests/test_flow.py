"""Runs the flow locally, end to end, and checks what it computed."""

from pathlib import Path

from metaflow import Runner

FLOW = Path(__file__).resolve().parents[1] / "flow.py"


def test_flow_runs_locally_and_adds_up():
    with Runner(str(FLOW), show_output=False).run(scale=2.0) as running:
        run = running.run
        assert run.successful
        assert run["join"].task.data.total == (1 + 2 + 3 + 4) * 2.0
