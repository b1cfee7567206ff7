"""The import rules, read from the source (ast; function-local imports count): a capability's core
is pure (no boto3, no dagster) and imports no other capability; no two modules import each other."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "platform_ops"
CAPABILITIES = ("alerts", "reaper", "metrics", "promotion", "events", "runtime", "schedules", "health")
FORBIDDEN_IN_CORE = ("boto3", "botocore", "dagster")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return _imports_in(path.read_text(), package, str(path))


def _imports_in(source: str, package: str, filename: str = "<source>") -> set[str]:
    """Every module `source` (a module of `package`) imports anywhere in it (function-local
    imports too), absolute; `from a import b` counts as a and as a.b (b may be a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {i for i in _imports(path) if i in MODULES and i != name} for name, path in MODULES.items()}


@pytest.mark.parametrize("core", sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.glob("*/core.py")))
def test_a_core_imports_neither_io_nor_another_capability(core):
    path = PACKAGE / core
    own = path.parent.name
    imported = _imports(path)
    io = sorted(i for i in imported if i.split(".")[0] in FORBIDDEN_IN_CORE)
    others = sorted(i for i in imported
                    if i.startswith("platform_ops.") and i.split(".")[1] in CAPABILITIES and i.split(".")[1] != own)
    assert not io, f"{core} imports {io}"
    assert not others, f"{core} imports another capability: {others}"


def test_the_cores_are_found():
    assert {p.parent.name for p in PACKAGE.glob("*/core.py")} >= {"alerts", "reaper", "metrics", "promotion"}
    assert "platform_ops.vocabulary" in MODULES and GRAPH["platform_ops.alerts.core"]  # the graph is read


def _circles() -> set[frozenset[str]]:
    """Each set of modules that reach each other through imports (Tarjan's strongly connected
    components with more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    circles = _circles()
    assert circles == set(), [sorted(c) for c in circles]


def test_the_import_reader_sees_function_local_and_relative_imports():
    source = "def f():\n    from platform_ops.sandbox import flows\n\n\ndef g():\n    from ..settings import Settings\n"
    found = _imports_in(source, "platform_ops.sandbox")
    assert {"platform_ops.sandbox", "platform_ops.sandbox.flows", "platform_ops.settings"} <= found


def test_the_circle_check_finds_a_circle(monkeypatch):
    monkeypatch.setitem(GRAPH, "platform_ops.sandbox.accounts",
                        GRAPH["platform_ops.sandbox.accounts"] | {"platform_ops.sandbox.world"})
    assert frozenset({"platform_ops.sandbox.accounts", "platform_ops.sandbox.flows",
                      "platform_ops.sandbox.world"}) in _circles()


def test_an_installed_platform_ops_has_every_file_it_reads():
    """A wheel holds the packages setuptools finds and the package data it is told about: every
    file under platform_ops/ is one or the other (the sandbox reads its settings, scenarios and
    Metaflow definitions from the package; deploy/ and workspace.yaml only from a checkout)."""
    from setuptools.config.pyprojecttoml import read_configuration

    config = read_configuration(PACKAGE.parent / "pyproject.toml")["tool"]["setuptools"]
    packages = {PACKAGE.parent.joinpath(*name.split(".")): name for name in config["packages"]}
    shipped = {path for directory, name in packages.items() for pattern in config.get("package-data", {}).get(name, [])
               for path in directory.glob(pattern)}
    left_out = sorted(str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts
                      and not (p.suffix == ".py" and p.parent in packages) and p not in shipped)
    assert left_out == []


def test_the_sandbox_says_it_runs_from_a_checkout(monkeypatch, tmp_path, capsys):
    from platform_ops.sandbox import __main__ as cli
    from platform_ops.sandbox import world

    monkeypatch.setattr(world, "STACK_TEMPLATE", tmp_path / "platform-ops-account.yaml")
    assert cli.main(["serve"]) == 2
    assert "the sandbox runs from a checkout of platform-ops" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match=r"runs from a checkout .*deploy/cloudformation/platform-ops-account.yaml"):
        world.stack_template()
    monkeypatch.setattr(cli, "ROOT", tmp_path)
    assert cli.missing_from_checkout("demo") == [world.STACK_TEMPLATE, tmp_path / "workspace.yaml"]
    monkeypatch.undo()
    assert cli.missing_from_checkout("demo") == []  # this checkout has them


def test_the_readme_layout_names_every_module():
    """README's Layout block is the map a newcomer reads first: every product module is on it (the
    sandbox's own modules under `sandbox/`), and it names no module that is gone."""
    readme = (PACKAGE.parent / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    named = set(re.findall(r"[\w/]+\.py", layout))
    modules = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
               if p.name != "__init__.py" and p.parent.name != "sandbox" and "__pycache__" not in p.parts}
    modules |= {f"sandbox/{p.name}" for p in (PACKAGE / "sandbox").glob("*.py") if p.name != "__init__.py"}
    assert sorted(modules - named) == [], "modules missing from README's Layout"
    gone = sorted(n for n in named if "/" in n and n not in modules)  # bare names: a kind (core.py) or a test file
    assert gone == [], "README's Layout names modules that do not exist"
