"""Throwaway PostgreSQL and Redis servers for `dbintel up` with no config: from the system packages,
data in a temp dir, loopback only, stopped (and deleted) on exit."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class LocalServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, process: subprocess.Popen, log: Path, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LocalServerError(f"{what} exited: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise LocalServerError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


class LocalRedis:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise LocalServerError("redis-server not found: install it (apt-get install redis-server)")
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="dbintel-up-redis-"))
        log = self._dir / "redis.log"
        self._process = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self._dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        _wait_port(self.port, self._process, log, "redis-server")

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
        shutil.rmtree(self._dir, ignore_errors=True)


class LocalPostgres:
    """initdb + postgres as the `postgres` system user when run as root (PostgreSQL refuses root)."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
        initdb = bins[0] if bins else shutil.which("initdb")
        if not initdb:
            raise LocalServerError("PostgreSQL not found: install it (apt-get install postgresql)")
        bin_dir = Path(initdb).parent
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="dbintel-up-pg-"))
        data, log = self._dir / "data", self._dir / "postgres.log"
        user = None
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise LocalServerError("running as root needs the 'postgres' system user") from None
            os.chown(self._dir, account.pw_uid, account.pw_gid)
            user = "postgres"

        def run(cmd, **kw):
            return subprocess.run(cmd, user=user, check=True, capture_output=True, **kw)

        try:
            run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        except subprocess.CalledProcessError as exc:
            raise LocalServerError(f"initdb failed: {exc.stderr.decode()[-1000:]}") from None
        with log.open("w") as out:
            if user:
                os.chown(log, account.pw_uid, account.pw_gid)
            self._process = subprocess.Popen(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self._dir),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "shared_preload_libraries=pg_stat_statements",
                ],
                user=user,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _wait_port(self.port, self._process, log, "postgres")
        # Top queries need the extension in the database the demo watches; a server that just opened its
        # port may still refuse connections while it starts up, so try for a few seconds.
        psql = [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres"]
        deadline = time.monotonic() + 15
        while True:
            try:
                run([*psql, "-c", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"])
                break
            except subprocess.CalledProcessError as exc:
                if time.monotonic() > deadline:
                    raise LocalServerError(
                        f"creating pg_stat_statements failed: {exc.stderr.decode()[-500:]}"
                    ) from None
                time.sleep(0.2)

    def stop(self) -> None:
        self._process.terminate()  # smart shutdown
        try:
            self._process.wait(15)
        except subprocess.TimeoutExpired:
            self._process.kill()
        shutil.rmtree(self._dir, ignore_errors=True)
