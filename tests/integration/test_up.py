"""`dbintel up` with no config: throwaway PostgreSQL and Redis, a coordinator and two agents, real
metrics within a minute, everything stopped on Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from tests.servers import free_port


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as response:
            return response.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return ""


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_without_config_shows_real_metrics_and_stops_cleanly(tmp_path):
    grpc_port, metrics_port, health_port = free_port(), free_port(), free_port()
    log = (tmp_path / "up.log").open("w+")
    process = subprocess.Popen([sys.executable, "-m", "dbintel.cli", "up", "--base-port", str(grpc_port),
                                "--metrics-port", str(metrics_port), "--health-port", str(health_port)],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        resources: set[str] = set()
        while time.monotonic() < deadline and process.poll() is None:
            text = scrape(metrics_port + 1) + scrape(metrics_port + 2)
            resources = set(re.findall(r'^(?:postgresql|redis)_[a-z_]+\{[^}]*dbintel_resource="([^"]+)"', text, re.M))
            if {"db:postgresql/postgres", "db:redis/cache", "db:redis/sessions"} <= resources:
                break
            time.sleep(0.5)
        log.seek(0)
        output = log.read()
        assert {"db:postgresql/postgres", "db:redis/cache", "db:redis/sessions"} <= resources, output
        assert f"dbintel status --coordinator 127.0.0.1:{grpc_port}" in output
        assert f"grpcurl -plaintext 127.0.0.1:{grpc_port} list" in output
        status = subprocess.run([sys.executable, "-m", "dbintel.cli", "status", "--coordinator",
                                 f"127.0.0.1:{grpc_port}", "--json"], capture_output=True, text=True, timeout=30)
        assert json.loads(status.stdout)["cluster"]["resources_assigned"] == 3
        match = re.search(r"PostgreSQL on 127\.0\.0\.1:(\d+), Redis on 127\.0\.0\.1:(\d+)", output)
        assert match, output
        server_ports = [int(match[1]), int(match[2])]
        assert all(listening(port) for port in server_ports)
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        log.seek(0)
        assert "stopping" in log.read()
        assert not listening(grpc_port) and not listening(metrics_port + 1)
        for port in server_ports:
            assert not listening(port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
