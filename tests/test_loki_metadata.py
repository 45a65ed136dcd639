"""Loki structured metadata: session_id, request_id, client_session_id, model and status ride
along each pushed value (never as labels), and a Loki that does not take them is handled."""

import io
import json
import uuid
from dataclasses import replace

import pytest
import requests
from fakeloki import FakeLoki
from proxyproc import http_get, jsonl_lines, logged_lines, wait_until

from llmproxy.loki.backfill import main as backfill_main
from llmproxy.loki.batch import LokiEntry
from llmproxy.loki.exporter import LokiExporter
from llmproxy.loki.split import join_parts, split_entry
from llmproxy.loki.spool import Spool, decode_entries, encode_entries
from llmproxy.settings import LokiSettings, SettingsError, load_settings

LABEL_NAMES = {"app", "provider", "environment", "machine", "log_type", "service_name"}
API_KEY = "sk-ant-api03-" + "m" * 80 + "wxyz"


@pytest.fixture
def loki():
    fake = FakeLoki().start()
    yield fake
    fake.down()


@pytest.fixture
def old_loki():
    """A Loki with ``allow_structured_metadata: false``."""
    fake = FakeLoki(structured_metadata=False).start()
    yield fake
    fake.down()


def loki_env(loki, **extra):
    return {"LLM_PROXY_LOKI_ENABLED": "true", "LLM_PROXY_LOKI_URL": loki.url, "LLM_PROXY_LOKI_BATCH_WAIT": "100ms",
            "LLM_PROXY_LOKI_ENVIRONMENT": "test", "LLM_PROXY_MACHINE_ID": "tester@ci", **extra}


def call(server, fake, session, stream=False, status=None):
    headers = {"x-api-key": API_KEY, "X-Claude-Code-Session-Id": session}
    if status:
        headers["x-fake-status"] = str(status)
    resp = requests.post(f"{server.url}/anthropic/{fake.upstream}/v1/messages", headers=headers,
                         json={"model": "claude-test", "stream": stream, "max_tokens": 5,
                               "messages": [{"role": "user", "content": "hi"}]})
    resp.content
    return resp


def test_every_value_carries_its_ids_model_and_status(start_proxy, fake_provider, loki):
    server = start_proxy(loki_env(loki))
    marker = f"cc-{uuid.uuid4()}"
    call(server, fake_provider, marker)
    call(server, fake_provider, marker, stream=True)
    call(server, fake_provider, marker, status=429)
    lines = logged_lines(server.log_dir, 7)
    docs = [json.loads(line) for line in lines]
    assert loki.wait_for(len(docs), timeout=10) == len(docs)
    session = docs[0]["_meta"]["session"]
    by_line = {line: (labels, metadata) for labels, _, line, metadata in loki.entries_with_metadata()}
    for doc, line in zip(docs, lines):
        labels, metadata = by_line[line]
        assert set(labels) == LABEL_NAMES  # no new labels
        expected = {"session_id": session, "client_session_id": marker}
        if doc["type"] != "session_start":
            expected["request_id"] = doc["_meta"]["request_id"]
        if doc["type"] in ("request", "response"):
            expected["model"] = "claude-test"  # a 429 has no model of its own: the request's
        if doc["type"] == "response":
            expected["status"] = str(doc["status"])
        assert metadata == expected, doc["type"]
    assert sorted(m["status"] for _, m in by_line.values() if "status" in m) == ["200", "200", "429"]

    # One session without parsing a line; counting by model needs no json either.
    found = requests.get(f"{loki.url}/loki/api/v1/query_range", params={
        "query": f'{{app="llm-proxy"}} | session_id="{session}"', "limit": 100}).json()
    assert sum(len(s["values"]) for s in found["data"]["result"]) == 7
    errors = requests.get(f"{loki.url}/loki/api/v1/query_range", params={
        "query": '{app="llm-proxy", log_type="response"} | status=~"4.."', "limit": 100}).json()
    assert [s["stream"]["model"] for s in errors["data"]["result"]] == ["claude-test"]
    assert http_get(server.port, "/health/loki")[1]["structured_metadata"] == "on"
    assert loki.pushes and all(p.with_metadata == p.values for p in loki.pushes)


def test_a_loki_without_structured_metadata_gets_everything_without_it(start_proxy, fake_provider, old_loki):
    server = start_proxy(loki_env(old_loki, LLM_PROXY_WORKERS="1"))
    marker = f"cc-{uuid.uuid4()}"
    call(server, fake_provider, marker)
    assert old_loki.wait_for(3, timeout=10) == 3
    for i in range(3):  # later batches go without metadata from the start
        call(server, fake_provider, marker, stream=bool(i % 2))
        assert old_loki.wait_for(3 + 2 * (i + 1), timeout=10) == 3 + 2 * (i + 1)
    lines = [l for p in server.log_dir.glob("*/*/*.jsonl") for l in jsonl_lines(p)]
    assert sorted(old_loki.lines()) == sorted(lines)
    first, *rest = old_loki.pushes
    assert first.status == 400 and first.with_metadata == first.values
    assert all(p.status == 204 and p.with_metadata == 0 for p in rest)
    assert "includes structured metadata, but this feature is disallowed" in old_loki.rejected[0]

    health = wait_until(lambda: (lambda h: h if h["entries_sent"] == 9 else None)(
        http_get(server.port, "/health/loki")[1]), timeout=5, message="stats published")
    assert health["structured_metadata"] == "refused" and health["entries_failed"] == 0
    server.stop()
    assert server.output().count("Loki does not accept structured metadata") == 1


def test_false_sends_no_metadata(start_proxy, fake_provider, loki):
    server = start_proxy(loki_env(loki, LLM_PROXY_LOKI_STRUCTURED_METADATA="false"))
    call(server, fake_provider, "no-meta")
    assert loki.wait_for(3, timeout=10) == 3
    assert loki.pushes and all(p.with_metadata == 0 for p in loki.pushes)
    assert http_get(server.port, "/health/loki")[1]["structured_metadata"] == "off"


def sent(exporter_settings: LokiSettings, entries):
    exporter = LokiExporter(replace(exporter_settings, spool_dir=None))
    try:
        return exporter, exporter.send_entries(entries)
    finally:
        exporter.client.close()


def entry(i: int, metadata=(("session_id", "S"),)) -> LokiEntry:
    return LokiEntry(1_700_000_000_000_000_000 + i, b'{"type":"request","seq":%d}' % i,
                     (("app", "llm-proxy"), ("log_type", "request")), metadata)


def loki_settings(loki, mode):
    return LokiSettings(enabled=True, url=loki.url, retry_max=0, structured_metadata=mode)


def test_auto_resends_exactly_the_values_that_carried_metadata(old_loki):
    import time
    now = time.time_ns()
    mixed = [replace(entry(i, metadata=() if i % 2 else (("session_id", "S"),)), ts_ns=now + i) for i in range(6)]
    exporter, outcome = sent(loki_settings(old_loki, "auto"), mixed)
    assert (outcome.sent, outcome.failed, outcome.undelivered) == (6, 0, [])
    assert [p.status for p in old_loki.pushes] == [400, 204]
    assert (old_loki.pushes[1].values, old_loki.pushes[1].with_metadata) == (3, 0)
    assert sorted(old_loki.lines()) == sorted(e.line.decode() for e in mixed)
    assert exporter.stats.structured_metadata == "refused" and exporter.stats.entries_sent == 6


def test_true_insists_and_reports_the_refusal(old_loki):
    import time
    now = time.time_ns()
    exporter, outcome = sent(loki_settings(old_loki, "true"), [replace(entry(i), ts_ns=now + i) for i in range(3)])
    assert (outcome.sent, outcome.failed) == (0, 3)
    assert "disallowed" in exporter.stats.last_error and exporter.stats.structured_metadata == "on"
    assert len(old_loki.pushes) == 1


def test_the_spool_keeps_metadata_and_reads_old_files():
    entries = [entry(1), entry(2, metadata=())]
    assert decode_entries(encode_entries(entries)) == entries
    old = json.dumps([5, [["app", "a"]], "{}"]).encode() + b"\n"
    assert decode_entries(old) == [LokiEntry(5, b"{}", (("app", "a"),))]


def test_spooled_entries_reach_loki_with_metadata(tmp_path, loki):
    import time
    spool = Spool(tmp_path, 10**9)
    now = time.time_ns()
    spool.write([replace(entry(i), ts_ns=now + i) for i in range(3)])
    exporter = LokiExporter(replace(loki_settings(loki, "auto"), spool_dir=tmp_path, batch_wait=0.05))
    exporter.start()
    try:
        assert loki.wait_for(3, timeout=10) == 3
    finally:
        exporter.close(5)
    assert [m for *_, m in loki.entries_with_metadata()] == [{"session_id": "S"}] * 3


def test_split_parts_carry_the_ids_and_the_first_part_the_summary():
    doc = {"type": "response", "seq": 3, "status": 200, "model": "claude-x", "usage": {"output_tokens": 9},
           "headers": {"content-type": "text/event-stream"}, "timing": {"total_ms": 5.0},
           "chunks": [{"raw": "x" * 1000}] * 700, "_meta": {"session": "S", "request_id": "R"}}
    line = json.dumps(doc, separators=(",", ":")).encode()
    metadata = (("session_id", "S"), ("request_id", "R"), ("client_session_id", "C"), ("model", "claude-x"),
                ("status", "200"))
    parts = split_entry(LokiEntry(1, line, (("app", "x"),), metadata), 262144)
    assert len(parts) >= 3 and all(len(p.line) <= 262144 for p in parts)
    first, *rest = [json.loads(p.line) for p in parts]
    assert {k: first[k] for k in ("status", "model", "usage", "timing", "headers", "seq")} == {
        k: doc[k] for k in ("status", "model", "usage", "timing", "headers", "seq")}
    assert "chunks" not in first and all("status" not in d and "model" not in d for d in rest)
    assert parts[0].metadata == metadata
    assert all(p.metadata == metadata[:3] for p in parts[1:])
    assert join_parts([p.line.decode() for p in parts]).encode() == line


def test_backfill_gives_the_metadata_the_exporter_gave(start_proxy, fake_provider, loki):
    server = start_proxy(loki_env(loki))
    marker = f"cc-{uuid.uuid4()}"
    for stream, status in ((False, None), (True, None), (False, 500)):
        call(server, fake_provider, marker, stream=stream, status=status)
    assert loki.wait_for(7, timeout=10) == 7
    live = {(ts, line): metadata for _, ts, line, metadata in loki.entries_with_metadata()}
    again = FakeLoki().start()
    try:
        out = io.StringIO()
        code = backfill_main(["--log-dir", str(server.log_dir)], out=out, environ={
            "LLM_PROXY_LOKI_URL": again.url, "LLM_PROXY_LOKI_ENVIRONMENT": "test",
            "LLM_PROXY_ENV_FILE": "/nonexistent", "LLM_PROXY_LOG_DIR": str(server.log_dir)})
        assert code == 0, out.getvalue()
        assert {(ts, line): metadata for _, ts, line, metadata in again.entries_with_metadata()} == live
    finally:
        again.down()


def test_a_bad_mode_stops_start_up():
    with pytest.raises(SettingsError, match="LLM_PROXY_LOKI_STRUCTURED_METADATA='sometimes'.*auto, true, false"):
        load_settings({"LLM_PROXY_LOKI_STRUCTURED_METADATA": "sometimes", "LLM_PROXY_ENV_FILE": "/none"},
                      create_dirs=False)
    assert load_settings({"LLM_PROXY_ENV_FILE": "/none"}, create_dirs=False).loki.structured_metadata == "auto"


@pytest.mark.parametrize("line", [
    json.dumps({"type": "request", "headers": {"x": "h" * 300_000}, "body": "b" * 300_000, "_meta": {"session": "S"}}),
    "x" * 300_000,  # not JSON at all: parts with nothing but the chunk
])
def test_a_line_whose_small_fields_do_not_fit_goes_in_plain_parts(line):
    parts = split_entry(LokiEntry(1, line.encode(), (("app", "x"),), (("session_id", "S"),)), 262144)
    docs = [json.loads(p.line) for p in parts]
    assert all(len(p.line) <= 262144 for p in parts) and "headers" not in docs[0]
    assert join_parts([p.line.decode() for p in parts]) == line


def test_a_worker_starting_after_another_found_loki_refusing_sends_none(tmp_path, loki):
    import time

    from llmproxy.loki.stats import StatsBoard
    board = StatsBoard(tmp_path / "board")
    board.publish(1, {"structured_metadata": "refused"})  # what a sibling worker published
    exporter = LokiExporter(replace(loki_settings(loki, "auto"), batch_wait=0.05), board=board)
    now = time.time_ns()
    for i in range(3):
        exporter.push(entry(i).line, entry(i).labels, now + i, (("session_id", "S"),))
    try:
        assert loki.wait_for(3, timeout=10) == 3
    finally:
        exporter.close(5)
    assert loki.pushes and all(p.with_metadata == 0 for p in loki.pushes)
    assert exporter.stats.structured_metadata == "refused"
