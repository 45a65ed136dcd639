"""A real Grafana Loki for the tests (the binary in ``../shared/tools``), started on free
loopback ports with a fresh data directory, and a small client for its query API.

The binary is unpacked once into the test cache (``$LLM_PROXY_TEST_CACHE``, default
``~/.cache/llm-proxy-tests``) and checked against the sha256 its README names. Where it cannot be
had (no ``shared/tools`` beside the checkout), :func:`loki_binary` says why; the fixture skips,
or fails under CI (``CI`` set), as the real-client tests do.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from proxyproc import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
SHA256 = "20b217912a811f1c338f345185ee648106d8529620741be6e6ce47697c0fd29e"


def tools_dir() -> Path | None:
    """``shared/tools`` of the workplace: beside the checkout (``../shared/tools``), or where
    ``LLM_PROXY_LOKI_TOOLS`` says."""
    for candidate in (os.environ.get("LLM_PROXY_LOKI_TOOLS"), ROOT.parent / "shared" / "tools",
                      ROOT.parent.parent / "shared" / "tools", Path("/work/shared/tools")):
        if candidate and (Path(candidate) / "loki-linux-amd64.xz").is_file():
            return Path(candidate)
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("LLM_PROXY_TEST_CACHE") or Path.home() / ".cache" / "llm-proxy-tests")


def loki_binary() -> tuple[Path | None, str]:
    """The unpacked Loki binary, or None and why not."""
    target = cache_dir() / f"loki-{SHA256[:16]}"
    if target.is_file() and os.access(target, os.X_OK):
        return target, ""
    tools = tools_dir()
    if tools is None:
        return None, "the real Loki binary (shared/tools/loki-linux-amd64.xz) is not beside this checkout"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + f".{os.getpid()}.part")
    digest = hashlib.sha256()
    with lzma.open(tools / "loki-linux-amd64.xz") as src, open(partial, "wb") as dst:
        while block := src.read(1 << 20):
            digest.update(block)
            dst.write(block)
    if digest.hexdigest() != SHA256:
        partial.unlink()
        return None, f"unpacked Loki has sha256 {digest.hexdigest()}, not {SHA256}"
    partial.chmod(0o755)
    os.replace(partial, target)  # atomic: concurrent runs each unpack, the last rename wins
    return target, ""


class RealLoki:
    """One Loki process: ``start()`` waits for ``/ready``; ``push_url`` and ``url`` for clients."""

    def __init__(self, workdir: Path, allow_structured_metadata: bool = True, limits: dict | None = None,
                 flush_on_shutdown: bool = False):
        self.workdir = Path(workdir)
        self.allow_structured_metadata = allow_structured_metadata
        self.limits = limits or {}  # more of limits_config, e.g. {"max_query_series": 20}
        # Loki 3's default replays its WAL after a restart, and a few entries it had answered 204
        # to were gone after a SIGTERM restart (3 to 140 of 160,000 to 270,000, in three runs);
        # flushing on shutdown kept them all (docs/reliability.rst). A Loki a test stops wants it.
        self.flush_on_shutdown = flush_on_shutdown
        self.port = self.grpc_port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def push_url(self) -> str:
        return f"{self.url}/loki/api/v1/push"

    def start(self, timeout: float = 60.0) -> "RealLoki":
        """Start Loki; started before (and stopped), it comes back on the same ports and data."""
        binary, why = loki_binary()
        if binary is None:
            raise RuntimeError(why)
        tools = tools_dir() or ROOT
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port, self.grpc_port = free_port(), free_port()
        config = (tools / "loki-local.yaml").read_text().replace("LOKI_DATA", str(data))
        config = config.replace("http_listen_port: 3100", f"http_listen_port: {self.port}")
        config = config.replace("grpc_listen_port: 9096", f"grpc_listen_port: {self.grpc_port}")
        if self.flush_on_shutdown:
            config = config.replace("ingester:\n", "ingester:\n  wal:\n    flush_on_shutdown: true\n", 1)
        if not self.allow_structured_metadata:
            config = config.replace("allow_structured_metadata: true", "allow_structured_metadata: false")
        limits = "".join(f"\n  {name}: {value}" for name, value in self.limits.items())
        config = config.replace("limits_config:", "limits_config:" + limits)
        (self.workdir / "loki.yaml").write_text(config)
        self.log = open(self.workdir / "loki.log", "ab")
        self.process = subprocess.Popen([str(binary), f"-config.file={self.workdir / 'loki.yaml'}"],
                                        stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir)

        def ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"Loki exited with {self.process.returncode}: "
                                   f"{(self.workdir / 'loki.log').read_text()[-2000:]}")
            with urllib.request.urlopen(f"{self.url}/ready", timeout=2) as answer:
                return answer.status == 200

        try:
            wait_until(ready, timeout, interval=0.2, message="Loki /ready")
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "log", None):
            self.log.close()

    # --- the HTTP API, as a test reads it ---

    def flush(self) -> None:
        """Make what was pushed queryable at once (``POST /flush``)."""
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/flush", method="POST"), timeout=30).read()

    def get(self, path: str, headers: dict | None = None, **params) -> dict:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        request = urllib.request.Request(f"{self.url}{path}?{query}", headers=headers or {})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    def query_range(self, query: str, start_ns: int | None = None, end_ns: int | None = None,
                    limit: int = 5000, direction: str = "forward", headers: dict | None = None, **params) -> dict:
        now = time.time_ns()
        return self.get("/loki/api/v1/query_range", headers=headers, query=query, **params,
                        start=start_ns if start_ns is not None else now - 6 * 3600 * 10**9,
                        end=end_ns if end_ns is not None else now + 60 * 10**9, limit=limit,
                        direction=direction)

    def lines(self, query: str, **kwargs) -> list[tuple[int, str]]:
        """(ns, line) of every entry a log query returns, oldest first."""
        result = self.query_range(query, **kwargs)["data"]["result"]
        return sorted((int(ts), line) for stream in result for ts, line, *_ in stream["values"])

    def entries(self, query: str, **kwargs) -> list[tuple[dict, int, str, dict]]:
        """(labels, ns, line, structured metadata) of every entry a log query returns, oldest
        first. Loki is asked to answer the stream's labels and each entry's structured metadata
        apart (``categorize-labels``); without it, metadata joins the labels."""
        result = self.query_range(query, headers={"X-Loki-Response-Encoding-Flags": "categorize-labels"},
                                  **kwargs)["data"]["result"]
        return sorted(((stream["stream"], int(ts), line, (extra[0] if extra else {}).get("structuredMetadata", {}))
                       for stream in result for ts, line, *extra in stream["values"]), key=lambda e: e[1:3])

    def metric(self, query: str, at_ns: int | None = None) -> list[tuple[dict, float]]:
        """(labels, value) of each series an instant metric query answers, at ``at_ns`` (now)."""
        data = self.get("/loki/api/v1/query", query=query, time=at_ns or time.time_ns())["data"]
        assert data["resultType"] == "vector", data["resultType"]
        return sorted(((s["metric"], float(s["value"][1])) for s in data["result"]),
                      key=lambda s: sorted(s[0].items()))

    def count(self, query: str, range_: str = "6h") -> int:
        """How many entries a log query matches in the last ``range_``: a metric query, so the
        lines need not fit in one answer (4 MiB at most by default)."""
        found = self.metric(f"sum(count_over_time({query} [{range_}]))")
        return int(found[0][1]) if found else 0

    def wait_for_count(self, query: str, count: int, timeout: float = 30.0) -> int:
        """The number of entries of ``query`` once it is ``count``; fails if it is still short or
        goes past it after ``timeout``."""
        return wait_until(lambda: (n := self.count(query)) == count and n, timeout, interval=0.25,
                          message=f"{count} entries for {query} (last count {self.count(query)})")

    def wait_for_lines(self, query: str, count: int, timeout: float = 30.0) -> list[tuple[int, str]]:
        """The entries of ``query`` once there are at least ``count`` of them."""
        return wait_until(lambda: (found := self.lines(query)) and len(found) >= count and found,
                          timeout, interval=0.25, message=f"{count} entries for {query}")


def own_machine(name: str) -> str:
    """A ``machine`` label of one test's own: the real Loki is shared by the whole run, and a
    test keeps to its own streams by it."""
    import uuid

    return f"{name}-{uuid.uuid4().hex[:8]}"


def loki_entries(lines: list[str]) -> int:
    """How many entries Loki holds for these file lines: a line over the exporter's limit goes in
    parts (:mod:`llmproxy.loki.split`)."""
    from llmproxy.loki.batch import LokiEntry
    from llmproxy.loki.split import split_entry
    from llmproxy.settings import LokiSettings

    limit = LokiSettings().max_line_bytes
    return sum(len(split_entry(LokiEntry(0, line.encode(), ()), limit)) for line in lines)


def start_real_loki(workdir: Path, **kwargs) -> RealLoki:
    return RealLoki(workdir, **kwargs).start()


def cleanup(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
