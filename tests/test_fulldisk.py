"""A full disk: the log dir's file system fills up (a small tmpfs), and later has room again."""

from __future__ import annotations

import json
import os
from collections import defaultdict

import requests
from fakeloki import FakeLoki
from proxyproc import http_get, wait_until
from traffic import Conversation

from llmproxy.loki import LokiEntry, LokiExporter
from llmproxy.loki.spool import Spool
from llmproxy.settings import LokiSettings


def fill(directory) -> object:
    """Fill the file system of ``directory`` to the last byte; the filler file, to remove later."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                continue
    finally:
        os.close(fd)
    return filler


def turns(convo: Conversation, server, upstream: str, history_turns: range) -> None:
    """Run the conversation's turns ``history_turns`` (each resends the turns before it)."""
    session = requests.Session()
    history: list[dict] = []
    for turn in range(history_turns.stop):
        body = convo.body(history, turn)
        if turn in history_turns:
            resp = session.post(server.url + convo.path(upstream), data=body, headers=convo.headers())
            assert resp.status_code == 200, resp.text
        history = json.loads(body)["messages"] + [{"role": "assistant", "content": "Hello from the fake provider."}]


def requests_by_session(lines) -> dict[str, dict[int, str]]:
    """session → {seq: the request's first message text} of request lines."""
    found: dict[str, dict[int, str]] = defaultdict(dict)
    for line in lines:
        doc = json.loads(line)
        if doc["type"] == "request":
            body = json.loads(doc["body"])
            assert doc["seq"] not in found[doc["_meta"]["session"]], f"seq {doc['seq']} twice"
            found[doc["_meta"]["session"]][doc["seq"]] = body["messages"][-1]["content"]
    return found


def test_a_full_log_disk_fails_no_call_loses_nothing_and_logging_resumes_in_the_same_file(
        start_proxy, fake_provider, small_fs):
    log_dir = small_fs("6m")
    loki = FakeLoki().start()
    server = start_proxy({"LLM_PROXY_LOG_DIR": str(log_dir), "LLM_PROXY_LOKI_ENABLED": "true",
                          "LLM_PROXY_LOKI_URL": loki.url, "LLM_PROXY_LOKI_ENVIRONMENT": "test",
                          "LLM_PROXY_LOKI_BATCH_WAIT": "100ms"})
    convo = Conversation("anthropic-json", "full-disk-1", turns=8)
    turns(convo, server, fake_provider.upstream, range(0, 2))
    first_file, = log_dir.glob("*/*/*.jsonl")

    filler = fill(log_dir)
    turns(convo, server, fake_provider.upstream, range(2, 5))
    health = wait_until(lambda: (b := http_get(server.port, "/health")[1])["file_logging"] == "failing" and b,
                        timeout=10)
    assert "No space left on device" in health["file_logging_error"]
    data = first_file.read_bytes()
    assert data.endswith(b"\n") and all(json.loads(line) for line in data.split(b"\n")[:-1])

    os.unlink(filler)
    turns(convo, server, fake_provider.upstream, range(5, 8))
    assert http_get(server.port, "/health")[1]["file_logging"] == "ok"
    assert list(log_dir.glob("*/*/*.jsonl")) == [first_file]  # logging resumed in the same file

    # Every turn is in Loki; seqs are never given twice (files and Loki together). sessions.db
    # could not be written either: those calls went to Loki as sessions of their own, under the
    # client's session id, and the file's session picked up where it was.
    file_lines = first_file.read_bytes().decode().split("\n")[:-1]
    wait_until(lambda: set(file_lines) <= set(loki.lines()) and len(loki.lines()) >= len(file_lines) + 6,
               timeout=10, message="the turns of the full disk in Loki")
    in_loki = requests_by_session(loki.lines())
    main = json.loads(file_lines[0])["_meta"]["session"]
    turns_seen = sorted(text.split(":")[0] for seqs in in_loki.values() for text in seqs.values())
    assert turns_seen == sorted(f"full-disk-1 turn {i}" for i in range(8))
    assert sorted(in_loki[main]) == list(range(1, len(in_loki[main]) + 1))
    assert set(requests_by_session(file_lines)[main]) <= set(in_loki[main])
    assert {json.loads(line)["_meta"]["client_session_id"] for line in loki.lines()} == {"full-disk-1"}
    loki.down()


def test_a_full_spool_file_system_drops_the_batch_counted_and_leaves_no_partial_file(small_fs):
    spool_dir = small_fs("64k")
    filler = fill(spool_dir)
    settings = LokiSettings(enabled=True, url="http://127.0.0.1:9/", spool_dir=spool_dir, retry_max=0,
                            batch_wait=0.05, push_timeout=0.5)
    exporter = LokiExporter(settings, spool=Spool(spool_dir, settings.spool_max_bytes))
    line = b'{"type":"request","x":"' + b"y" * 20_000 + b'"}'
    for i in range(5):
        exporter.push(line, (("app", "t"),), 1_000_000 + i)
    wait_until(lambda: exporter.stats.entries_dropped == 5, timeout=10, message="the batch dropped")
    exporter.close(timeout=1)
    assert sorted(os.listdir(spool_dir)) == ["filler"]
    os.unlink(filler)
    assert Spool(spool_dir, settings.spool_max_bytes).write([LokiEntry(1, line, (("app", "t"),))]) == 0
