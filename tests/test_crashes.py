"""Workers killed at every step of their logging (real gunicorn, fakeloki): sessions stay whole and
Loki gets every line the files keep, once, without a manual backfill.

``LLM_PROXY_FAULT_DIR`` arms the crash points of the logging path (llmproxy/common/faults.py):
one worker dies of SIGKILL at each point in turn, twice, while clients keep talking and retry
what a dead worker dropped, as real clients do.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from fakeloki import FakeLoki
from proxyproc import http_get, wait_until
from traffic import Conversation, Tally

from llmproxy.loki.backfill import read_entries
from llmproxy.loki.labels import LabelMaker
from llmproxy.loki.split import split_entry
from llmproxy.record import logtree

POINTS = ["request_assigned", "request_noted", "request_torn", "request_written", "request_committed",
          "request_cleared", "request_queued", "response_noted", "response_torn", "response_written",
          "response_queued", "push_sending", "push_sent", "spool_written"]
ROUNDS = 3


def session_files(log_dir) -> dict[str, list[dict]]:
    """Every session file's lines, parsed (a line that does not parse fails the test here)."""
    found = {}
    for files in logtree.sessions(log_dir):
        data = logtree.read_session(files)
        assert data.endswith(b"\n") or not data, f"{files.session}: a half line at the end"
        found[files.session] = [json.loads(line) for line in data.split(b"\n")[:-1]]
    return found


def assert_sessions_whole(log_dir, markers) -> None:
    """seq 1..n once each, one file per client session, session_start first."""
    files_of = defaultdict(set)
    for session, entries in session_files(log_dir).items():
        assert entries[0]["type"] == "session_start", session
        seqs = [e["seq"] for e in entries if e["type"] == "request"]
        assert seqs == list(range(1, len(seqs) + 1)), f"{session}: request seqs {seqs}"
        answered = [e["seq"] for e in entries if e["type"] == "response"]
        assert len(answered) == len(set(answered)) and set(answered) <= set(seqs), f"{session}: responses {answered}"
        files_of[entries[0].get("client_session_id")].add(session)
    for marker in markers:
        assert len(files_of[marker]) == 1, f"client session {marker} in files {sorted(files_of[marker])}"


def expected_in_loki(log_dir, max_line_bytes: int = 262144) -> set[tuple[int, str]]:
    """(ts, line) of every entry Loki should hold: the files' lines, split as the exporter splits."""
    labels = LabelMaker("test", "unused")
    return {(p.ts_ns, p.line.decode()) for files in logtree.sessions(log_dir)
            for e in read_entries(files, labels) for p in split_entry(e, max_line_bytes)}


def fired(fault_dir, point) -> set[int]:
    """The pids that died at ``point``."""
    return {int(p.name.rsplit("-", 1)[1]) for p in fault_dir.glob(f"{point}.fired-*")}


def test_workers_killed_at_every_step_of_logging_leave_sessions_whole_and_loki_complete(
        start_proxy, fake_provider, tmp_path):
    loki = FakeLoki().start()
    faults = tmp_path / "faults"
    faults.mkdir()
    server = start_proxy({
        "LLM_PROXY_FAULT_DIR": str(faults), "LLM_PROXY_WORKERS": "2", "LLM_PROXY_THREADS": "8",
        "LLM_PROXY_LOKI_ENABLED": "true", "LLM_PROXY_LOKI_URL": loki.url, "LLM_PROXY_LOKI_ENVIRONMENT": "test",
        "LLM_PROXY_LOKI_BATCH_WAIT": "100ms", "LLM_PROXY_LOKI_RETRY_MAX": "1",
        "LLM_PROXY_LOKI_BACKOFF_MIN": "20ms", "LLM_PROXY_LOKI_BACKOFF_MAX": "100ms"})
    tally, stop = Tally(), threading.Event()
    rng = random.Random(23)

    def client(n: int) -> None:
        session = requests.Session()
        k = 0
        while not stop.is_set():
            kind = ("anthropic-json", "anthropic-sse", "chat-sse")[(n + k) % 3]
            # Some first turns carry 300 KB: lines over Loki's limit, writes over many pages.
            convo = Conversation(kind, f"crash-{n}-{k}", turns=rng.randint(2, 5),
                                 padding=300_000 if k % 4 == 1 else 0, events=5, delay_ms=2)
            convo.run(session, server.url, fake_provider.upstream, tally, stop)
            k += 1

    with ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(client, n) for n in range(4)]
        try:
            for point in POINTS * ROUNDS:
                before = fired(faults, point)
                if point == "spool_written":
                    loki.down()  # pushes fail, their batches go to the spool
                (faults / point).touch()
                victim, = wait_until(lambda: fired(faults, point) - before, timeout=30, message=f"{point} fired")
                loki.up()
                wait_until(lambda: victim not in server.worker_pids(), timeout=10, message="the victim gone")
        finally:
            stop.set()
            for c in clients:
                c.result(timeout=120)

    assert all(len(fired(faults, p)) == ROUNDS for p in POINTS)
    assert tally.calls > 100 and tally.failed >= 8  # the clients did see workers die, and retried

    # Every kill is recovered by a live worker within seconds: nothing but live workers' ledgers
    # remains, and Loki holds exactly what the files hold.
    server.wait_for_workers()
    ledgers = server.log_dir / ".loki-spool" / "ledgers"
    wait_until(lambda: len(list(ledgers.glob("*.ledger"))) == 2, timeout=60, message="dead workers' ledgers recovered")
    assert_sessions_whole(server.log_dir, tally.markers)
    expected = expected_in_loki(server.log_dir)

    def in_loki():
        return {(ts, line) for _, ts, line in loki.entries()}

    wait_until(lambda: in_loki() >= expected, timeout=30, message="every file line in Loki")
    assert in_loki() == expected  # nothing Loki got is missing from the files
    pushed = sum(p.values for p in loki.pushes if p.status == 204)
    assert pushed == loki.count(), f"{pushed - loki.count()} entries pushed twice"
    # Counted the same in /health/loki and /metrics, and said once per dead worker.
    def recovered_in_metrics():
        text = requests.get(f"{server.url}/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("loki_write_recovered_entries_total{"))

    recovered = wait_until(lambda: (n := http_get(server.port, "/health/loki")[1]["entries_recovered"])
                           and n == recovered_in_metrics() and n, timeout=10, message="recovered entries counted")
    assert recovered > 0
    assert 0 < server.output().count("died holding") <= len(POINTS) * ROUNDS
    loki.down()
