"""Lint of a code package: Metaflow's own `check` over the extracted tarball, safely."""

import io
import tarfile

from platform_ops.promotion.lint import lint_package, package_sha
from platform_ops.sandbox import flows

SOURCE = (flows.HERE / flows.FLOW_FILE).read_text()


def tarball(files: dict[str, str]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return raw.getvalue()


def test_the_sandbox_package_is_content_addressed_and_lints_clean():
    blob, sha = flows.code_package()
    assert package_sha(blob) == sha and flows.code_package()[1] == sha  # byte-stable
    result = lint_package(blob, "demoflow.py", 120)
    assert result.passed, result.detail
    assert "graph looks good" in result.detail and "Pylint is happy" in result.detail


def test_pylint_errors_fail_the_lint():
    broken = SOURCE.replace("self.x = self.input * self.alpha", "self.x = self.input * undefined_name")
    result = lint_package(tarball({"demoflow.py": broken}), "demoflow.py", 120)
    assert not result.passed and "undefined_name" in result.detail


def test_unsafe_or_incomplete_packages_are_refused_without_running_anything():
    escape = lint_package(tarball({"../../evil.py": "raise SystemExit(0)"}), "evil.py", 60)
    assert not escape.passed and "not a readable tarball" in escape.detail
    missing = lint_package(tarball({"other.py": "x = 1"}), "demoflow.py", 60)
    assert not missing.passed and missing.detail == "the code package has no demoflow.py"
    nameless = lint_package(tarball({"demoflow.py": SOURCE}), "", 60)
    assert not nameless.passed and "names no flow file" in nameless.detail
    garbage = lint_package(b"not a tarball", "demoflow.py", 60)
    assert not garbage.passed and "not a readable tarball" in garbage.detail
