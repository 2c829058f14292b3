"""The protocol is the contract: stubs are generated from protos/ and lint-clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_fresh():
    result = subprocess.run(
        [sys.executable, "scripts/generate_protos.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _buf() -> str:
    local = ROOT / ".ci" / "work" / "npm" / "node_modules" / ".bin" / "buf"
    found = str(local) if local.exists() else shutil.which("buf")
    assert found, "buf is not installed: run scripts/install-deps.sh"
    return found


def test_buf_lint_passes_with_standard_and_comments_rules():
    result = subprocess.run([_buf(), "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    config = (ROOT / "buf.yaml").read_text()
    assert "STANDARD" in config and "COMMENTS" in config


def test_services_live_in_package_dbintel_v1():
    from dbintel.v1 import agent_service_pb2, operator_service_pb2

    assert agent_service_pb2.DESCRIPTOR.package == "dbintel.v1"
    assert set(agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].methods_by_name) == {
        "Heartbeat",
        "GetAssignments",
        "Leave",
    }
    assert set(operator_service_pb2.DESCRIPTOR.services_by_name["OperatorService"].methods_by_name) == {
        "GetClusterStatus",
        "ListAgents",
        "ListAssignments",
        "ListResources",
        "Rebalance",
        "DrainAgent",
    }
    heartbeat = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].methods_by_name["Heartbeat"]
    assert heartbeat.client_streaming and heartbeat.server_streaming
