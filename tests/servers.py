"""Real database servers for the tests, each a process on 127.0.0.1 with its data in a temp dir.

Every server has `start()`, `stop()` (the process ends; data and port are kept, so `start()`
brings the same server back), `restart()`, `kill()` (SIGKILL, a crash), `pause()`/`resume()`
(SIGSTOP/SIGCONT: a server that hangs without closing connections) and `close()` (stop and
delete the temp dir; final). They are context managers; an atexit hook closes any left open,
and a reaper process cleans up after a test process that was killed outright.

A missing binary raises ServerNotInstalled; tests never skip because of one.
"""

from __future__ import annotations

import atexit
import getpass
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import psutil

LOOPBACK = "127.0.0.1"
INSTALL_HINT = "run scripts/install-deps.sh"


class ServerError(RuntimeError):
    """A test server failed to start, stop or answer."""


class ServerNotInstalled(ServerError):
    """The server's binary is not on this machine."""


_LOWEST_TEST_PORT = 20000
_ports_handed_out: set[int] = set()


def _ephemeral_port_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback TCP port nothing is bound to, below the kernel's ephemeral range.

    Ports the kernel hands out by bind-to-0 also serve as source ports of outgoing connections,
    and the suite opens thousands: one of them could take a server's port while it restarts.
    Source ports never come from below the ephemeral range, so servers live there. A port is
    never handed out twice by this process."""
    ephemeral_low, _ = _ephemeral_port_range()
    candidates = range(_LOWEST_TEST_PORT, ephemeral_low)
    rng = random.SystemRandom()
    for _ in range(200 if len(candidates) > 100 else 0):
        port = rng.choice(candidates)
        if port in _ports_handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        _ports_handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # odd port range: let the kernel pick
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]
    _ports_handed_out.add(port)
    return port


def find_binary(name: str, search_dirs: tuple[Path, ...] = ()) -> str:
    for directory in search_dirs:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ServerNotInstalled(f"{name} not found: {INSTALL_HINT}")
    return found


def postgres_bin_dir() -> Path:
    """Debian keeps initdb/postgres/psql together in /usr/lib/postgresql/<major>/bin (newest wins)."""
    versioned = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1,
        reverse=True,
    )
    for directory in versioned:
        if (directory / "initdb").exists() and (directory / "postgres").exists():
            return directory
    initdb = shutil.which("initdb")
    if initdb is None:
        raise ServerNotInstalled(f"initdb (PostgreSQL) not found: {INSTALL_HINT}")
    return Path(os.path.realpath(initdb)).parent


def _wait_until_dead(processes: list[psutil.Process], timeout: float = 10.0) -> None:
    """Wait for killed processes; orphans are reaped by someone else, so a zombie counts as dead."""
    deadline = time.monotonic() + timeout
    for process in processes:
        while time.monotonic() < deadline:
            try:
                if process.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.01)


_REAPER_SOURCE = r"""
import shutil, sys
import psutil

processes, directories = {}, set()
for line in sys.stdin:  # until the test process's end of the pipe closes, however it died
    verb, _, argument = line.rstrip("\n").partition(" ")
    if verb == "pid":
        pid, created = argument.split()
        processes[int(pid)] = float(created)
    elif verb == "unpid":
        processes.pop(int(argument), None)
    elif verb == "dir":
        directories.add(argument)
    elif verb == "undir":
        directories.discard(argument)
for pid, created in processes.items():
    try:
        server = psutil.Process(pid)
        if server.create_time() != created:
            continue  # the pid was reused: not ours
        tree = [server, *server.children(recursive=True)]
    except psutil.Error:
        continue
    for process in tree:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(tree, timeout=5)
for directory in directories:
    shutil.rmtree(directory, ignore_errors=True)
"""


class _Reaper:
    """A helper process, in its own session, that kills our servers and deletes their temp dirs
    when the test process dies without cleaning up (SIGKILL, `timeout`'s SIGTERM), which atexit
    cannot cover: servers run in their own sessions and would otherwise live on as orphans."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None

    def watch_process(self, pid: int) -> None:
        try:
            created = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            return
        self._send(f"pid {pid} {created!r}")

    def forget_process(self, pid: int) -> None:
        self._send(f"unpid {pid}")

    def watch_dir(self, path: Path) -> None:
        self._send(f"dir {path}")

    def forget_dir(self, path: Path) -> None:
        self._send(f"undir {path}")

    def shutdown(self) -> None:
        """Nothing left to reap: let the helper exit."""
        if self._process is not None and self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._process = None

    def _send(self, line: str) -> None:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _REAPER_SOURCE],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
                start_new_session=True,  # outlives a signal sent to the test process's group
            )
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(line + "\n")
            self._process.stdin.flush()
        except BrokenPipeError:
            self._process = None


_reaper = _Reaper()
_open_servers: set[ManagedServer] = set()


@atexit.register
def _close_open_servers() -> None:
    for server in list(_open_servers):
        try:
            server.close()
        except Exception:
            pass
    _reaper.shutdown()


class ManagedServer:
    """One server process in its own temp dir. Subclasses say how to prepare, launch and probe it."""

    kind = "server"
    startup_timeout = 60.0  # generous: two cores shared with the test suite
    stop_timeout = 30.0
    stop_signal = signal.SIGTERM
    service_user: str | None = None  # the OS account the server runs as when we are root

    def __init__(self) -> None:
        self.host = LOOPBACK
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix=f"dbintel-{self.kind}-"))
        self.log_path = self.root / f"{self.kind}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._prepared = False
        self._provisioned = False
        self._paused = False
        self._closed = False
        if self._run_as() is not None:
            try:
                pwd.getpwnam(self.service_user)
            except KeyError:
                shutil.rmtree(self.root, ignore_errors=True)
                raise ServerNotInstalled(f"OS user {self.service_user} missing: {INSTALL_HINT}") from None
            shutil.chown(self.root, user=self.service_user, group=self.service_user)
        _open_servers.add(self)
        _reaper.watch_dir(self.root)

    # --- public lifecycle -------------------------------------------------------------------
    @property
    def address(self) -> str:
        """host:port, the form the dbintel config's `endpoint` takes."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.is_running() else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> ManagedServer:
        if self._closed:
            raise ServerError(f"{self.kind} server was closed; create a new one")
        if self.is_running():
            return self
        if not self._prepared:
            self._prepare()
            self._prepared = True
        self._process = self._spawn(self._command(), log=self.log_path)
        _reaper.watch_process(self._process.pid)
        self._paused = False
        self._wait_until_ready()
        if not self._provisioned:
            self._provision()
            self._provisioned = True
        return self

    def stop(self) -> None:
        """Graceful shutdown; keeps data and port so start() brings the same server back."""
        if not self.is_running():
            self._forget_process()
            return
        assert self._process is not None
        self.resume()
        self._process.send_signal(self.stop_signal)
        try:
            self._process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            tree = self._signal_tree(signal.SIGKILL)
            self._process.wait(timeout=10)
            _wait_until_dead(tree)
        self._forget_process()

    def kill(self) -> None:
        """SIGKILL to the server and all its children: a crash. start() recovers from the data dir."""
        if self._process is not None and self._process.poll() is None:
            tree = self._signal_tree(signal.SIGKILL)
            self._process.wait(timeout=10)
            _wait_until_dead(tree)
        self._forget_process()
        self._paused = False

    def restart(self) -> ManagedServer:
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP to the server and its children: connections stay open, nothing answers (a hung host)."""
        if self.is_running() and not self._paused:
            self._signal_tree(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self._paused and self.is_running():
            self._signal_tree(signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Stop the server and delete its temp dir. The object cannot be started again."""
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            _open_servers.discard(self)
            shutil.rmtree(self.root, ignore_errors=True)
            _reaper.forget_dir(self.root)

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return self._redact("\n".join(text.splitlines()[-lines:]))

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<{type(self).__name__} {self.address} {state} root={self.root}>"

    # --- for subclasses ---------------------------------------------------------------------
    def _prepare(self) -> None:
        """One-time setup before the first launch (e.g. initdb)."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        """True once the server answers; may raise while it is still coming up."""
        raise NotImplementedError

    def _provision(self) -> None:
        """One-time setup after the first launch (users, schemas, seed data)."""

    def _secrets(self) -> tuple[str, ...]:
        return ()

    # --- helpers ----------------------------------------------------------------------------
    def _run_as(self) -> str | None:
        """The account to drop to: only as root (servers refuse root); otherwise run as ourselves."""
        return self.service_user if self.service_user and os.geteuid() == 0 else None

    def _forget_process(self) -> None:
        if self._process is not None:
            _reaper.forget_process(self._process.pid)
        self._process = None

    def _signal_tree(self, signum: int) -> list[psutil.Process]:
        """Signal the server and every process under it. A process group will not do: each
        PostgreSQL backend makes itself a session leader. The parent goes first, so that a
        postmaster cannot react to its children dying or stopping."""
        assert self._process is not None
        try:
            parent = psutil.Process(self._process.pid)
            tree = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for process in tree:
            try:
                process.send_signal(signum)
            except psutil.NoSuchProcess:
                pass
        return tree

    def _spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        user = self._run_as()
        with open(log, "ab") as log_file:
            if user is not None:
                shutil.chown(log, user=user, group=user)
            return subprocess.Popen(
                command,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C at the terminal reaches pytest, which then stops us cleanly.
                start_new_session=True,
                user=user,
                group=user,
                extra_groups=[] if user is not None else None,
            )

    def _run(
        self,
        command: list[str],
        *,
        input_text: str | None = None,
        as_service_user: bool = False,
        timeout: float = 60.0,
        what: str = "command",
    ) -> str:
        """Run a short client command to completion; raise with its (redacted) output on failure."""
        user = self._run_as() if as_service_user else None
        try:
            done = subprocess.run(
                command,
                cwd=self.root,
                input=input_text,
                capture_output=True,
                text=True,
                timeout=timeout,
                user=user,
                group=user,
                extra_groups=[] if user is not None else None,
            )
        except subprocess.TimeoutExpired:
            raise ServerError(f"{self.kind}: {what} timed out after {timeout}s") from None
        if done.returncode != 0:
            output = self._redact((done.stderr or "") + (done.stdout or ""))
            raise ServerError(f"{self.kind}: {what} failed (exit {done.returncode}):\n{output.strip()}")
        return done.stdout

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.is_running():
                self._forget_process()
                raise ServerError(
                    f"{self.kind} on port {self.port} exited during startup; log tail:\n{self.log_tail()}"
                )
            try:
                if self._probe():
                    return
            except Exception as exc:
                last_error = exc
            time.sleep(0.1)
        self.kill()
        reason = self._redact(repr(last_error)) if last_error else "no answer"
        raise ServerError(
            f"{self.kind} on port {self.port} not ready within {self.startup_timeout}s ({reason}); "
            f"log tail:\n{self.log_tail()}"
        )

    def _redact(self, text: str) -> str:
        for secret in self._secrets():
            if secret:
                text = text.replace(secret, "***")
        return text


def _new_password() -> str:
    return secrets.token_hex(16)  # hex: safe in URLs, SQL literals and shell words


class RedisServer(ManagedServer):
    """redis-server with a password and no persistence: a restart or kill loses the data.

    With `tls_cert_file`/`tls_key_file` it speaks TLS only (`--port 0 --tls-port`); `tls_ca_file`
    is the CA it trusts (for client certificates, which `tls_auth_clients` "no" | "optional" | "yes"
    asks for; and the one the probe and `client()` verify the server with). `tls_client_cert`
    (cert, key) is what the probe and `client()` present."""

    kind = "redis"
    startup_timeout = 30.0
    username = "default"  # the ACL user that --requirepass sets the password of

    def __init__(
        self,
        password: str | None = None,
        *,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls_ca_file: str | None = None,
        tls_auth_clients: str = "no",
        tls_client_cert: tuple[str, str] | None = None,
    ) -> None:
        self.password = password if password is not None else _new_password()
        self.binary = find_binary("redis-server")
        self.tls_cert_file, self.tls_key_file, self.tls_ca_file = tls_cert_file, tls_key_file, tls_ca_file
        self.tls_auth_clients = tls_auth_clients
        self.tls_client_cert = tls_client_cert
        super().__init__()

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://:{quote(self.password, safe='')}@{self.host}:{self.port}/0"

    def client(self, **kwargs: object):  # -> redis.Redis (sync), for test setup
        import redis

        if self.tls:
            kwargs.setdefault("ssl", True)
            kwargs.setdefault("ssl_ca_certs", self.tls_ca_file)
            if self.tls_client_cert is not None:
                kwargs.setdefault("ssl_certfile", self.tls_client_cert[0])
                kwargs.setdefault("ssl_keyfile", self.tls_client_cert[1])
        return redis.Redis(host=self.host, port=self.port, password=self.password, **kwargs)

    def _command(self) -> list[str]:
        command = [
            self.binary,
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--requirepass",
            self.password,
            "--dir",
            str(self.root),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            "",  # stdout, i.e. our log file
        ]
        if self.tls:
            command[command.index("--port") + 1] = "0"
            command += [
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                self.tls_cert_file,
                "--tls-key-file",
                str(self.tls_key_file),
                "--tls-auth-clients",
                self.tls_auth_clients,
            ]
            if self.tls_ca_file:
                command += ["--tls-ca-cert-file", self.tls_ca_file]
        return command

    def _probe(self) -> bool:
        # Raw RESP rather than redis-py, whose built-in retries would stretch one probe to seconds.
        with socket.create_connection((self.host, self.port), timeout=1) as raw:
            sock = raw
            if self.tls:
                import ssl

                context = ssl.create_default_context(cafile=self.tls_ca_file)
                if self.tls_client_cert is not None:
                    context.load_cert_chain(*self.tls_client_cert)
                sock = context.wrap_socket(raw, server_hostname=self.host)
            secret = self.password.encode()
            sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n" % (len(secret), secret))
            reply = b""
            while not reply.endswith(b"+PONG\r\n") and len(reply) < 1024:
                chunk = sock.recv(1024)
                if not chunk:
                    return False
                reply += chunk
            return reply == b"+OK\r\n+PONG\r\n"

    def _secrets(self) -> tuple[str, ...]:
        return (self.password,)


_POSTGRES_APP_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
CREATE TABLE customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL UNIQUE
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers (id),
    amount numeric(10, 2) NOT NULL,
    status text NOT NULL DEFAULT 'new',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_id_idx ON orders (customer_id);
INSERT INTO customers (name, email)
    SELECT 'customer ' || g, 'customer' || g || '@example.com' FROM generate_series(1, 50) g;
INSERT INTO orders (customer_id, amount)
    SELECT 1 + g % 50, (g % 97) + 0.5 FROM generate_series(1, 500) g;
UPDATE orders SET status = 'paid' WHERE id % 3 = 0;
DELETE FROM orders WHERE id % 10 = 0;
-- Publish this backend's row counts now: VACUUM below sets n_live_tup outright, and counts
-- flushed after it (at backend exit, asynchronously) would be added on top, doubling it.
SELECT pg_stat_force_next_flush();
-- Index scans, so idx_scan / idx_tup_read are non-zero.
SET enable_seqscan = off;
SELECT count(*) FROM orders WHERE customer_id = 7;
SELECT count(*) FROM customers WHERE id = 3;
RESET enable_seqscan;
SELECT count(*) FROM orders;
VACUUM ANALYZE;
SELECT pg_stat_force_next_flush();  -- all of it visible before start() returns
"""


class PostgresServer(ManagedServer):
    """PostgreSQL with pg_stat_statements, a pg_monitor role and a small app database `dbintel_app`.

    Local (unix socket) connections are trusted; TCP on 127.0.0.1 needs a SCRAM password.
    """

    kind = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: rolls back sessions, checkpoints, exits
    service_user = "postgres"
    superuser = "postgres"
    monitor_user = "dbintel_monitor"
    app_database = "dbintel_app"

    def __init__(self) -> None:
        self.bin_dir = postgres_bin_dir()
        for tool in ("initdb", "postgres", "psql", "pg_isready"):
            find_binary(tool, (self.bin_dir,))
        self.superuser_password = _new_password()
        self.monitor_password = _new_password()
        super().__init__()
        self.data_dir = self.root / "data"
        self.socket_dir = self.root

    def dsn(self, user: str | None = None, password: str | None = None, database: str = "postgres") -> str:
        """postgresql:// URL over TCP; defaults to the monitoring role."""
        if user is None:
            user, password = self.monitor_user, self.monitor_password
        credentials = quote(user, safe="")
        if password is not None:
            credentials += ":" + quote(password, safe="")
        return f"postgresql://{credentials}@{self.host}:{self.port}/{quote(database, safe='')}?sslmode=disable"

    def execute(self, sql: str, database: str = "postgres") -> list[tuple[str, ...]]:
        """Run SQL as the superuser over the unix socket with psql; returns the rows of every
        statement that returns rows, all values as text (NULL as ''). Statements run one by one,
        so CREATE DATABASE and VACUUM work."""
        output = self._run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "--field-separator-zero",
                "--record-separator=\n",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                self.superuser,
                "-d",
                database,
                "-f",
                "-",
            ],
            input_text=sql,
            what=f"psql on {database}",
        )
        return [tuple(line.split("\0")) for line in output.splitlines() if line]

    def _prepare(self) -> None:
        self._run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.superuser,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            as_service_user=True,
            what="initdb",
        )

    def _command(self) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "unix_socket_directories": str(self.socket_dir),
            "shared_preload_libraries": "pg_stat_statements",
            "track_io_timing": "on",
            "fsync": "off",  # test data; a SIGKILL still recovers (the OS keeps the pages)
            "max_connections": "100",
        }
        command = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        return command

    def _probe(self) -> bool:
        probe = subprocess.run(
            [
                str(self.bin_dir / "pg_isready"),
                "-q",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                self.superuser,
                "-d",
                "postgres",
                "-t",
                "2",
            ],
            capture_output=True,
            timeout=5,
        )
        return probe.returncode == 0

    def _provision(self) -> None:
        self.execute(
            f"""
            ALTER ROLE {self.superuser} PASSWORD '{self.superuser_password}';
            CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
            CREATE ROLE {self.monitor_user} LOGIN PASSWORD '{self.monitor_password}' IN ROLE pg_monitor;
            CREATE DATABASE {self.app_database};
            """
        )
        self.execute(_POSTGRES_APP_SCHEMA, database=self.app_database)

    def _secrets(self) -> tuple[str, ...]:
        return (self.superuser_password, self.monitor_password)


class MariaDBServer(ManagedServer):
    """MariaDB with performance_schema, a monitoring user and a schema `dbintel_app`.

    The OS root user is the MariaDB root via the unix socket (no password); TCP needs one.
    """

    kind = "mariadb"
    service_user = "mysql"
    monitor_user = "dbintel_monitor"
    app_database = "dbintel_app"

    def __init__(self) -> None:
        self.server_binary = find_binary("mariadbd", (Path("/usr/sbin"),))
        self.install_binary = find_binary("mariadb-install-db")
        self.client_binary = find_binary("mariadb")
        self.monitor_password = _new_password()
        super().__init__()
        self.data_dir = self.root / "data"
        self.socket_path = self.root / "mariadb.sock"

    @property
    def superuser(self) -> str:
        # mariadb-install-db gives unix-socket logins to root and to the account that ran it.
        return "root" if os.geteuid() == 0 else getpass.getuser()

    def execute(self, sql: str, database: str | None = None) -> list[tuple[str, ...]]:
        """Run SQL as the superuser over the unix socket with the mariadb client; returns the rows
        of every statement that returns rows, values as the client's batch-mode text
        (NULL as 'NULL', tabs and newlines escaped)."""
        command = [
            self.client_binary,
            "--no-defaults",
            f"--socket={self.socket_path}",
            f"--user={self.superuser}",
            "--batch",
            "--skip-column-names",
        ]
        if database is not None:
            command.append(f"--database={database}")
        output = self._run(command, input_text=sql, what="mariadb client")
        return [tuple(line.split("\t")) for line in output.splitlines() if line]

    def _prepare(self) -> None:
        command = [
            self.install_binary,
            "--no-defaults",
            f"--datadir={self.data_dir}",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
        ]
        if self._run_as() is not None:
            command.append(f"--user={self.service_user}")
        self._run(command, what="mariadb-install-db")

    def _command(self) -> list[str]:
        return [
            self.server_binary,
            "--no-defaults",
            f"--datadir={self.data_dir}",
            f"--socket={self.socket_path}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--pid-file={self.root / 'mariadb.pid'}",
            "--performance-schema=ON",
            # what the query samples read (off by default on MariaDB): current statements and waits
            "--performance-schema-consumer-events-statements-current=ON",
            "--performance-schema-consumer-events-waits-current=ON",
            "--performance-schema-instrument=wait/lock/metadata/sql/mdl=ON",  # metadata-lock blockers
            "--skip-log-bin",
            "--skip-name-resolve",
            "--innodb-flush-log-at-trx-commit=2",
        ]

    def _probe(self) -> bool:
        return self.execute("SELECT 1") == [("1",)]

    def _provision(self) -> None:
        user = f"'{self.monitor_user}'@'%'"
        self.execute(
            f"""
            CREATE USER {user} IDENTIFIED BY '{self.monitor_password}';
            GRANT PROCESS, REPLICATION CLIENT, SLAVE MONITOR, SELECT ON *.* TO {user};
            CREATE DATABASE {self.app_database};
            USE {self.app_database};
            CREATE TABLE orders (
                id INT AUTO_INCREMENT PRIMARY KEY,
                customer_id INT NOT NULL,
                amount DECIMAL(10, 2) NOT NULL,
                status VARCHAR(16) NOT NULL DEFAULT 'new',
                KEY orders_customer_id_idx (customer_id)
            ) ENGINE=InnoDB;
            INSERT INTO orders (customer_id, amount) SELECT 1 + seq % 50, seq % 97 + 0.5 FROM seq_1_to_500;
            UPDATE orders SET status = 'paid' WHERE id % 3 = 0;
            DELETE FROM orders WHERE id % 10 = 0;
            SELECT count(*) FROM orders WHERE customer_id = 7;
            """
        )

    def _secrets(self) -> tuple[str, ...]:
        return (self.monitor_password,)


class SecantusServer(ManagedServer):
    """SecantusDB (MongoDB wire protocol): a one-member replica set `secantus`, or standalone."""

    kind = "secantus"
    startup_timeout = 45.0
    replica_set_name = "secantus"

    def __init__(self, standalone: bool = False) -> None:
        # The console script next to our interpreter, so a pyenv shim is not in the way.
        self.binary = find_binary("secantusd-py", (Path(sys.executable).parent,))
        self.standalone = standalone
        super().__init__()
        self.data_dir = self.root / "data"

    @property
    def replica_set(self) -> str | None:
        return None if self.standalone else self.replica_set_name

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    def client(self, **kwargs: object):  # -> pymongo.MongoClient (sync), for test setup
        import pymongo

        kwargs.setdefault("directConnection", True)
        return pymongo.MongoClient(self.host, self.port, **kwargs)

    def _command(self) -> list[str]:
        command = [self.binary, "--host", self.host, "--port", str(self.port), "--storage-path", str(self.data_dir)]
        if self.standalone:
            command.append("--standalone")
        return command

    def _probe(self) -> bool:
        with self.client(serverSelectionTimeoutMS=1000, connectTimeoutMS=1000) as client:
            hello = client.admin.command("hello")
        # A replica set is usable once its one member has elected itself primary.
        return bool(hello.get("isWritablePrimary"))
