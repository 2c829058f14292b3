"""What every Python maintainer expects of the repository, enforced by the test command: lint, format,
types, no large or unmarked generated files, and a pre-commit config that runs the same checks."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.packaging.tree import ROOT, tree_files

MAX_FILE_BYTES = 1024 * 1024
GENERATED = ("services/v1/",)  # written by scripts/generate_protos.py


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_lint_finds_nothing() -> None:
    result = run(sys.executable, "-m", "ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr


def test_ruff_format_changes_nothing() -> None:
    result = run(sys.executable, "-m", "ruff", "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr


def test_mypy_finds_no_error_in_services() -> None:
    result = run(sys.executable, "scripts/typecheck.py")
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr
    assert "Success: no issues found" in result.stdout


def test_no_file_in_the_tree_is_over_one_megabyte() -> None:
    large = {str(path): (ROOT / path).stat().st_size for path in tree_files()}
    assert {path: size for path, size in large.items() if size > MAX_FILE_BYTES} == {}


def test_generated_files_are_marked_generated() -> None:
    generated = [str(path) for path in tree_files() if str(path).startswith(GENERATED) and "_pb2" in path.name]
    assert generated, "no generated stubs found"
    attributes = run("git", "check-attr", "linguist-generated", "--", *generated).stdout.splitlines()
    unmarked = [line for line in attributes if not line.endswith(": linguist-generated: true")]
    assert unmarked == []


def test_build_outputs_and_caches_are_ignored() -> None:
    paths = ["ruff-0.1-py3-none-any.whl", "dist/dbintel-0.1.0.tar.gz", ".mypy_cache/x", ".ruff_cache/x", "build/x"]
    result = run("git", "check-ignore", "--no-index", "--", *paths)
    assert sorted(result.stdout.split()) == sorted(paths)


def test_pre_commit_runs_the_checks_the_suite_runs() -> None:
    validated = run(sys.executable, "-m", "pre_commit", "validate-config", ".pre-commit-config.yaml")
    assert validated.returncode == 0, validated.stdout + validated.stderr
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    entries = {hook["id"]: hook["entry"] for repo in config["repos"] for hook in repo["hooks"]}
    assert entries["ruff-check"].startswith("ruff check")
    assert entries["ruff-format"].startswith("ruff format")
    assert entries["mypy"] == "python scripts/typecheck.py"
