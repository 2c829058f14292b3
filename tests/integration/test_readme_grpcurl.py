"""The README's grpcurl walk-through, run verbatim against `dbintel up` on its default ports.

A newcomer copies these lines one by one; each must work as written, against the agent ids and
ports that `dbintel up` really creates.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import stop_process_group, wait_http_ok

ROOT = Path(__file__).resolve().parents[2]
UP_HEALTH_PORT = 13133  # dbintel up's defaults, which the README's lines assume
UP_AGENTS = ("up-agent-1", "up-agent-2")


def walkthrough_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Operating it with grpcurl") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the grpcurl section has no bash block"
    return [line for line in block[1].splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_walkthrough_names_what_dbintel_up_creates() -> None:
    commands = walkthrough_commands()
    assert len(commands) >= 9
    for command in commands:
        assert shlex.split(command)[0] in ("grpcurl", "dbintel"), command
    named = set(re.findall(r'"agent_id": "([^"]+)"', "\n".join(commands)))
    assert named and named <= set(UP_AGENTS)


def _json(output: str) -> dict:
    return json.loads(output) if output.strip() else {}


# What each RPC's reply must show, beyond a zero exit status.
def _check(command: str, output: str) -> None:
    if command.endswith(" list"):
        for service in ("dbintel.v1.AgentService", "dbintel.v1.OperatorService", "grpc.health.v1.Health"):
            assert service in output
    elif " describe " in command:
        assert "rpc GetClusterStatus" in output and "rpc DrainAgent" in output
    elif command.endswith("/GetClusterStatus"):
        reply = _json(output)
        assert reply["leader_id"] and int(reply["resources_assigned"]) == 3
    elif command.endswith("/ListAgents"):
        assert {agent["agent_id"] for agent in _json(output)["agents"]} == set(UP_AGENTS)
    elif command.endswith("/ListAssignments"):
        entries = _json(output)["assignments"]
        assert entries and {entry["agent_id"] for entry in entries} == {"up-agent-1"}
    elif command.endswith("/ListResources"):
        assert [r["resource_id"] for r in _json(output)["resources"]] == ["db:postgresql/postgres"]
    elif command.endswith("/DrainAgent"):
        moves = _json(output).get("moves", [])
        assert moves and all(move["from_agent_id"] == "up-agent-1" for move in moves)
    elif command.endswith("/Check"):
        assert _json(output)["status"] == "SERVING"
    elif command.startswith("dbintel status"):
        assert all(agent in output for agent in UP_AGENTS)


@pytest.mark.integration
def test_every_walkthrough_line_runs_verbatim_against_dbintel_up(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # dbintel, grpcurl
    with (tmp_path / "up.log").open("w") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "dbintel.cli", "up"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
        try:
            try:
                for agent_number in range(1, len(UP_AGENTS) + 1):
                    wait_http_ok(f"http://127.0.0.1:{UP_HEALTH_PORT + agent_number}/ready", up, timeout=120)
            except RuntimeError as error:
                raise AssertionError(f"{error}; dbintel up said:\n{(tmp_path / 'up.log').read_text()}") from None
            failures = []
            for command in walkthrough_commands():
                result = subprocess.run(
                    ["bash", "-c", command], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
                )
                try:
                    assert result.returncode == 0, f"exit {result.returncode}"
                    _check(command, result.stdout)
                except (AssertionError, KeyError, ValueError) as problem:
                    failures.append(f"{command}\n  {problem!r}\n  stdout: {result.stdout[:800]}\n  {result.stderr}")
            assert failures == [], "\n".join(failures)
        finally:
            stop_process_group(up, timeout=30)
