"""Subprocesses started in their own process group (`start_new_session=True`), as the e2e tests and
the benches start `dbintel` processes: wait until one serves HTTP, and stop its whole group."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request


def wait_http_ok(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Return once `url` answers 200; raise if `process` exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.pid} exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:g}s")


def stop_process_group(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process's group, then SIGKILL it if the process has not ended within `timeout`."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
