"""Start llm-proxy the way a user does (``llm-proxy serve``) and wait for it with deadlines.

Used by the tests' fixtures and by ``scripts/bench``.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, interval: float = 0.02, message: str = "condition"):
    """Call ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except (OSError, http.client.HTTPException) as exc:  # a server still starting refuses connections
            last_error = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not reached within {timeout}s (last error: {last_error!r})")
        time.sleep(interval)


def jsonl_lines(path) -> list[str]:
    """The whole lines of a JSONL file the proxy may be appending to.

    A reader can see part of a write still being copied in (the kernel copies page by page), so
    a last line without its newline is not yet a line and is left out.
    """
    return [line.decode() for line in Path(path).read_bytes().split(b"\n")[:-1]]


def logged_lines(log_dir, count: int, timeout: float = 10.0) -> list[str]:
    """The whole lines of the session files under ``log_dir`` once there are ``count`` of them.
    A client has its answer before the proxy writes the response line (after the last byte)."""
    def done():
        lines = [line for path in sorted(Path(log_dir).glob("*/*/*.jsonl")) for line in jsonl_lines(path)]
        return lines if len(lines) == count else None

    return wait_until(done, timeout, message=f"{count} lines in the session files")


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, json.loads(body) if body else {}
    finally:
        conn.close()


class ProxyServer:
    """``llm-proxy serve`` in a subprocess on a free loopback port, with its own log dir."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None, command: list[str] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_dir = self.workdir / "logs"
        self.output_path = self.workdir / "server.out"
        self.env = {
            **os.environ,
            "LLM_PROXY_HOST": "127.0.0.1",
            "LLM_PROXY_PORT": str(self.port),
            "LLM_PROXY_LOG_DIR": str(self.log_dir),
            "LLM_PROXY_ENV_FILE": str(self.workdir / "no-such.env"),
            "LLM_PROXY_WORKERS": "2",
            "LLM_PROXY_THREADS": "8",
            **(env or {}),
        }
        self.command = command or [str(Path(sys.executable).with_name("llm-proxy")), "serve"]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "ProxyServer":
        self._output = open(self.output_path, "ab")
        self.proc = subprocess.Popen(self.command, env=self.env, cwd=self.workdir,
                                     stdout=self._output, stderr=subprocess.STDOUT)
        self.wait_healthy(timeout)
        self.wait_for_workers(timeout)
        return self

    def wait_for_workers(self, timeout: float = 30.0) -> None:
        """Until every worker has booted and counts in /health: gunicorn forks them a random pause
        apart, and a test that wants calls spread over them must not start before the last."""
        want = self.env.get("LLM_PROXY_WORKERS", "")
        if want.isdigit():
            wait_until(lambda: http_get(self.port, "/health", timeout=1.0)[1].get("threads", {}).get("workers")
                       == int(want), timeout, interval=0.05, message=f"{want} workers in /health")

    def wait_healthy(self, timeout: float = 30.0) -> None:
        def healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            return http_get(self.port, "/health", timeout=1.0)[0] == 200

        wait_until(healthy, timeout, interval=0.05, message="proxy /health")

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: children of the master process."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in children.read_text().split()]

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._output.close()

    def __enter__(self) -> "ProxyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
