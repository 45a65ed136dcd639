"""No log loss: the disk spool, lines over Loki's limit, and the backfill (real gunicorn; fakeloki
where Loki must go down on cue, a real Grafana Loki where the point is what Loki stores)."""

import concurrent.futures
import io
import json
import os
import signal
import time
import uuid

import pytest
import requests
from fakeloki import FakeLoki
from proxyproc import http_get, jsonl_lines, logged_lines, wait_until
from realloki import loki_entries, own_machine

from llmproxy.loki.backfill import main as backfill_main
from llmproxy.loki.batch import LokiEntry
from llmproxy.loki.client import LokiClient
from llmproxy.loki.session import join_split
from llmproxy.loki.split import join_parts, split_entry
from llmproxy.loki.spool import Spool
from llmproxy.settings import LokiSettings

FAST = {"LLM_PROXY_LOKI_BATCH_WAIT": "200ms", "LLM_PROXY_LOKI_RETRY_MAX": "1",
        "LLM_PROXY_LOKI_BACKOFF_MIN": "50ms", "LLM_PROXY_LOKI_BACKOFF_MAX": "500ms",
        "LLM_PROXY_LOKI_SHUTDOWN_TIMEOUT": "5s", "LLM_PROXY_LOKI_ENVIRONMENT": "test"}


def loki_env(loki, **extra):
    return {"LLM_PROXY_LOKI_ENABLED": "true", "LLM_PROXY_LOKI_URL": loki.url, **FAST, **extra}


def call(server, fake, session, body_size=0):
    resp = requests.post(f"{server.url}/anthropic/{fake.upstream}/v1/messages",
                         json={"model": "m", "messages": [{"role": "user", "content": "x" * body_size}]},
                         headers={"X-Claude-Code-Session-Id": session})
    resp.content
    assert resp.status_code == 200


def file_lines(log_dir):
    return [line for path in log_dir.glob("*/*/*.jsonl") for line in jsonl_lines(path)]


def loki_health(server):
    return http_get(server.port, "/health/loki")[1]


def spooled(server, expected):
    body = loki_health(server)
    return body if body["spooled_entries"] == expected and body["queue_depth"] == 0 else None


def test_an_outage_longer_than_retries_and_the_window_loses_nothing_and_keeps_order(start_proxy, fake_provider):
    # Loki's "too far behind" window made short: replay must go oldest first across workers.
    loki = FakeLoki(out_of_order_window=5.0).start()
    server = start_proxy(loki_env(loki, LLM_PROXY_THREADS="16"))
    call(server, fake_provider, "warm-up")
    assert loki.wait_for(3, timeout=10) == 3
    # Loki counts a push before it answers: going down before the proxy has read the 204 would
    # make it a failed push, spooled and sent again.
    wait_until(lambda: loki_health(server)["entries_sent"] == 3, timeout=10, message="the warm-up push answered")

    loki.down()
    sessions = [f"outage-{i}" for i in range(10)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: call(server, fake_provider, sessions[i % 10]), range(2500)))
    expected = 3 + 10 + 2 * 2500  # warm-up, one session_start per session, request + response
    body = wait_until(lambda: spooled(server, expected - 3), timeout=30, message="all spooled")
    assert body["status"] == "failing"

    loki.up()
    assert loki.wait_for(expected, timeout=60) == expected
    assert loki.rejected == []  # nothing "too far behind", nothing too old
    lines = loki.lines()
    assert len(lines) == len(set(lines)) == expected
    assert sorted(lines) == sorted(file_lines(server.log_dir))
    wait_until(lambda: loki_health(server)["spooled_entries"] == 0, timeout=10)
    loki.down()


def test_a_spool_left_by_a_killed_worker_is_replayed(start_proxy, fake_provider):
    loki = FakeLoki().start()
    server = start_proxy(loki_env(loki))
    loki.down()
    for i in range(20):
        call(server, fake_provider, f"kill-{i % 3}")
    expected = 3 + 40
    wait_until(lambda: spooled(server, expected), timeout=30, message="all spooled")
    victim = server.worker_pids()[0]
    # As if the victim had died in the middle of replaying: it holds a claimed file.
    spool = Spool(server.log_dir / ".loki-spool", 1 << 30)

    def claim_for_victim():
        # The worker that replays may hold the file this instant (claimed, push failed, given
        # back): name the claim from the file's base name, and try again if it moved under us.
        first = spool.files()[0]
        try:
            os.rename(first.path, first.path.with_name(f"{first.name.split('.claimed-')[0]}.claimed-{victim}"))
        except FileNotFoundError:
            return False
        return True

    wait_until(claim_for_victim, timeout=10, message="a file claimed for the victim")
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in server.worker_pids() and len(server.worker_pids()) == 2, timeout=30)

    loki.up()
    assert loki.wait_for(expected, timeout=30) == expected
    assert sorted(loki.lines()) == sorted(file_lines(server.log_dir))
    wait_until(lambda: spool.files() == [], timeout=10, message="spool drained")
    loki.down()


def test_sigterm_with_loki_down_spools_and_the_next_start_delivers(start_proxy, fake_provider, tmp_path):
    loki = FakeLoki().start()
    log_dir = tmp_path / "shared-logs"
    server = start_proxy(loki_env(loki, LLM_PROXY_LOG_DIR=str(log_dir), LLM_PROXY_LOKI_BATCH_WAIT="1m"))
    loki.down()
    for i in range(6):
        call(server, fake_provider, "sigterm-session")
    assert server.stop(signal.SIGTERM, timeout=60) == 0
    assert "spooled on shutdown" in server.output()
    assert sum(f.entries for f in Spool(log_dir / ".loki-spool", 1 << 30).files()) == 13

    loki.up()
    start_proxy(loki_env(loki, LLM_PROXY_LOG_DIR=str(log_dir)))
    assert loki.wait_for(13, timeout=30) == 13
    assert sorted(loki.lines()) == sorted(file_lines(log_dir))
    loki.down()


def test_a_2mb_request_body_arrives_in_parts_that_reassemble_byte_exact(start_proxy, fake_provider, real_loki):
    machine = own_machine("parts")
    server = start_proxy(loki_env(real_loki, LLM_PROXY_MACHINE_ID=machine))
    session = f"big-{uuid.uuid4()}"
    call(server, fake_provider, session, body_size=2 * 1024 * 1024)
    lines = logged_lines(server.log_dir, 3)
    request_line = next(line for line in lines if json.loads(line)["type"] == "request")
    ours = json.loads(request_line)["_meta"]["session"]
    # Loki takes every part (none over its max_line_size, the stream's rate within its limits).
    real_loki.wait_for_count(f'{{app="llm-proxy", machine="{machine}"}}', loki_entries(lines), timeout=15)
    query = (f'{{app="llm-proxy", machine="{machine}"}} |= "{ours}" | json session="_meta.session", type="type" '
             f'| session="{ours}" | type="request"')
    # 2 MB of parts is more than one answer of Loki's may hold: paged by size, as loki-session does.
    now = time.time_ns()
    found = LokiClient(LokiSettings(url=real_loki.url)).query_all(query, now - 3600 * 10**9, now + 60 * 10**9)
    assert len(found) >= 8 and len(found) == json.loads(found[0][1])["parts"]
    assert all(len(line.encode()) <= 262144 for _, line in found)
    assert join_parts([line for _, line in found]).encode() == request_line.encode()
    first_ts = found[0][0]
    assert [ts - first_ts for ts, _ in found] == list(range(len(found)))
    assert loki_health(server)["entries_failed"] == 0


def test_split_parts_are_json_loki_accepts_and_join_back():
    line = json.dumps({"type": "request", "body": "\u00e9\"\\" * 200_000, "_meta": {"session": "S", "ts": "t"}},
                      ensure_ascii=False).encode()
    parts = split_entry(LokiEntry(1000, line, (("app", "x"),)), 262144)
    docs = [json.loads(p.line) for p in parts]
    assert all(len(p.line) <= 262144 for p in parts)
    assert [d["part"] for d in docs] == list(range(1, len(parts) + 1))
    assert {d["parts"] for d in docs} == {len(parts)} and docs[0]["_meta"]["session"] == "S"
    assert join_parts([p.line.decode() for p in reversed(parts)]).encode() == line
    assert split_entry(LokiEntry(1, b'{"short":1}', ()), 262144)[0].line == b'{"short":1}'


def test_the_spool_bound_drops_the_oldest_files_first(tmp_path):
    spool = Spool(tmp_path, max_bytes=3000)  # room for three files of ~930 bytes
    dropped = [spool.write([LokiEntry(1000 + i, b"x" * 900, (("app", "a"),))]) for i in range(5)]
    assert dropped == [0, 0, 0, 1, 1]
    entries, size = spool.usage()
    assert size <= 3000 and entries == 3
    assert [f.oldest_ns for f in spool.files()] == [1002, 1003, 1004]


def test_a_dead_workers_partial_spool_files_go_and_a_live_ones_stay(tmp_path):
    """The recovery asks the spool for a dead worker's entries and removes the partial files it
    left: those it was writing, never one a live worker is writing (``keep`` of a file the dead
    one had spooled: named after the file, claimed by the live one)."""
    dead, live = 4_000_001, os.getpid()
    spool = Spool(tmp_path, max_bytes=10**6)
    spool.write([LokiEntry(1000, b"x", (("app", "a"),))])
    (tmp_path / f".tmp-00000000000000000001-1-{dead}-0.jsonl").write_bytes(b"[")  # its own write
    (tmp_path / f".tmp-00000000000000000002-1-{live}-0.jsonl.claimed-{dead}").write_bytes(b"[")  # its keep
    live_keep = tmp_path / f".tmp-00000000000000000003-1-{dead}-1.jsonl.claimed-{live}"
    live_keep.write_bytes(b"[")
    assert spool.entries_of(dead) == set()
    assert sorted(p.name for p in tmp_path.glob(".tmp-*")) == [live_keep.name]


def test_a_spool_file_loki_takes_in_part_keeps_only_the_rest_so_nothing_is_pushed_twice(tmp_path):
    from llmproxy.loki import LokiExporter
    from llmproxy.settings import LokiSettings

    loki = FakeLoki().start()
    spool = Spool(tmp_path / "spool", 1 << 30)
    now = __import__("time").time_ns()
    entries = [LokiEntry(now + i, b'{"n":%d}' % i, (("app", "t"),)) for i in range(8)]
    spool.write(entries)
    # After a restart Loki sheds load: the whole file 429, its first half taken, then 429 again.
    loki.fail_next(1, 429)
    loki.fail_next(1, 204)
    loki.set_mode("ratelimit")
    exporter = LokiExporter(LokiSettings(enabled=True, url=loki.url, batch_wait=0.05, backoff_min=0.05,
                                         backoff_max=0.2), spool=spool)
    exporter.start()
    wait_until(lambda: loki.count() == 4 and [f.entries for f in spool.files()] == [4], timeout=10,
               message="the first half taken, the rest back in the spool")
    loki.set_mode("ok")
    wait_until(lambda: loki.count() == 8 and not spool.files(), timeout=10, message="the rest taken")
    exporter.close(timeout=2)
    assert sum(p.values for p in loki.pushes if p.status == 204) == 8  # each entry pushed once
    loki.down()


def test_a_spool_file_a_worker_died_replaying_is_pushed_without_what_loki_holds(tmp_path):
    import subprocess
    import time

    from llmproxy.loki import LokiExporter
    from llmproxy.loki.batch import batch_of
    from llmproxy.loki.client import LokiClient
    from llmproxy.settings import LokiSettings

    loki = FakeLoki().start()
    settings = LokiSettings(enabled=True, url=loki.url, batch_wait=0.05)
    spool = Spool(tmp_path / "spool", 1 << 30)
    now = time.time_ns()
    entries = [LokiEntry(now + i, b'{"n":%d}' % i, (("app", "t"), ("log_type", "request" if i % 2 else "response")))
               for i in range(8)]
    spool.write(entries)
    dead = subprocess.Popen(["true"])
    dead.wait()
    f, = spool.files()
    os.rename(f.path, f.path.with_name(f"{f.name}.claimed-{dead.pid}"))
    # The dead worker had pushed half of it when it was killed.
    assert LokiClient(settings).push(batch_of(entries[:4]).encode()).ok
    exporter = LokiExporter(settings, spool=spool)
    exporter.start()
    wait_until(lambda: loki.count() == 8 and not spool.files(), timeout=10, message="the rest pushed")
    exporter.close(timeout=2)
    assert sum(p.values for p in loki.pushes if p.status == 204) == 8  # the first half not again
    loki.down()


def run_backfill(loki, log_dir, *args):
    out = io.StringIO()
    code = backfill_main(["--log-dir", str(log_dir), *args], out=out,
                         environ={"LLM_PROXY_LOKI_URL": loki.url, "LLM_PROXY_LOKI_ENVIRONMENT": "test",
                                  "LLM_PROXY_ENV_FILE": "/nonexistent", "LLM_PROXY_LOG_DIR": str(log_dir)})
    return code, out.getvalue()


def test_backfill_of_a_day_twice_leaves_no_duplicates(start_proxy, fake_provider, real_loki):
    machine = own_machine("backfill")
    server = start_proxy({"LLM_PROXY_MACHINE_ID": machine})  # Loki disabled: the files are all there is
    for i in range(5):
        call(server, fake_provider, f"bf-{i % 2}", body_size=300_000 if i == 0 else 10)
    lines = logged_lines(server.log_dir, 12)  # 2 session starts, 5 requests, 5 responses: all written
    ours = f'{{app="llm-proxy", machine="{machine}"}}'
    day = next(server.log_dir.glob("*/????-??-??")).name
    code, out = run_backfill(real_loki, server.log_dir, "--since", day, "--until", day)
    assert code == 0, out
    stored = loki_entries(lines)
    assert stored > len(lines)  # the 300 KB request went in parts
    assert real_loki.wait_for_count(ours, stored, timeout=10) == stored
    assert "summary: read 12, in Loki already 0" in out

    code, out = run_backfill(real_loki, server.log_dir, "--since", day)
    assert code == 0 and f"summary: read 12, in Loki already {stored}, pushed 0" in out, out
    code, out = run_backfill(real_loki, server.log_dir, "--no-check")  # exact resends
    assert code == 0 and f"pushed {stored}" in out, out
    # Loki stores such a resend again when the first copy is no longer in the stream's head block
    # (metric queries such as count_over_time then count it twice), but a log query, what
    # loki-session and the backfill's own check read, shows each entry once.
    entries = real_loki.entries(ours)
    assert len(entries) == stored
    assert sorted(line for _, line in join_split((ts, line) for _, ts, line, _ in entries)) == sorted(lines)
    # Same labels as the exporter would give.
    assert {labels["log_type"] for labels, *_ in entries} == {"session_start", "request", "response"}
    assert {labels["environment"] for labels, *_ in entries} == {"test"}


def test_backfill_reports_what_loki_refuses_and_can_push_it_apart(start_proxy, fake_provider, real_loki):
    machine = own_machine("late")
    server = start_proxy({"LLM_PROXY_MACHINE_ID": machine})
    call(server, fake_provider, "late-session")
    logged_lines(server.log_dir, 3)
    # The session's entries are two hours old; Loki's streams already hold one of now: the
    # session is too far behind the streams' newest entry (Loki accepts an hour behind).
    (path,) = server.log_dir.glob("*/*/*.jsonl")
    docs = [json.loads(line) for line in jsonl_lines(path)]
    for doc in docs:
        ts = doc["_meta"]["ts"]
        doc["_meta"]["ts"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(
            time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone - 7200)) + ts[19:]
    path.write_text("".join(json.dumps(doc, separators=(",", ":")) + "\n" for doc in docs))
    now = time.time_ns()
    for kind in ("session_start", "request", "response"):
        labels = {"app": "llm-proxy", "provider": "anthropic", "environment": "test", "machine": machine,
                  "log_type": kind}
        requests.post(f"{real_loki.url}/loki/api/v1/push", json={"streams": [{"stream": labels,
                      "values": [[str(now), "newer"]]}]}).raise_for_status()
    code, out = run_backfill(real_loki, server.log_dir)
    assert code == 1 and "refused 3" in out and "--extra-label" in out, out
    code, out = run_backfill(real_loki, server.log_dir, "--extra-label", "backfill=1")
    assert code == 0, out
    assert sorted(line for _, line in real_loki.lines(f'{{app="llm-proxy", machine="{machine}", backfill="1"}}')) == \
        sorted(jsonl_lines(path))


def test_backfill_says_in_one_line_when_loki_refuses_the_query_after_refusing_entries(tmp_path):
    """``--no-check`` with a token that may only push: Loki refuses an entry too old, and the
    backfill cannot ask which ones it refused. One line and exit status 1, not a traceback."""
    from llmproxy.record.entries import rfc3339_ns

    loki = FakeLoki().start()
    loki.refuse_queries = True
    try:
        first = time.time_ns() // 10**9 * 10**9 - 200 * 3600 * 10**9  # past Loki's 168 h
        session = time.strftime("%Y%m%d-%H%M%S", time.gmtime(first // 10**9)) + "-0123abcd"
        day = tmp_path / "api.anthropic.com" / f"{session[:4]}-{session[4:6]}-{session[6:8]}"
        day.mkdir(parents=True)
        doc = {"type": "session_start", "provider": "anthropic", "upstream": "api.anthropic.com",
               "_meta": {"ts": rfc3339_ns(first), "machine": "m", "session": session}}
        (day / f"{session}.jsonl").write_text(json.dumps(doc, separators=(",", ":")) + "\n")
        code, out = run_backfill(loki, tmp_path, "--no-check")
    finally:
        loki.down()
    assert code == 1, out
    assert "HTTP 403" in out and out.count("\n") <= 3, out


def test_backfill_quotes_a_session_name_in_its_query(tmp_path):
    """A session file someone named with a quote, a backslash and an accent: the backfill's question
    to Loki still parses, and finds what it pushed (the line spells the name JSON-escaped)."""
    from llmproxy.record.entries import rfc3339_ns

    loki = FakeLoki().start()
    try:
        session = 'import "2026"\\a é'
        day = tmp_path / "api.anthropic.com" / time.strftime("%Y-%m-%d", time.gmtime())
        day.mkdir(parents=True)
        doc = {"type": "session_start", "provider": "anthropic", "upstream": "api.anthropic.com",
               "_meta": {"ts": rfc3339_ns(time.time_ns()), "machine": "m", "session": session}}
        line = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))  # as the proxy writes it
        (day / f"{session}.jsonl").write_text(line + "\n")
        code, out = run_backfill(loki, tmp_path)
        assert code == 0 and "read 1, in Loki 0, pushed 1" in out, out
        code, out = run_backfill(loki, tmp_path)
        assert code == 0 and "read 1, in Loki 1, pushed 0" in out, out
    finally:
        loki.down()


def test_backfill_needs_a_loki_url(tmp_path):
    out = io.StringIO()
    assert backfill_main(["--log-dir", str(tmp_path)], out=out, environ={"LLM_PROXY_ENV_FILE": "/none"}) == 2


def test_backfill_pushes_sessions_that_ran_at_once_in_time_order(tmp_path, real_loki):
    """Two long sessions of one machine ran side by side for two hours: they share Loki's streams,
    which take nothing an hour behind their newest entry. Pushed session after session, the
    second would be refused; merged in time order, all of it is taken."""
    from llmproxy.record.entries import rfc3339_ns

    machine = own_machine("side-by-side")
    now = time.time_ns() // 10**9 * 10**9
    lines = []
    for name, first in (("aaaaaaaa", now - 170 * 60 * 10**9), ("bbbbbbbb", now - 160 * 60 * 10**9)):
        session = time.strftime("%Y%m%d-%H%M%S", time.gmtime(first // 10**9)) + f"-{name}"
        day = tmp_path / "api.anthropic.com" / f"{session[:4]}-{session[4:6]}-{session[6:8]}"
        day.mkdir(parents=True, exist_ok=True)
        docs = [{"type": "session_start", "provider": "anthropic", "upstream": "api.anthropic.com",
                 "_meta": {"ts": rfc3339_ns(first), "machine": machine, "session": session}}]
        for seq in range(1, 13):  # a call every ten minutes
            at = first + seq * 10 * 60 * 10**9
            for kind, ts in (("request", at), ("response", at + 10**9)):
                docs.append({"type": kind, "seq": seq, "_meta": {"ts": rfc3339_ns(ts), "machine": machine,
                                                                 "session": session, "request_id": f"{name}-{seq}"}})
        text = [json.dumps(doc, separators=(",", ":")) for doc in docs]
        (day / f"{session}.jsonl").write_text("\n".join(text) + "\n")
        lines += text
    code, out = run_backfill(real_loki, tmp_path)
    assert code == 0 and "refused" not in out, out
    # Entries close to 3 hours old may be asked of the store only, hence the flush; and the store
    # may answer for a flushed chunk a moment after the flush returns (4 of 50 lines were missing
    # from a query right after it once): wait for all of them, with a deadline.
    real_loki.flush()
    query = f'{{app="llm-proxy", machine="{machine}"}}'
    try:
        real_loki.wait_for_lines(query, len(lines), timeout=30)
    except TimeoutError:
        pass  # the comparison below says what is missing
    found = [line for _, line in real_loki.lines(query)]
    assert set(lines) - set(found) == set() and sorted(found) == sorted(lines)


def test_reading_only_some_entries_gives_what_reading_all_and_picking_gives(tmp_path):
    """The recovery reads a few entries of sessions that may be hundreds of MB: it parses only the
    lines whose time it wants. What it gets must be exactly those entries of a full read, labels
    and structured metadata included, an answer whose model is its request's too (the request
    itself not wanted, so read without parsing)."""
    import gentree

    from llmproxy.loki.backfill import read_entries
    from llmproxy.loki.labels import LabelMaker
    from llmproxy.record import logtree

    tree = gentree.generate(tmp_path / "logs", long=1, calls=30, short=3, days=1, seed=8)
    labels = LabelMaker("test", "here")
    for files in logtree.sessions(tree.log_dir):
        every = read_entries(files, labels)
        # an answer without a model of its own: its metadata names its request's
        path = files.plain or files.compressed
        lines = path.read_bytes().split(b"\n")
        for i, line in enumerate(lines):
            if line.startswith(b'{"type":"response"') and b'"model":"' in line:
                doc = json.loads(line)
                del doc["model"]
                lines[i] = json.dumps(doc, separators=(",", ":")).encode()
                break
        path.write_bytes(b"\n".join(lines))
        every = read_entries(files, labels)
        for wanted in ({e.ts_ns for e in every if e.line.startswith(b'{"type":"response"')},
                       {e.ts_ns for e in every[::3]}, set()):
            picked = read_entries(files, labels, keep=wanted.__contains__)
            assert picked == [e for e in every if e.ts_ns in wanted]
        modelless = [e for e in every if e.line.startswith(b'{"type":"response"') and "model" not in json.loads(e.line)]
        assert modelless and all(any(v for k, v in e.metadata if k == "model") for e in modelless)
