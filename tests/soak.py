"""The soak: mixed client traffic through the real proxy into a real Loki, with faults, then checks.

Eight clients (tests/traffic.py) hold conversations of 3 to 8 turns against the fake provider:
Anthropic JSON and SSE, Chat Completions and Responses streams, some with 1 MB of context,
some streams left half-read. Meanwhile, at fixed fractions of the run, Loki goes away twice, the
gunicorn master gets two HUPs and a busy worker is killed twice with SIGKILL. At the end, without
any backfill, the soak checks every session file (lines parse, seq 1..n, one file per client
session) and that Loki holds every line of the files exactly once, and reports memory and file
descriptors of the proxy's processes over the run.

Loki is one of its own (``tests/realloki.py``: stopped and started again on the same data for the
outages) or, with ``--loki-url``, yours: the proxy then pushes through a gate on loopback that
the soak closes for the outages, and each run keeps to a label value of its own
(``environment=soak-…``). ``tests/test_soak.py`` runs two minutes of it beside the suite;
``./scripts/soak`` runs it for as long as you like::

    ./scripts/soak --duration 10m
    ./scripts/soak --duration 1h --loki-url http://loki.example:3100
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import requests  # noqa: E402
from fakeprovider import FakeProvider  # noqa: E402
from proxyproc import ProxyServer, http_get, wait_until  # noqa: E402
from realloki import RealLoki  # noqa: E402
from traffic import Tally, random_conversation  # noqa: E402

from llmproxy.loki.backfill import read_entries  # noqa: E402
from llmproxy.loki.client import LokiClient  # noqa: E402
from llmproxy.loki.labels import LabelMaker  # noqa: E402
from llmproxy.loki.split import split_entry  # noqa: E402
from llmproxy.record import logtree  # noqa: E402
from llmproxy.settings import DEFAULT_WORKERS, LokiSettings, Settings, parse_duration  # noqa: E402

# (fraction of the run, fault): the ten-minute run, scaled.
SCHEDULE = [(0.15, "loki down"), (0.30, "HUP"), (0.40, "kill -9"), (0.55, "loki down"), (0.70, "HUP"),
            (0.85, "kill -9")]
SAMPLE_INTERVAL = 2.0


# --- Loki, and how it goes away ---

class LokiGate:
    """A TCP relay on loopback in front of a Loki the soak does not own: ``down()`` refuses and
    cuts connections (as a stopped Loki would), ``up()`` listens again on the same port."""

    def __init__(self, target_url: str):
        from urllib.parse import urlsplit

        parts = urlsplit(target_url)
        self.target = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        self.scheme = parts.scheme
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            listener.close()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    close = down

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class OwnLoki:
    """A real Loki of the soak's own; an outage stops it (SIGTERM), and it comes back on the same
    data. It flushes on shutdown: with its default WAL replay, Loki loses a few entries it had
    acknowledged across a restart, which no proxy can mend (docs/reliability.rst)."""

    def __init__(self, workdir: Path):
        self.loki = RealLoki(workdir, flush_on_shutdown=True).start()
        self.url = self.query_url = self.loki.url

    def down(self) -> None:
        self.loki.stop()

    def up(self) -> None:
        self.loki.start()

    def close(self) -> None:
        self.loki.stop()


class TheirLoki:
    def __init__(self, url: str):
        self.query_url = url.rstrip("/")
        self.gate = LokiGate(url)
        self.gate.up()
        self.url = self.gate.url

    def down(self) -> None:
        self.gate.down()

    def up(self) -> None:
        self.gate.up()

    def close(self) -> None:
        self.gate.down()


# --- the proxy's processes, sampled ---

def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Sample:
    t: float
    master_rss: float
    master_fds: int
    worker_rss: list[float]
    worker_fds: list[int]


class Sampler:
    """Memory and descriptors of the master and its workers, every :data:`SAMPLE_INTERVAL`."""

    def __init__(self, server: ProxyServer, started: float):
        self.server, self.started = server, started
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            try:
                master = self.server.proc.pid
                workers = self.server.worker_pids()
                self.samples.append(Sample(time.monotonic() - self.started, _rss_mib(master), _fds(master),
                                           [_rss_mib(p) for p in workers], [_fds(p) for p in workers]))
            except (OSError, ValueError):  # a worker gone between the listing and the reading
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# --- the checks ---

def check_sessions(log_dir: Path, markers: set[str]) -> tuple[int, int, list[str]]:
    """(session files, lines, problems): every line parses, seq 1..n once each, session_start
    first, one file per client session."""
    problems, sessions, lines = [], 0, 0
    files_of: dict[str, list[str]] = {}
    for files in logtree.sessions(log_dir):
        sessions += 1
        data = logtree.read_session(files)
        docs = []
        for number, raw in enumerate(data.split(b"\n")[:-1], 1):
            try:
                docs.append(json.loads(raw))
            except ValueError:
                problems.append(f"{files.session}: line {number} does not parse")
        lines += len(docs)
        if not docs or docs[0].get("type") != "session_start":
            problems.append(f"{files.session}: does not start with session_start")
            continue
        seqs = [d["seq"] for d in docs if d.get("type") == "request"]
        if seqs != list(range(1, len(seqs) + 1)):
            problems.append(f"{files.session}: request seqs {seqs}")
        files_of.setdefault(docs[0].get("client_session_id"), []).append(files.session)
    for marker in sorted(markers):
        found = files_of.get(marker, [])
        if len(found) != 1:
            problems.append(f"client session {marker}: {len(found)} session files {found}")
    return sessions, lines, problems


def expected_in_loki(log_dir: Path, max_line_bytes: int) -> Counter:
    """(ts, bytes) of each entry Loki should hold once: the files' lines, split as exported."""
    labels = LabelMaker("soak", "unused")
    return Counter((p.ts_ns, len(p.line)) for files in logtree.sessions(log_dir)
                   for e in read_entries(files, labels) for p in split_entry(e, max_line_bytes))


# --- the run ---

@dataclass
class Report:
    duration: float
    clients: int
    calls: int = 0
    failed: int = 0
    abandoned: int = 0
    conversations: int = 0
    session_files: int = 0
    file_lines: int = 0
    session_problems: list[str] = field(default_factory=list)
    loki_expected: int = 0
    loki_missing: int = 0
    loki_duplicates: int = 0
    loki_unexpected: int = 0
    loki_complete_after: float | None = None  # seconds from the end of the load
    recovered: int = 0
    dropped: int = 0
    faults: list[tuple[float, str]] = field(default_factory=list)
    warm: dict = field(default_factory=dict)
    end: dict = field(default_factory=dict)
    peak: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (not self.session_problems and not self.loki_missing and not self.loki_duplicates
                and not self.loki_unexpected)


def _figures(samples: list[Sample]) -> dict:
    return {"worker_rss_mib": round(max(max(s.worker_rss, default=0) for s in samples), 1),
            "workers_rss_mib": round(max(sum(s.worker_rss) for s in samples), 1),
            "master_rss_mib": round(max(s.master_rss for s in samples), 1),
            "worker_fds": max(max(s.worker_fds, default=0) for s in samples),
            "master_fds": max(s.master_fds for s in samples)} if samples else {}


def run(workdir: Path, duration: float = 120.0, clients: int = 8, loki_url: str | None = None,
        outage: float | None = None, seed: int = 23, say=print) -> Report:
    workdir.mkdir(parents=True, exist_ok=True)
    outage = outage if outage is not None else max(10.0, duration * 0.075)
    environment = f"soak-{int(time.time())}-{os.getpid()}"
    report = Report(duration, clients)
    loki = TheirLoki(loki_url) if loki_url else OwnLoki(workdir / "loki")
    fake = FakeProvider(record=False).start()
    # The shipped defaults (the tests' ProxyServer has fewer workers and threads), unless set.
    server = ProxyServer(workdir / "proxy", {
        "LLM_PROXY_LOKI_ENABLED": "true", "LLM_PROXY_LOKI_URL": loki.url, "LLM_PROXY_LOKI_ENVIRONMENT": environment,
        "LLM_PROXY_WORKERS": os.environ.get("LLM_PROXY_WORKERS", str(DEFAULT_WORKERS)),
        "LLM_PROXY_THREADS": os.environ.get("LLM_PROXY_THREADS", str(Settings().threads))})
    settings = LokiSettings(enabled=True, url=loki.query_url,
                            auth_token=os.environ.get("LLM_PROXY_LOKI_AUTH_TOKEN"),
                            username=os.environ.get("LLM_PROXY_LOKI_USERNAME"),
                            password=os.environ.get("LLM_PROXY_LOKI_PASSWORD"),
                            tenant_id=os.environ.get("LLM_PROXY_LOKI_TENANT_ID"))
    tally, stop = Tally(), threading.Event()
    try:
        server.start()
        started_ns, started = time.time_ns(), time.monotonic()
        say(f"soak: {duration:g}s, {clients} clients, proxy {server.url}\n"
            f"  Loki {loki.query_url} (environment={environment})\n  logs {server.log_dir}")
        sampler = Sampler(server, started)

        def client(n: int) -> None:
            rng, session, k = random.Random(seed * 100 + n), requests.Session(), 0
            while not stop.is_set():
                convo = random_conversation(rng, f"soak-{n}-{k}", big_share=0.05)
                convo.run(session, server.url, fake.upstream, tally, stop, think=0.3, rng=rng)
                k += 1

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
        for t in threads:
            t.start()
        _faults(server, loki, duration, outage, started, report, say)
        stop.set()
        load_ended = time.monotonic()
        for t in threads:
            t.join(120)
        sampler.stop()
        report.warm = _figures([s for s in sampler.samples if s.t < duration * SCHEDULE[0][0]])
        report.end = _figures([s for s in sampler.samples if s.t > duration * 0.9])
        report.peak = _figures(sampler.samples)
        for name in ("calls", "failed", "abandoned", "conversations"):
            setattr(report, name, getattr(tally, name))

        say("soak: load stopped; waiting for Loki to hold every line (no backfill) ...")
        _drained(server)
        report.session_files, report.file_lines, report.session_problems = check_sessions(
            server.log_dir, set(tally.markers))
        expected = expected_in_loki(server.log_dir, LokiSettings().max_line_bytes)
        report.loki_expected = sum(expected.values())
        client_ = LokiClient(settings)
        end_ns = time.time_ns() + 60 * 10**9
        deadline = time.monotonic() + max(180.0, duration * 0.3)
        while True:
            held = client_.held(f'{{app="llm-proxy", environment="{environment}"}}',
                                started_ns - 10 * 60 * 10**9, end_ns)
            missing = expected - held
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(2)
        report.loki_complete_after = None if missing else round(time.monotonic() - load_ended, 1)
        report.loki_missing = sum(missing.values())
        report.loki_duplicates = sum(n - 1 for n in held.values() if n > 1)
        report.loki_unexpected = sum(n for key, n in held.items() if key not in expected)
        health = http_get(server.port, "/health/loki")[1]
        report.recovered, report.dropped = health.get("entries_recovered", 0), health.get("entries_dropped", 0)
    finally:
        stop.set()
        server.stop()
        fake.stop()
        loki.close()
    return report


def _faults(server: ProxyServer, loki, duration: float, outage: float, started: float, report: Report,
            say) -> None:
    """The schedule's faults at their moments; returns at the end of the run."""
    def at(moment: float) -> None:
        time.sleep(max(0.0, started + moment - time.monotonic()))

    def note(what: str) -> None:
        moment = round(time.monotonic() - started, 1)
        report.faults.append((moment, what))
        say(f"soak: {moment:7.1f}s  {what}")

    for fraction, fault in SCHEDULE:
        at(duration * fraction)
        if fault == "loki down":
            loki.down()
            note(f"Loki down for {outage:g}s")
            at(duration * fraction + outage)
            loki.up()
            note("Loki up")
        elif fault == "HUP":
            os.kill(server.proc.pid, signal.SIGHUP)
            note("HUP to the master")
        else:
            victim = _busiest(server.worker_pids())
            os.kill(victim, signal.SIGKILL)
            note(f"kill -9 of worker {victim}")
    at(duration)


def _busiest(pids: list[int]) -> int:
    """The worker that used the most CPU over the last half second."""
    def cpu(pid: int) -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    before = {p: cpu(p) for p in pids}
    time.sleep(0.5)
    return max(pids, key=lambda p: cpu(p) - before[p] if os.path.exists(f"/proc/{p}") else -1)


def _drained(server: ProxyServer, timeout: float = 180.0) -> None:
    """Until the proxy holds nothing for Loki: queues and spool empty, no dead worker's ledger."""
    ledgers = server.log_dir / ".loki-spool" / "ledgers"

    def done():
        health = http_get(server.port, "/health/loki")[1]
        return (health["queue_depth"] == 0 and health["spooled_entries"] == 0
                and len(list(ledgers.glob("*.ledger"))) <= len(server.worker_pids()))

    wait_until(done, timeout, interval=0.5, message="the proxy drained for Loki")


def describe(report: Report) -> list[str]:
    """The figures, for an 80-column terminal."""
    lines = [f"soak: {report.duration:g}s, {report.clients} clients: {report.calls} calls in "
             f"{report.conversations} conversations",
             f"  {report.failed} attempts failed (a killed worker) and were retried; "
             f"{report.abandoned} streams abandoned",
             "faults:"]
    lines += [f"  {t:7.1f}s  {what}" for t, what in report.faults]
    lines.append(f"sessions: {report.session_files} files, {report.file_lines} lines, "
                 + ("all whole" if not report.session_problems else f"{len(report.session_problems)} PROBLEMS:"))
    lines += [f"  {p}"[:80] for p in report.session_problems[:10]]
    complete = (f"all there {report.loki_complete_after:g}s after the load"
                if report.loki_complete_after is not None else "INCOMPLETE")
    lines += [f"Loki: {report.loki_expected} entries expected: {report.loki_missing} missing, "
              f"{report.loki_duplicates} twice,",
              f"  {report.loki_unexpected} not in the files; {complete}",
              f"  {report.recovered} recovered from killed workers, {report.dropped} dropped",
              f"{'RSS MiB, fds':19}{'worker':>8}{'workers':>9}{'master':>8}{'fds':>6}{'master':>8}"]
    for name, figures in (("before the faults", report.warm), ("at the end", report.end), ("peak", report.peak)):
        lines.append(f"  {name:17}" + "".join(f"{figures.get(key, '-'):>{width}}" for key, width in (
            ("worker_rss_mib", 8), ("workers_rss_mib", 9), ("master_rss_mib", 8), ("worker_fds", 6),
            ("master_fds", 8))))
    lines.append("OK" if report.ok else "FAILED")
    return lines


# --- beside the test suite ---

SUITE_DURATION = "120s"


@dataclass
class Background:
    """A soak running in a process of its own while the suite goes on (tests/conftest.py)."""

    workdir: Path
    process: "subprocess.Popen | None" = None
    unavailable: str = ""   # why it could not start (no Loki binary)

    def result(self, timeout: float) -> dict:
        """The soak's figures once it is done (its output is in ``workdir/soak.out``)."""
        self.process.wait(timeout)
        report = self.workdir / "report.json"
        if not report.exists():
            raise RuntimeError(f"the soak ended with {self.process.returncode} and no report:\n"
                               + (self.workdir / "soak.out").read_text()[-3000:])
        return json.loads(report.read_text())


BACKGROUND: Background | None = None


def start_background(workdir: Path) -> Background:
    global BACKGROUND
    import subprocess

    from realloki import loki_binary

    binary, why = loki_binary()
    BACKGROUND = Background(workdir, unavailable=why if binary is None else "")
    if binary is not None:
        with open(workdir / "soak.out", "wb") as out:
            BACKGROUND.process = subprocess.Popen(
                [sys.executable, str(Path(__file__)), "--duration", SUITE_DURATION, "--workdir", str(workdir),
                 "--json", str(workdir / "report.json")], stdout=out, stderr=subprocess.STDOUT)
    return BACKGROUND


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", default="10m", help="how long the load runs (10m, 1h, 120s)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--loki-url", help="your Loki (default: a real Loki of the soak's own); "
                        "LLM_PROXY_LOKI_AUTH_TOKEN, _USERNAME, _PASSWORD, _TENANT_ID apply")
    parser.add_argument("--outage", help="length of each Loki outage (default 7.5%% of the run, at least 10s)")
    parser.add_argument("--workdir", type=Path, help="where the logs go (default: a new temporary directory)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    parser.add_argument("--seed", type=int, default=23)
    args = parser.parse_args(argv)
    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="llm-proxy-soak-"))
    report = run(workdir, parse_duration(args.duration), args.clients, args.loki_url,
                 parse_duration(args.outage) if args.outage else None, args.seed)
    print("\n".join(describe(report)))
    if args.json:
        args.json.write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=1))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
