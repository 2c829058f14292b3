"""The package as users get it: built from a clean copy, installed non-editable into a fresh virtualenv.

The rest of the suite runs against the editable install, which reads services/ directly and so cannot
see a module, a data file or a dependency that the built distribution leaves out. These tests build the
sdist and, from it, the wheel (what `python -m build` and the Dockerfile's `pip install .` do), compare
the wheel with the tree, install it into a virtualenv that has no access to this checkout or to the
packages installed for the tests, import every module, and run both roles and `dbintel up` from it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.packaging.tree import ROOT, tree_files
from tests.processes import stop_process_group, wait_http_ok
from tests.servers import RedisServer, free_port

# Files of services/ that the wheel must carry, as dbintel/<path>.
SHIPPED_SUFFIXES = (".py", ".pyi", ".typed", ".lua", ".tsv", ".json")


@dataclass(frozen=True)
class Distribution:
    sdist: Path
    wheel: Path
    venv: Path

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def _clean_env(home: Path) -> dict[str, str]:
    """No PYTHONPATH or virtualenv of the suite's leaks into the installed package's processes."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_"))}
    env["HOME"] = os.environ.get("HOME", str(home))
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    work = tmp_path_factory.mktemp("packaging")
    source = work / "src"
    for relative in tree_files():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, source / relative)
    dist = work / "dist"
    # python -m build builds the sdist, then the wheel from the unpacked sdist: the sdist must be complete.
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_clean_env(work),
    )
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    (sdist,) = dist.glob("dbintel-*.tar.gz")
    (wheel,) = dist.glob("dbintel-*.whl")
    environment = work / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(environment)
    installed = subprocess.run(
        [str(environment / "bin" / "python"), "-m", "pip", "install", "--no-input", str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
        env=_clean_env(work),
        cwd=work,
    )
    assert installed.returncode == 0, installed.stdout[-4000:] + installed.stderr[-4000:]
    yield Distribution(sdist, wheel, environment)


def test_the_wheel_carries_every_module_and_data_file_of_the_tree(distribution: Distribution) -> None:
    expected = {
        "dbintel/" + path.relative_to("services").as_posix()
        for path in tree_files()
        if path.parts[0] == "services" and path.name.endswith(SHIPPED_SUFFIXES)
    }
    with zipfile.ZipFile(distribution.wheel) as wheel:
        shipped = {name for name in wheel.namelist() if name.startswith("dbintel/")}
        entry_points = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")))
    assert expected - shipped == set(), "left out of the wheel"
    assert shipped - expected == set(), "in the wheel but not in the tree"
    assert b"dbintel = dbintel.cli:main" in entry_points


def test_the_sdist_carries_what_a_rebuild_and_the_tests_need(distribution: Distribution) -> None:
    with tarfile.open(distribution.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for needed in ("pyproject.toml", "setup.py", "README.md", "services/coordinator/store/__init__.py"):
        assert needed in names
    assert any(name.startswith("services/v1/") and name.endswith(".pyi") for name in names)


def test_every_module_imports_from_the_installed_wheel(distribution: Distribution) -> None:
    walk = textwrap.dedent(
        """
        import importlib, json, pkgutil, sys
        import dbintel
        names, failures = [], {}
        for module in pkgutil.walk_packages(dbintel.__path__, "dbintel."):
            try:
                imported = importlib.import_module(module.name)
            except Exception as error:  # report every module that fails, not only the first
                failures[module.name] = f"{type(error).__name__}: {error}"
            else:
                names.append((module.name, getattr(imported, "__file__", "")))
        print(json.dumps({"root": dbintel.__file__, "modules": names, "failures": failures}))
        """
    )
    result = subprocess.run(
        [distribution.bin("python"), "-c", walk],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=distribution.venv,
        env=_clean_env(distribution.venv),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["failures"] == {}
    site = str(distribution.venv)
    assert report["root"].startswith(site), "dbintel was imported from outside the virtualenv"
    modules = dict(report["modules"])
    assert all(path.startswith(site) for path in modules.values())
    source_modules = {
        "dbintel."
        + ".".join(path.relative_to("services").with_suffix("").parts).removesuffix(".__init__").replace("/", ".")
        for path in tree_files()
        if path.parts[0] == "services" and path.suffix == ".py" and path.name != "__init__.py"
    }
    assert source_modules - set(modules) == set(), "modules of the tree that the installed package lacks"


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    try:
        wait_http_ok(url, process, timeout=timeout)
    except RuntimeError as error:
        raise AssertionError(f"{error}; its log ends:\n{log.read_text()[-3000:]}") from None


def _write_config(directory: Path, redis: RedisServer, grpc_port: int) -> Path:
    config = directory / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            scaling:
              mode: memory
              coordinator: {{heartbeat_interval: 1s, node_timeout: 5s}}
            agent:
              coordinator: 127.0.0.1:{grpc_port}
            databases:
              - name: cache
                type: redis
                endpoint: {redis.host}:{redis.port}
                password: ${{env:PACKAGING_REDIS_PASSWORD}}
                database: 0
                interval: 1s
            """
        )
    )
    return config


def test_the_installed_coordinator_assigns_the_installed_agent(
    distribution: Distribution, redis_server: RedisServer, tmp_path: Path
) -> None:
    grpc_port = free_port()
    config = _write_config(tmp_path, redis_server, grpc_port)
    env = _clean_env(tmp_path) | {"PACKAGING_REDIS_PASSWORD": redis_server.password}
    dbintel = distribution.bin("dbintel")
    coordinator_health, agent_health, agent_metrics = free_port(), free_port(), free_port()
    with (tmp_path / "coordinator.log").open("w") as coordinator_log, (tmp_path / "agent.log").open("w") as agent_log:
        coordinator = subprocess.Popen(
            [
                dbintel,
                "coordinator",
                "--config",
                str(config),
                "--grpc-listen",
                f"127.0.0.1:{grpc_port}",
                "--metrics-listen",
                f"127.0.0.1:{free_port()}",
                "--health-listen",
                f"127.0.0.1:{coordinator_health}",
            ],
            env=env,
            cwd=tmp_path,
            stdout=coordinator_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        agent = subprocess.Popen(
            [
                dbintel,
                "agent",
                "--config",
                str(config),
                "--agent-id",
                "packaged-agent",
                "--metrics-listen",
                f"127.0.0.1:{agent_metrics}",
                "--health-listen",
                f"127.0.0.1:{agent_health}",
            ],
            env=env,
            cwd=tmp_path,
            stdout=agent_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_ready(f"http://127.0.0.1:{coordinator_health}/ready", coordinator, tmp_path / "coordinator.log", 60)
            # An agent is ready once it holds an assignment.
            _wait_ready(f"http://127.0.0.1:{agent_health}/ready", agent, tmp_path / "agent.log", 60)
            status = subprocess.run(
                [dbintel, "status", "--coordinator", f"127.0.0.1:{grpc_port}", "--json"],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                cwd=tmp_path,
            )
            assert status.returncode == 0, status.stderr
            owners = {entry["resource_id"]: entry["agent_id"] for entry in json.loads(status.stdout)["assignments"]}
            assert owners == {"db:redis/cache": "packaged-agent"}
        finally:
            stop_process_group(agent)
            stop_process_group(coordinator)
    assert agent.returncode == 0, (tmp_path / "agent.log").read_text()[-3000:]
    assert coordinator.returncode == 0, (tmp_path / "coordinator.log").read_text()[-3000:]


def test_the_installed_up_runs_the_demo(distribution: Distribution, tmp_path: Path) -> None:
    grpc_port, metrics_port, health_port = free_port(), free_port(), free_port()
    env = _clean_env(tmp_path)
    with (tmp_path / "up.log").open("w") as up_log:
        up = subprocess.Popen(
            [
                distribution.bin("dbintel"),
                "up",
                "--agents",
                "1",
                "--base-port",
                str(grpc_port),
                "--metrics-port",
                str(metrics_port),
                "--health-port",
                str(health_port),
            ],
            env=env,
            cwd=tmp_path,
            stdout=up_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_ready(f"http://127.0.0.1:{health_port + 1}/ready", up, tmp_path / "up.log", 120)
        finally:
            stop_process_group(up, timeout=30)
    assert up.returncode == 0, (tmp_path / "up.log").read_text()[-3000:]
