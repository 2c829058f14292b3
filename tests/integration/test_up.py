"""`dbintel up` with no config: throwaway PostgreSQL and Redis, a coordinator and two agents; the
banner comes once every database has had its first poll, and everything stops on Ctrl-C."""

from __future__ import annotations

import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
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


class Output:
    """The process's output, read line by line on a thread, so the test waits on lines, not on sleeps."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)  # end of output: the process exited

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {timeout:.0f}s:\n{self.text}") from None
            if line is None:
                raise AssertionError(f"exited before printing {text!r}:\n{self.text}")
            if text in line:
                return line

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def close(self) -> None:
        self._reader.join(10)


DATABASES = {"db:postgresql/postgres", "db:redis/cache", "db:redis/sessions"}


def up_series(text: str) -> set[str]:
    return set(re.findall(r'^dbintel_database_up\{[^}]*dbintel_resource="([^"]+)"', text, re.M))


def test_up_without_config_shows_real_metrics_once_every_database_is_polled_and_stops_cleanly():
    grpc_port, metrics_port, health_port = free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dbintel.cli",
            "up",
            "--base-port",
            str(grpc_port),
            "--metrics-port",
            str(metrics_port),
            "--health-port",
            str(health_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(process)
    try:
        output.wait_for("waiting for the first poll of 3 database(s)", timeout=60)
        output.wait_for("dbintel is up", timeout=60)
        # Scraped the moment the banner is printed: every database has had its first poll by then.
        agents = {f"up-agent-{n}": scrape(metrics_port + n) for n in (1, 2)}
        assert set().union(*(up_series(text) for text in agents.values())) == DATABASES, agents
        series = set(
            re.findall(
                r'^(?:postgresql|redis)_[a-z_]+\{[^}]*dbintel_resource="([^"]+)"', "".join(agents.values()), re.M
            )
        )
        assert series == DATABASES, output.text
        output.wait_for("Ctrl-C stops everything", timeout=5)
        text = output.text
        assert "3 of 3 database(s) polled" in text
        assert f"dbintel status --coordinator 127.0.0.1:{grpc_port}" in text
        assert f"grpcurl -plaintext 127.0.0.1:{grpc_port} list" in text
        for n in (1, 2):
            assert f"up-agent-{n}" in text and f"http://127.0.0.1:{metrics_port + n}/metrics" in text
        status = subprocess.run(
            [sys.executable, "-m", "dbintel.cli", "status", "--coordinator", f"127.0.0.1:{grpc_port}", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        answer = json.loads(status.stdout)
        assert answer["cluster"]["resources_assigned"] == 3
        # Each agent's /metrics carried its own databases already (assignments are quiet by now).
        for assignment in answer["assignments"]:
            assert assignment["resource_id"] in up_series(agents[assignment["agent_id"]]), (assignment, agents)
        match = re.search(r"PostgreSQL on 127\.0\.0\.1:(\d+), Redis on 127\.0\.0\.1:(\d+)", text)
        assert match, text
        server_ports = [int(match[1]), int(match[2])]
        assert all(listening(port) for port in server_ports)
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        output.close()
        assert "stopping" in output.text
        assert not listening(grpc_port) and not listening(metrics_port + 1)
        for port in server_ports:
            assert not listening(port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
