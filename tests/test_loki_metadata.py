"""Loki structured metadata: session_id, request_id, client_session_id, model and status ride
along each pushed value (never as labels), and a Loki that does not take them is handled.

What Loki stores and answers is asked of a real Grafana Loki (one that takes structured
metadata, shared by the run, and one with ``allow_structured_metadata: false``); what goes on
the wire, push by push, is watched on fakeloki."""

import io
import json
import uuid
from dataclasses import replace

import pytest
import requests
from fakeloki import FakeLoki
from proxyproc import http_get, jsonl_lines, logged_lines, wait_until
from realloki import RealLoki, own_machine

from llmproxy.loki.backfill import main as backfill_main
from llmproxy.loki.batch import LokiEntry
from llmproxy.loki.exporter import LokiExporter
from llmproxy.loki.split import join_parts, split_entry
from llmproxy.loki.spool import Spool, decode_entries, encode_entries
from llmproxy.settings import LokiSettings, SettingsError, load_settings

LABEL_NAMES = {"app", "provider", "environment", "machine", "log_type", "service_name"}
LOKIS_OWN = {"detected_level"}  # structured metadata Loki adds by itself (discover_log_levels)
API_KEY = "sk-ant-api03-" + "m" * 80 + "wxyz"


@pytest.fixture
def loki():
    fake = FakeLoki().start()
    yield fake
    fake.down()


@pytest.fixture
def old_loki():
    """fakeloki as a Loki with ``allow_structured_metadata: false``."""
    fake = FakeLoki(structured_metadata=False).start()
    yield fake
    fake.down()


@pytest.fixture(scope="module")
def old_real_loki(real_loki, tmp_path_factory):
    """A real Loki with ``allow_structured_metadata: false`` (needs what ``real_loki`` needs)."""
    loki = RealLoki(tmp_path_factory.mktemp("old-loki"), allow_structured_metadata=False).start()
    yield loki
    loki.stop()


def loki_env(loki, **extra):
    return {"LLM_PROXY_LOKI_ENABLED": "true", "LLM_PROXY_LOKI_URL": loki.url, "LLM_PROXY_LOKI_BATCH_WAIT": "100ms",
            "LLM_PROXY_LOKI_ENVIRONMENT": "test", "LLM_PROXY_MACHINE_ID": "tester@ci", **extra}


def metadata_of(entry) -> dict:
    """Our structured metadata of a real Loki's entry (without what Loki adds itself)."""
    return {k: v for k, v in entry[3].items() if k not in LOKIS_OWN}


def call(server, fake, session, stream=False, status=None):
    headers = {"x-api-key": API_KEY, "X-Claude-Code-Session-Id": session}
    if status:
        headers["x-fake-status"] = str(status)
    resp = requests.post(f"{server.url}/anthropic/{fake.upstream}/v1/messages", headers=headers,
                         json={"model": "claude-test", "stream": stream, "max_tokens": 5,
                               "messages": [{"role": "user", "content": "hi"}]})
    resp.content
    return resp


def test_every_value_carries_its_ids_model_and_status(start_proxy, fake_provider, real_loki):
    machine = own_machine("meta")
    server = start_proxy(loki_env(real_loki, LLM_PROXY_MACHINE_ID=machine))
    marker = f"cc-{uuid.uuid4()}"
    call(server, fake_provider, marker)
    call(server, fake_provider, marker, stream=True)
    call(server, fake_provider, marker, status=429)
    lines = logged_lines(server.log_dir, 7)
    docs = [json.loads(line) for line in lines]
    ours = f'{{app="llm-proxy", machine="{machine}"}}'
    real_loki.wait_for_count(ours, len(docs), timeout=10)
    session = docs[0]["_meta"]["session"]
    # Loki answers the stream's labels and each entry's structured metadata apart.
    by_line = {entry[2]: (entry[0], metadata_of(entry)) for entry in real_loki.entries(ours)}
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
    assert len(real_loki.lines(f'{{app="llm-proxy"}} | session_id="{session}"')) == 7
    errors = real_loki.query_range(f'{{app="llm-proxy", machine="{machine}", log_type="response"}} | status=~"4.."')
    assert [s["stream"]["model"] for s in errors["data"]["result"]] == ["claude-test"]
    assert real_loki.metric(f'sum by (model, status) (count_over_time({ours} | status!="" [1h]))') == [
        ({"model": "claude-test", "status": "200"}, 2.0), ({"model": "claude-test", "status": "429"}, 1.0)]
    assert http_get(server.port, "/health/loki")[1]["structured_metadata"] == "on"


def test_a_loki_without_structured_metadata_gets_everything_without_it(start_proxy, fake_provider, old_real_loki):
    machine = own_machine("meta")
    server = start_proxy(loki_env(old_real_loki, LLM_PROXY_WORKERS="1", LLM_PROXY_MACHINE_ID=machine))
    ours = f'{{app="llm-proxy", machine="{machine}"}}'
    marker = f"cc-{uuid.uuid4()}"
    call(server, fake_provider, marker)
    old_real_loki.wait_for_count(ours, 3, timeout=10)
    for i in range(3):  # later batches go without metadata from the start
        call(server, fake_provider, marker, stream=bool(i % 2))
        old_real_loki.wait_for_count(ours, 3 + 2 * (i + 1), timeout=10)
    lines = [line for p in server.log_dir.glob("*/*/*.jsonl") for line in jsonl_lines(p)]
    entries = old_real_loki.entries(ours)
    assert sorted(line for _, _, line, _ in entries) == sorted(lines)
    assert all(metadata_of(e) == {} for e in entries)

    health = wait_until(lambda: (lambda h: h if h["entries_sent"] == 9 else None)(
        http_get(server.port, "/health/loki")[1]), timeout=5, message="stats published")
    assert health["structured_metadata"] == "refused" and health["entries_failed"] == 0
    # Loki refused the first push only: every later one went without metadata.
    # (a push per batch: the first was refused and resent, then at least one for each later call)
    statuses = wait_until(lambda: (found := push_statuses(server)) and found.get("204", 0) >= 4 and found,
                          timeout=5, message="pushes counted")
    assert set(statuses) == {"400", "204"} and statuses["400"] == 1, statuses
    server.stop()
    assert server.output().count("Loki does not accept structured metadata") == 1


def push_statuses(server) -> dict[str, int]:
    """Pushes by Loki's answer, from the proxy's /metrics (``loki_write_request_duration_seconds``)."""
    text = requests.get(f"{server.url}/metrics", timeout=5).text
    found = {}
    for line in text.splitlines():
        if line.startswith("loki_write_request_duration_seconds_count{"):
            status = line.split('status_code="', 1)[1].split('"', 1)[0]
            found[status] = found.get(status, 0) + int(float(line.rsplit(" ", 1)[1]))
    return found


def test_false_sends_no_metadata(start_proxy, fake_provider, real_loki):
    machine = own_machine("meta")
    server = start_proxy(loki_env(real_loki, LLM_PROXY_LOKI_STRUCTURED_METADATA="false", LLM_PROXY_MACHINE_ID=machine))
    call(server, fake_provider, "no-meta")
    ours = f'{{app="llm-proxy", machine="{machine}"}}'
    real_loki.wait_for_count(ours, 3, timeout=10)
    assert [metadata_of(e) for e in real_loki.entries(ours)] == [{}] * 3
    assert http_get(server.port, "/health/loki")[1]["structured_metadata"] == "off"


def sent(exporter_settings: LokiSettings, entries):
    exporter = LokiExporter(replace(exporter_settings, spool_dir=None))
    try:
        return exporter, exporter.send_entries(entries)
    finally:
        exporter.client.close()


def entry(i: int, metadata=(("session_id", "S"),), machine: str = "m") -> LokiEntry:
    return LokiEntry(1_700_000_000_000_000_000 + i, b'{"type":"request","seq":%d}' % i,
                     (("app", "llm-proxy"), ("machine", machine), ("log_type", "request")), metadata)


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


def test_auto_on_a_real_loki_without_metadata_stores_a_mixed_push_whole(old_real_loki):
    import time
    machine, now = own_machine("meta"), time.time_ns()
    mixed = [replace(entry(i, metadata=() if i % 2 else (("session_id", "S"),), machine=machine), ts_ns=now + i)
             for i in range(6)]
    exporter, outcome = sent(loki_settings(old_real_loki, "auto"), mixed)
    assert (outcome.sent, outcome.failed, outcome.undelivered) == (6, 0, [])
    assert [line for _, line in old_real_loki.lines(f'{{machine="{machine}"}}')] == [e.line.decode() for e in mixed]
    assert exporter.stats.structured_metadata == "refused" and exporter.stats.entries_sent == 6


def test_true_insists_and_reports_the_refusal(old_real_loki):
    import time
    machine, now = own_machine("meta"), time.time_ns()
    exporter, outcome = sent(loki_settings(old_real_loki, "true"),
                             [replace(entry(i, machine=machine), ts_ns=now + i) for i in range(3)])
    assert (outcome.sent, outcome.failed) == (0, 3)
    assert "disallowed" in exporter.stats.last_error and exporter.stats.structured_metadata == "on"
    assert old_real_loki.lines(f'{{machine="{machine}"}}') == []


def test_the_spool_keeps_metadata_and_reads_old_files():
    entries = [entry(1), entry(2, metadata=())]
    assert decode_entries(encode_entries(entries)) == entries
    old = json.dumps([5, [["app", "a"]], "{}"]).encode() + b"\n"
    assert decode_entries(old) == [LokiEntry(5, b"{}", (("app", "a"),))]


def test_spooled_entries_reach_loki_with_metadata(tmp_path, real_loki):
    import time
    spool = Spool(tmp_path, 10**9)
    machine, now = own_machine("meta"), time.time_ns()
    spool.write([replace(entry(i, machine=machine), ts_ns=now + i) for i in range(3)])
    exporter = LokiExporter(replace(loki_settings(real_loki, "auto"), spool_dir=tmp_path, batch_wait=0.05))
    exporter.start()
    try:
        real_loki.wait_for_count(f'{{machine="{machine}"}}', 3, timeout=10)
    finally:
        exporter.close(5)
    assert [metadata_of(e) for e in real_loki.entries(f'{{machine="{machine}"}}')] == [{"session_id": "S"}] * 3


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


def test_backfill_gives_the_metadata_the_exporter_gave(start_proxy, fake_provider, real_loki):
    machine = own_machine("meta")
    server = start_proxy(loki_env(real_loki, LLM_PROXY_MACHINE_ID=machine))
    marker = f"cc-{uuid.uuid4()}"
    for stream, status in ((False, None), (True, None), (False, 500)):
        call(server, fake_provider, marker, stream=stream, status=status)
    live_streams = f'{{machine="{machine}", environment="test"}}'
    real_loki.wait_for_count(live_streams, 7, timeout=10)
    live = {e[1:3]: metadata_of(e) for e in real_loki.entries(live_streams)}
    # The backfill pushes the files into streams of an environment of their own.
    out = io.StringIO()
    code = backfill_main(["--log-dir", str(server.log_dir)], out=out, environ={
        "LLM_PROXY_LOKI_URL": real_loki.url, "LLM_PROXY_LOKI_ENVIRONMENT": "again",
        "LLM_PROXY_ENV_FILE": "/nonexistent", "LLM_PROXY_LOG_DIR": str(server.log_dir)})
    assert code == 0 and "in Loki already 0, pushed 7" in out.getvalue(), out.getvalue()
    again = real_loki.entries(f'{{machine="{machine}", environment="again"}}')
    assert {e[1:3]: metadata_of(e) for e in again} == live


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
