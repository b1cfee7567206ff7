"""The sandbox's command line.

  python -m platform_ops.sandbox serve [--scenario default]   sandbox AWS + Slack sink + scenario driver
  python -m platform_ops.sandbox demo  [--scenario default]   the same, plus `dagster dev` on 127.0.0.1:3000
  python -m platform_ops.sandbox smoke [scenario] [--postgres-url URL] [--faults [--faults-report F]]
                                                              one headless end-to-end pass, one JSON line
  python -m platform_ops.sandbox faults [--only NAME] [--repeat N]
                                                              the fault suite alone (or the scenarios whose
                                                              function name contains NAME), N times over
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from platform_ops.sandbox.smoke import SANDBOX_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
# the demo's Dagster instance: runs, cursors and plots outlive a restart (`make demo-clean` resets it)
DEMO_HOME = ROOT / ".sandbox" / "dagster_home"
SINK_FILE = "slack-sink.json"  # the sink's messages beside it: the threads Dagster's ledger points at


def missing_from_checkout(command: str) -> list[Path]:
    """What `command` reads from the repository (not package data: an installed platform-ops has
    none of it): platform-ops' CloudFormation template, and for `demo` the Dagster workspace."""
    from platform_ops.sandbox import world

    needed = [world.STACK_TEMPLATE, *([ROOT / "workspace.yaml"] if command == "demo" else [])]
    return [path for path in needed if not path.is_file()]


# resource types of deploy/cloudformation's stack that moto does not model and the sandbox does
# not need (the queue's policy: moto's SQS lets EventBridge deliver without one)
UNMODELLED_STACK_TYPES = ("AWS::SQS::QueuePolicy",)


class _UnmodelledStackTypes(logging.Filter):
    """Drops moto's "No Moto CloudFormation support for AWS::SQS::QueuePolicy", logged at every
    stack creation (twice a demo start); any other type still warns, as a real gap would."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "No Moto CloudFormation support for %s" and record.args
                    and record.args[0] in UNMODELLED_STACK_TYPES)


def quiet_moto() -> None:
    """moto's CloudFormation says each skipped type twice: a log record and a Python warning."""
    import warnings

    logging.getLogger("moto").addFilter(_UnmodelledStackTypes())
    for kind in UNMODELLED_STACK_TYPES:
        warnings.filterwarnings("ignore", message=f"Tried to parse {re.escape(kind)} but it's not supported")


def _start(args: argparse.Namespace):
    from platform_ops.sandbox.metaflow_config import announce
    from platform_ops.sandbox.scenario import Driver, load_scenario
    from platform_ops.sandbox.server import Sandbox
    from platform_ops.settings import SETTINGS_ENV_VAR, load_settings

    settings_path = os.environ.get(SETTINGS_ENV_VAR) or str(SANDBOX_SETTINGS)
    settings = load_settings(settings_path)
    scenario = load_scenario(args.scenario)
    quiet_moto()
    sandbox = Sandbox(settings, aws_port=args.aws_port, slack_port=args.slack_port).start()
    env = {**sandbox.product_env(), SETTINGS_ENV_VAR: settings_path}
    driver = Driver(sandbox, scenario, log=lambda m: print(f"[sandbox] {m}", flush=True)).start()
    print(f"[sandbox] AWS (moto, accounts {', '.join(e.account_id for e in settings.environments.values())}) "
          f"at {sandbox.endpoint}", flush=True)
    print(f"[sandbox] Slack sink at {sandbox.sink.url}  (messages as Slack shows them)", flush=True)
    print("[sandbox] point any AWS/Slack client at it with:", flush=True)
    for key, value in env.items():
        print(f"  export {key}={value}", flush=True)
    announce(settings, sandbox.endpoint, ROOT / ".sandbox" / "metaflow")  # Metaflow profiles + exports
    return sandbox, driver, env


def serve(args: argparse.Namespace) -> int:
    sandbox, driver, _ = _start(args)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        driver.stop()
        sandbox.stop()
    return 0


def prepare_dagster_home(home: Path) -> Path:
    """The demo's DAGSTER_HOME, kept between runs, with the repository's dagster.yaml (concurrency
    limits, no community modal over the first page) as its instance config."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    offer_promotion(home)
    return home


def offer_promotion(home: Path) -> None:
    """The production DemoFlow as a partition of the promotion jobs, so the Launchpad offers it on
    a fresh demo (a promotion_checks run would add it too)."""
    import dagster as dg

    from platform_ops.promotion.defs import PROMOTED
    from platform_ops.sandbox.flows import DEPLOYMENTS

    with dg.DagsterInstance.from_config(str(home)) as instance:
        known = set(instance.get_dynamic_partitions(PROMOTED.name))
        wanted = [DEPLOYMENTS["production"].name]
        instance.add_dynamic_partitions(PROMOTED.name, [p for p in wanted if p not in known])


def restore_sink(sink, path: Path) -> int:
    """The messages a previous demo posted (Dagster's history names their threads): kept so a
    reply or update after a restart lands in its thread. Returns how many were restored."""
    if not path.is_file():
        return 0
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        return 0
    with sink.state.lock:
        sink.state.messages[:0] = saved.get("messages", [])
        sink.state.channels.update(saved.get("channels", {}))
        sink.state.last_ts = max(sink.state.last_ts, float(saved.get("last_ts", 0)))
    return len(saved.get("messages", []))


def save_sink(sink, path: Path) -> None:
    with sink.state.lock:
        data = {"messages": sink.state.messages, "channels": sink.state.channels, "last_ts": sink.state.last_ts}
        path.write_text(json.dumps(data))


def demo(args: argparse.Namespace) -> int:
    home = prepare_dagster_home(Path(args.dagster_home).resolve())
    sandbox, driver, env = _start(args)
    sink_file = home / SINK_FILE
    if restored := restore_sink(sandbox.sink, sink_file):
        print(f"[sandbox] {restored} Slack messages kept from the last demo (make demo-clean starts afresh)",
              flush=True)
    child_env = {**os.environ, **env, "DAGSTER_HOME": str(home)}
    dagster = str(Path(sys.executable).parent / "dagster")
    cmd = [dagster, "dev", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(args.port)]
    print(f"[sandbox] starting Dagster at http://127.0.0.1:{args.port} (Ctrl-C stops everything; "
          f"its history is kept in {home})", flush=True)
    # its own session: a terminal's Ctrl-C reaches this process only, which asks dagster dev to shut
    # down (it stops its webserver and daemon over their pipes) instead of every child printing "Aborted!"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even if ignored here
    # Ctrl-C, or a SIGTERM (a supervisor, a test), stops everything the same way, even when this
    # process was started with SIGINT ignored (a background job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        print("\n[sandbox] stopping Dagster and the sandbox...", flush=True)
        try:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            os.killpg(proc.pid, signal.SIGKILL)
        return 0
    finally:
        driver.stop()
        save_sink(sandbox.sink, sink_file)
        sandbox.stop()


def faults(args: argparse.Namespace) -> int:
    """The fault suite without the smoke pass before it, `repeat` times in one sandbox: a table per
    round on stderr, then one line `passed P of R rounds`; exit 1 unless every row of every round passed."""
    from platform_ops.sandbox.faults import distinctive_credentials, run_suite, table
    from platform_ops.sandbox.server import Sandbox
    from platform_ops.settings import SETTINGS_ENV_VAR, load_settings

    settings_path = os.environ.get(SETTINGS_ENV_VAR) or str(SANDBOX_SETTINGS)
    settings = load_settings(settings_path)
    sandbox = Sandbox(settings).start()
    passed = 0
    try:
        os.environ.update({**sandbox.product_env(), SETTINGS_ENV_VAR: settings_path, **distinctive_credentials()})
        for round_no in range(1, args.repeat + 1):
            results = run_suite(sandbox, settings, only=args.only)
            print(f"round {round_no}:\n{table(results)}", file=sys.stderr, flush=True)
            passed += all(f.passed for f in results)
    finally:
        sandbox.stop()
    print(f"passed {passed} of {args.repeat} rounds")
    return 0 if passed == args.repeat else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m platform_ops.sandbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("serve", "demo"):
        p = sub.add_parser(name)
        p.add_argument("--scenario", default="default", help="scenario name or YAML path")
        p.add_argument("--aws-port", type=int, default=5055)
        p.add_argument("--slack-port", type=int, default=5056)
        if name == "demo":
            p.add_argument("--port", type=int, default=3000, help="Dagster UI port")
            p.add_argument("--dagster-home", default=str(DEMO_HOME), help="the Dagster instance's directory")
    p = sub.add_parser("smoke")
    p.add_argument("scenario", nargs="?", default="smoke")
    p.add_argument("--postgres-url", help="run on a Postgres-backed Dagster instance (postgresql://...)")
    p.add_argument("--faults", action="store_true", help="then run the fault suite; adds faults_passed/faults_total")
    p.add_argument("--faults-report", help="write the fault suite's rows to this file, one JSON line each")
    p = sub.add_parser("faults")
    p.add_argument("--only", help="only the scenarios whose function name contains this, e.g. throttling")
    p.add_argument("--repeat", type=int, default=1, help="rounds, each on a freshly reset sandbox per scenario")
    args = parser.parse_args(argv)
    missing = missing_from_checkout(args.command)
    if missing:
        print(f"the sandbox runs from a checkout of platform-ops (git clone, then pip install -e '.[sandbox]'); "
              f"not found: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    if args.command == "smoke":
        from platform_ops.sandbox.smoke import main as smoke

        return smoke(args.scenario, args.postgres_url, args.faults, args.faults_report)
    return {"serve": serve, "demo": demo, "faults": faults}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
