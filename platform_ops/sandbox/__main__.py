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
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from platform_ops.sandbox.smoke import SANDBOX_SETTINGS

ROOT = Path(__file__).resolve().parents[2]


def missing_from_checkout(command: str) -> list[Path]:
    """What `command` reads from the repository (not package data: an installed platform-ops has
    none of it): platform-ops' CloudFormation template, and for `demo` the Dagster workspace."""
    from platform_ops.sandbox import world

    needed = [world.STACK_TEMPLATE, *([ROOT / "workspace.yaml"] if command == "demo" else [])]
    return [path for path in needed if not path.is_file()]


def _start(args: argparse.Namespace):
    from platform_ops.sandbox.metaflow_config import announce
    from platform_ops.sandbox.scenario import Driver, load_scenario
    from platform_ops.sandbox.server import Sandbox
    from platform_ops.settings import SETTINGS_ENV_VAR, load_settings

    settings_path = os.environ.get(SETTINGS_ENV_VAR) or str(SANDBOX_SETTINGS)
    settings = load_settings(settings_path)
    scenario = load_scenario(args.scenario)
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


def demo(args: argparse.Namespace) -> int:
    sandbox, driver, env = _start(args)
    child_env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    child_env.update(env)
    dagster = str(Path(sys.executable).parent / "dagster")
    cmd = [dagster, "dev", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(args.port)]
    print(f"[sandbox] starting Dagster at http://127.0.0.1:{args.port} (Ctrl-C stops everything)", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        print("\n[sandbox] stopping Dagster and the sandbox...", flush=True)
        try:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            proc.kill()
        return 0
    finally:
        driver.stop()
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
