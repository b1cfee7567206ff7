"""The sandbox: moto as a real two-account AWS over HTTP, plus the Slack sink.

One process hosts both (moto's fixes only work in the process that runs moto). Besides the AWS
API, it answers a few control calls under /_sandbox/ that a scenario or a test uses to shape the
world the way real incidents shape it:

  POST /_sandbox/reset        wipe every account and recreate the estate from the settings
  POST /_sandbox/faults       {"fault": "oom", "step": "train", "index": 2, ...}: next matching jobs fail so
  POST /_sandbox/jobs         {"environment", "queue", "count", "vcpus", "created_minutes_ago", ...}: bulk submit
  POST /_sandbox/job-status   {"environment", "job_id", "status"}: let the scheduler place a job (STARTING)
  POST /_sandbox/time-up      {"job_ids": [...]} (or {} for all): jobs running out an after_seconds end now
  POST /_sandbox/execution-times {"environment", "name" | "execution_arn", "started_minutes_ago", "ran_minutes"}:
                               an execution that started (and ran) that long ago; jobs take started_minutes_ago
                               and ran_minutes too
  POST /_sandbox/deploy-flow  {"environment", "name", "max_workers"}: another DemoFlow deployment
  POST /_sandbox/start-flow   {"environment", "name", "width", "state_machine"}: a Metaflow run
  POST /_sandbox/aws-faults   AWS misbehaving: throttling, a broken role, a mangled history (aws_faults.py)
  GET  /_sandbox/quota-counters  what each account's APIs took and were refused under `quotas` (quotas.py)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from platform_ops.sandbox import flows, moto_internals
from platform_ops.sandbox.accounts import JOB_DEFINITION, SANDBOX_CREDENTIALS
from platform_ops.sandbox.aws_faults import AwsFaults
from platform_ops.sandbox.quotas import QuotaLayer
from platform_ops.sandbox.slack_sink import SlackSink
from platform_ops.sandbox.world import create_world
from platform_ops.settings import Settings

SANDBOX_TOKEN = "xoxb-sandbox-0000000000-not-a-real-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sandbox:
    def __init__(self, settings: Settings, host: str = "127.0.0.1", aws_port: int = 0, slack_port: int = 0):
        self.settings = settings
        self.host = host
        self.aws_port = aws_port or free_port()
        self.sink = SlackSink(host, slack_port)
        self.aws_faults = AwsFaults(QuotaLayer())
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def home(self):
        """The environment the base credentials belong to: the one reached without a role."""
        envs = list(self.settings.environments.values())
        return next((e for e in envs if not e.role_arn), envs[0])

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.aws_port}"

    def product_env(self) -> dict[str, str]:
        """The standard AWS and Slack environment that points platform-ops at the sandbox."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": SANDBOX_CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": SANDBOX_CREDENTIALS["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": self.home.region,
            "SLACK_API_URL": self.sink.api_url,
            "SLACK_BOT_TOKEN": SANDBOX_TOKEN,
        }

    def start(self) -> Sandbox:
        _quiet_known_moto_thread_errors()
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)  # logs every JSONPath miss
        os.environ["MOTO_PORT"] = str(self.aws_port)  # moto's Step Functions calls Batch back here
        moto_internals.apply()
        moto_internals.set_default_account(self.home.account_id)
        moto_internals.STATE.event_accounts = {e.account_id for e in self.settings.environments.values()
                                               if e.event_driven}
        moto_app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(self.host, self.aws_port, _ControlApp(self.aws_faults.wrap(moto_app), self),
                                   threaded=True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="sandbox-aws")
        self._thread.start()
        self.sink.start()
        self.reset()
        return self

    def stop(self) -> None:
        self.sink.stop()
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def reset(self) -> None:
        from moto.moto_api._internal.models import moto_api_backend

        moto_internals.stop_executions()  # nothing of the wiped world runs on into the new one
        moto_api_backend.reset()
        moto_internals.STATE.reset()
        self.aws_faults.reset()
        create_world(self.endpoint, self.settings)

    def account_of(self, name: str | None) -> tuple[str, str]:
        """(account id, region) of a sandbox environment."""
        env = self.settings.environments.get(name)
        if env is None:
            raise ValueError(f"environment {name!r} is not in the sandbox settings")
        return env.account_id, env.region

    def submit_jobs(self, body: dict) -> list[str]:
        account, region = self.account_of(body.get("environment"))
        backend = moto_internals.batch_backend(account, region)
        resources = [{"type": "VCPU", "value": str(body.get("vcpus", 1))},
                     {"type": "MEMORY", "value": str(body.get("memory", 4096))}]
        ids = []
        for i in range(int(body.get("count", 1))):
            _, job_id, _ = backend.submit_job(
                body.get("name", "sandbox-job").format(i=i), body.get("job_definition", JOB_DEFINITION),
                body["queue"], array_properties={},
                container_overrides={"resourceRequirements": resources,
                                     "environment": body.get("environment_vars", [])},
                parameters=body.get("parameters") or {}, tags=body.get("tags") or {},
            )
            ids.append(job_id)
        if body.get("created_minutes_ago"):
            moto_internals.backdate_jobs(account, region, ids, float(body["created_minutes_ago"]))
        if body.get("started_minutes_ago") is not None:
            moto_internals.set_job_times(account, region, ids, float(body["started_minutes_ago"]),
                                         None if body.get("ran_minutes") is None else float(body["ran_minutes"]))
        return ids

    def set_execution_times(self, body: dict) -> None:
        """`name` (of the environment's DemoFlow execution) or `execution_arn`; see moto_internals."""
        account, region = self.account_of(body.get("environment"))
        arn = body.get("execution_arn") or (f"arn:aws:states:{region}:{account}:execution:"
                                            f"{flows.DEPLOYMENTS[body['environment']].name}:{body['name']}")
        moto_internals.set_execution_times(account, region, arn, float(body["started_minutes_ago"]),
                                           None if body.get("ran_minutes") is None else float(body["ran_minutes"]))


def _quiet_known_moto_thread_errors() -> None:
    """moto's interpreter starts a WaitForTaskToken helper thread beside every .sync task; under
    Map concurrency it sometimes pops the wrong value off its stack and dies with a TypeError.
    The .sync path it shadows is unaffected (see test_step_functions), so only that noise goes."""
    previous = threading.excepthook

    def hook(args: Any) -> None:
        name = getattr(args.thread, "name", "") or ""
        if name.startswith("WaitForTaskToken") and args.exc_type is TypeError:
            return
        previous(args)

    threading.excepthook = hook


class _ControlApp:
    def __init__(self, moto_app: Any, sandbox: Sandbox):
        self.moto_app, self.sandbox = moto_app, sandbox

    def __call__(self, environ: dict, start_response: Any) -> Any:
        if not environ.get("PATH_INFO", "").startswith("/_sandbox/"):
            return self.moto_app(environ, start_response)
        request = Request(environ)
        try:
            body = json.loads(request.get_data() or b"{}")
            action = request.path.removeprefix("/_sandbox/")
            if action == "reset":
                self.sandbox.reset()
                result: Any = {"ok": True}
            elif action == "aws-faults":
                self.sandbox.aws_faults.arm(body)
                result = {"ok": True}
            elif action == "quota-counters":
                result = self.sandbox.aws_faults.quotas.counters()
            elif action == "faults":
                moto_internals.STATE.add_rule(moto_internals.FaultRule(**body))
                result = {"ok": True}
            elif action == "jobs":
                result = {"job_ids": self.sandbox.submit_jobs(body)}
            elif action == "job-status":
                account, region = self.sandbox.account_of(body.get("environment"))
                moto_internals.set_job_status(account, region, body["job_id"], body["status"],
                                              body.get("attempt_stopped_minutes_ago"))
                result = {"ok": True}
            elif action == "execution-times":
                self.sandbox.set_execution_times(body)
                result = {"ok": True}
            elif action == "time-up":
                result = {"ended": moto_internals.time_up(body.get("job_ids"))}
            elif action == "deploy-flow":
                env = self.sandbox.settings.environments[body["environment"]]
                template = flows.DEPLOYMENTS[env.name].template
                result = {"arn": flows.deploy(self.sandbox.endpoint, env, flows.FlowDeployment(body["name"], template),
                                              body.get("max_workers"))}
            elif action == "start-flow":
                env = self.sandbox.settings.environments[body["environment"]]
                result = {"name": flows.trigger(self.sandbox.endpoint, env, int(body.get("width", 3)),
                                                body.get("name"), body.get("state_machine"))}
            else:
                raise ValueError(f"unknown sandbox action {action!r}")
            response = Response(json.dumps(result), 200, mimetype="application/json")
        except (ValueError, KeyError, TypeError) as exc:
            response = Response(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), 400, mimetype="application/json")
        return response(environ, start_response)
