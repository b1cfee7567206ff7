"""Validate the inputs with platform-ops' naming conventions before anything is generated."""

import importlib.util
import pathlib
import sys


def naming():
    try:
        import platform_ops.naming as module  # platform-ops installed
        return module
    except ImportError:  # rendered from a platform-ops checkout: load the file itself
        template = pathlib.Path("{{ cookiecutter._template }}").resolve()
        for parent in [template, *template.parents]:
            candidate = parent / "platform_ops" / "naming.py"
            if candidate.exists():
                spec = importlib.util.spec_from_file_location("platform_ops_naming", candidate)
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
                return module
    raise SystemExit("cannot find platform_ops.naming: install platform-ops or render from its repository")


rules = naming()
try:
    rules.check_project("{{ cookiecutter.project }}")
    rules.check_flow("{{ cookiecutter.flow_name }}")
    rules.project_tags("{{ cookiecutter.owner }}", "{{ cookiecutter.project }}", "{{ cookiecutter.team }}")
    rules.check_slack_id("{{ cookiecutter.owner_slack_id }}")
except rules.NamingError as exc:
    print(f"ERROR: {exc}", file=sys.stderr)
    sys.exit(1)
