"""The demo as a newcomer sees it, in a real browser: `make demo`'s own command (sandbox, scenario
driver, `dagster dev`) on free ports and a throwaway DAGSTER_HOME, its default scenario with short
rounds; then headless Chromium (Debian's `chromium`, which `make system-packages` and `.ci/run`
install) renders Dagster's runs page, the queue summary's asset page and the Slack sink's page.
Every wait is on a condition (GraphQL, the sink's JSON, the rendered DOM) with a generous deadline.
Deselect with `-m "not browser"`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from platform_ops.sandbox.scenario import SCENARIOS
from platform_ops.sandbox.server import free_port
from platform_ops.settings import SETTINGS_ENV_VAR

ROOT = Path(__file__).resolve().parents[1]
BROWSER = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DEADLINE = 420  # s: a busy 2-core machine starting dagster dev and running the first reap and alert runs

pytestmark = [pytest.mark.browser, pytest.mark.timeout(DEADLINE + 240)]


def _descendants(pid: int) -> list[int]:
    """Every process under `pid` (dagster dev runs in its own session, so no group covers them all)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class Demo:
    proc: subprocess.Popen
    ui: str
    sink: str
    home: Path
    log: Path
    tmp: Path

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        req = urllib.request.Request(f"{self.ui}/graphql", data=json.dumps({"query": query, "variables": variables or {}})
                                     .encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)["data"]

    def sink_messages(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.sink}/_sink/messages", timeout=30) as resp:
            return json.load(resp)["messages"]

    def until(self, what: str, check: Callable[[], Any], deadline: float) -> Any:
        """`check()`'s first truthy answer; fails naming `what` (and the demo's log) past the deadline."""
        while True:
            assert self.proc.poll() is None, f"the demo exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}"
            try:
                answer = check()
            except OSError:  # not listening yet
                answer = None
            if answer:
                return answer
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not within the deadline\n{self.log.read_text()[-3000:]}")
            time.sleep(1)

    def dom(self, path: str, js_app: bool = True) -> str:
        """The page as Chromium renders it. Dagster's UI is a JS app that fetches its data by
        GraphQL: it gets 15 s of virtual time to settle. The sink's page is plain HTML that
        refreshes itself every 10 s: it is dumped once loaded (a time budget would follow the refresh)."""
        budget = ["--virtual-time-budget=15000"] if js_app else []
        out = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                              f"--user-data-dir={self.tmp / 'chromium'}", *budget, "--dump-dom", path],
                             capture_output=True, text=True, timeout=180)
        return out.stdout


RUNS = """{ runsOrError(limit: 200) { ... on Runs { results { runId jobName status } } } }"""
LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId } } } }"""
SUMMARY = """{ assetOrError(assetKey: {path: ["batch_queue_summary"]}) {
  ... on Asset { assetMaterializations(limit: 1) { runId } } } }"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    if BROWSER is None:
        pytest.skip("no Chromium: `make system-packages` (as root) or .ci/run installs Debian's chromium")
    tmp = tmp_path_factory.mktemp("browser")
    scenario = yaml.safe_load((SCENARIOS / "default.yaml").read_text())
    scenario["interval_seconds"] = 15  # the default story, rounds three times as fast
    (tmp / "demo.yaml").write_text(yaml.safe_dump(scenario))
    aws, slack, ui = free_port(), free_port(), free_port()
    log = tmp / "demo.log"
    env = {k: v for k, v in os.environ.items() if k not in (SETTINGS_ENV_VAR, "DAGSTER_HOME")}
    cmd = [sys.executable, "-m", "platform_ops.sandbox", "demo", "--scenario", str(tmp / "demo.yaml"),
           "--aws-port", str(aws), "--slack-port", str(slack), "--port", str(ui), "--dagster-home", str(tmp / "home")]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**env, "PYTHONWARNINGS": "ignore"}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    box = Demo(proc, f"http://127.0.0.1:{ui}", f"http://127.0.0.1:{slack}", tmp / "home", log, tmp)
    try:
        yield box
    finally:
        children = _descendants(proc.pid)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        for pid in _descendants(proc.pid) + children:  # whatever did not stop with it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def played(demo):
    """The scenario played until Dagster has a reap run and an alert run that succeeded, the queue
    summary is materialized (its refresh launched through GraphQL, as the Launchpad does) and the
    sink holds a thread reply."""
    deadline = time.monotonic() + DEADLINE
    demo.until("the Dagster UI answers", lambda: demo.graphql("{ version }"), deadline)

    def launched():
        params = {"selector": {"repositoryLocationName": "platform_ops", "repositoryName": "__repository__",
                               "jobName": "refresh_platform_metrics"}, "runConfigData": {}}
        return demo.graphql(LAUNCH, {"p": params})["launchRun"]["__typename"] == "LaunchRunSuccess"

    demo.until("the metrics refresh launched (the code location loaded)", launched, deadline)

    def done(job: str) -> Callable[[], dict | None]:
        def check():
            runs = demo.graphql(RUNS)["runsOrError"]["results"]
            failed = [r for r in runs if r["jobName"] == job and r["status"] == "FAILURE"]
            assert not failed, f"{job} failed: {failed}\n{demo.log.read_text()[-3000:]}"
            return next((r for r in runs if r["jobName"] == job and r["status"] == "SUCCESS"), None)
        return check

    reap = demo.until("a reap_stuck_jobs run succeeded", done("reap_stuck_jobs"), deadline)
    alert = demo.until("an alert_failed_executions run succeeded", done("alert_failed_executions"), deadline)
    demo.until("batch_queue_summary materialized",
               lambda: demo.graphql(SUMMARY)["assetOrError"].get("assetMaterializations"), deadline)

    def replied():
        messages = demo.sink_messages()
        tops = {m["ts"] for m in messages if not m.get("thread_ts")}
        return next((m for m in messages if m.get("thread_ts") in tops), None)

    reply = demo.until("a reply in a thread on the sink", replied, deadline)
    demo.until("the reaper's reports in both accounts", lambda: {e for m in demo.sink_messages()
               for e in ("staging", "production") if m["text"].startswith("Reaper:") and f"in {e} /" in m["text"]}
               == {"staging", "production"}, deadline)
    return {"reap": reap, "alert": alert, "reply": reply, "messages": demo.sink_messages()}


def test_the_runs_page_lists_a_reap_run_and_an_alert_run(demo, played):
    def listed():
        dom = demo.dom(f"{demo.ui}/runs")
        return all(f'href="/runs/{played[k]["runId"]}"' in dom for k in ("reap", "alert")) and dom
    dom = demo.until("the runs page lists both runs", listed, time.monotonic() + 240)
    assert ">reap_stuck_jobs</a>" in dom and ">alert_failed_executions</a>" in dom
    # the repository's dagster.yaml is the demo instance's config: no community modal over the page
    assert (demo.home / "dagster.yaml").read_text() == (ROOT / "dagster.yaml").read_text()
    assert demo.graphql("{ shouldShowNux }")["shouldShowNux"] is False


def _tables(dom: str) -> list[str]:
    """Each rendered <table> as its cells' text, space-separated."""
    return [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", t)) for t in re.findall(r"<table.*?</table>", dom, re.S)]


def test_the_queue_summary_page_shows_its_table(demo, played):
    def table():
        found = [t for t in _tables(demo.dom(f"{demo.ui}/assets/batch_queue_summary"))
                 if " environment queue " in t and "RUNNABLE" in t]
        return found and found[0]
    summary = demo.until("the summary's table on its asset page", table, time.monotonic() + 240)
    assert " staging ml-staging " in summary and " production ml-production " in summary


def test_the_sink_page_shows_threaded_replies(demo, played):
    dom = demo.dom(demo.sink, js_app=False)
    reply = played["reply"]
    [thread] = [t for t in re.findall(r'<details class="thread">.*?</details>', dom, re.S)
                if f'id="p{reply["ts"].replace(".", "")}"' in t]
    assert re.search(r"<summary>\d+ repl(y|ies)", thread)
    # its parent is the message the details element follows, in the channel
    parent = f'id="p{reply["thread_ts"].replace(".", "")}"'
    assert dom.index(parent) < dom.index(thread)
    edited = [m for m in played["messages"] if m.get("edits")]
    assert not edited or "(edited)" in dom
    # the reaped jobs' owners, from their metaflow.owner tags: alice through slack.owners, bob by name
    reports = {m["text"].split(" / ")[0]: m for m in played["messages"] if m["text"].startswith("Reaper:")}
    text = {k: json.dumps(m["blocks"]) for k, m in reports.items()}
    alice = [int(n) for k, v in text.items() if "in staging" in k for n in re.findall(r"<@U0ALICE> (\d+)", v)]
    assert alice and max(alice) >= 3, text  # the oversized training jobs are hers, not only the flow's task
    assert any("in production" in k and re.search(r"Owners:[^.]*\bbob\b", v) for k, v in text.items()), text


def test_ctrl_c_stops_the_demo_cleanly_and_keeps_its_history(demo, played):
    """Last in the module: it stops the demo, as Ctrl-C in `make demo`'s terminal does."""
    demo.proc.send_signal(signal.SIGINT)
    assert demo.proc.wait(timeout=120) == 0
    log = demo.log.read_text()
    assert "Aborted!" not in log and "QueuePolicy" not in log  # neither dagster's children nor moto speak up
    assert "Dagster services shut down." in log
    assert (demo.home / "slack-sink.json").is_file() and (demo.home / "history").is_dir()
