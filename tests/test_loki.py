"""Loki export end to end: real gunicorn (2 workers), the fake provider, and a real Grafana Loki
for what Loki stores and answers; fakeloki where Loki must fail on cue or each push is watched."""

import concurrent.futures
import json
import os
import signal
import time
import uuid

import pytest
import requests
from fakeloki import FakeLoki
from proxyproc import http_get, jsonl_lines, wait_until
from realloki import loki_entries, own_machine

from llmproxy import __version__


@pytest.fixture
def loki():
    fake = FakeLoki().start()
    yield fake
    fake.down()


def loki_env(loki, **extra):
    return {"LLM_PROXY_LOKI_ENABLED": "true", "LLM_PROXY_LOKI_URL": loki.url,
            "LLM_PROXY_LOKI_BATCH_WAIT": "200ms", "LLM_PROXY_LOKI_ENVIRONMENT": "test",
            "LLM_PROXY_MACHINE_ID": "tester@ci", **extra}


def call(server, fake, session=None, stream=False):
    headers = {"x-api-key": "sk-ant-api03-" + "k" * 80 + "wxyz"}
    if session:
        headers["X-Claude-Code-Session-Id"] = session
    resp = requests.post(f"{server.url}/anthropic/{fake.upstream}/v1/messages",
                         json={"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]},
                         headers=headers)
    resp.content
    assert resp.status_code == 200
    return resp


def health(server):
    return http_get(server.port, "/health/loki")


def file_lines(log_dir):
    return [line for path in log_dir.glob("*/*/*.jsonl") for line in jsonl_lines(path)]


def test_a_session_is_queryable_in_loki_within_10s(start_proxy, fake_provider, real_loki):
    machine = own_machine("within-10s")
    server = start_proxy(loki_env(real_loki, LLM_PROXY_MACHINE_ID=machine))
    session = f"cc-{uuid.uuid4()}"
    started = time.monotonic()
    for stream in (False, True, False):
        call(server, fake_provider, session, stream)

    ours = json.loads(file_lines(server.log_dir)[0])["_meta"]["session"]
    query = (f'{{app="llm-proxy"}} |= "{ours}" | json session="_meta.session" | session="{ours}"')

    def found():
        values = real_loki.lines(query)
        return [line for _, line in values] if len(values) == 7 else None

    lines = wait_until(found, timeout=10, interval=0.1, message="session in Loki")
    assert time.monotonic() - started < 10
    # The Loki line is exactly the file line; by timestamp, in session order. A response is stamped
    # when its last byte has gone, so the next request may come just before it.
    assert sorted(lines) == sorted(file_lines(server.log_dir))
    docs = [json.loads(l) for l in lines]
    assert docs[0]["type"] == "session_start"
    assert [d["seq"] for d in docs if d["type"] == "request"] == [1, 2, 3]
    position = {(d["type"], d.get("seq")): i for i, d in enumerate(docs)}
    assert all(position[("request", n)] < position[("response", n)] for n in (1, 2, 3))
    entries = real_loki.entries(f'{{app="llm-proxy", machine="{machine}"}}')
    labels = {frozenset(e[0].items()) for e in entries}
    assert {dict(l)["log_type"] for l in labels} == {"session_start", "request", "response"}
    for label_set in labels:
        label_set = dict(label_set)
        assert {k: v for k, v in label_set.items() if k not in ("log_type", "service_name")} == {
            "app": "llm-proxy", "provider": "anthropic", "environment": "test", "machine": machine}
    # Timestamps are the entries' own.
    for _, ts, line, _ in entries:
        meta_ts = json.loads(line)["_meta"]["ts"]
        assert time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts // 10**9)) == meta_ts[:19]
        assert f"{ts % 10**9:09d}" == meta_ts[20:29]
    assert "wxyz" in lines[1] and "k" * 80 not in "".join(lines)


def test_many_sessions_from_both_workers_are_all_in_loki_once(start_proxy, fake_provider, real_loki):
    """A real Loki takes both workers' pushes into the same streams (each worker's entries in its
    own order, interleaved in time with the other's) and holds each line once."""
    machine = own_machine("both-workers")
    server = start_proxy(loki_env(real_loki, LLM_PROXY_THREADS="16", LLM_PROXY_MACHINE_ID=machine))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: call(server, fake_provider, f"both-{i % 20}", stream=i % 3 == 0), range(600)))
    lines = wait_until(lambda: (found := file_lines(server.log_dir)) and len(found) == 20 + 2 * 600 and found,
                       timeout=10, message="every line written")
    ours = f'{{app="llm-proxy", machine="{machine}"}}'
    assert real_loki.wait_for_count(ours, loki_entries(lines), timeout=30) == len(lines)
    assert sorted(line for _, line in real_loki.lines(ours)) == sorted(lines)
    assert wait_until(lambda: (h := health(server)[1])["entries_sent"] == len(lines) and h, timeout=5)[
        "entries_failed"] == 0


def test_2000_requests_across_both_workers_arrive_exactly_once(start_proxy, fake_provider, loki):
    server = start_proxy(loki_env(loki, LLM_PROXY_THREADS="16"))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: call(server, fake_provider), range(2000)))
    expected = 3 * 2000  # session_start, request, response: no client session id
    assert loki.wait_for(expected, timeout=30) == expected
    lines = loki.lines()
    assert len(lines) == len(set(lines)) == expected
    assert sorted(lines) == sorted(file_lines(server.log_dir))
    # Every push came from the exporter's own session (the proxy's upstream session adds no
    # User-Agent), gzip'd, and no entry needed a second push.
    assert {p.headers.get("user-agent") for p in loki.pushes} == {f"llm-proxy/{__version__}"}
    assert {p.headers.get("content-encoding") for p in loki.pushes} == {"gzip"}
    assert {p.status for p in loki.pushes} == {204}

    def summed():
        status, body = health(server)
        return body if body["entries_sent"] == expected else None

    body = wait_until(summed, timeout=5, message="entries_sent summed over workers")
    assert body["workers"] == 2 and body["status"] == "ok" and body["entries_dropped"] == 0
    # Whichever worker answers, the numbers add up (once each has published, within a second).
    wait_until(lambda: all(health(server)[1]["entries_sent"] == expected for _ in range(8)), timeout=5,
               message="every worker sums to the same")


def test_loki_down_for_20s_then_back_loses_nothing(start_proxy, fake_provider, loki):
    server = start_proxy(loki_env(loki))
    loki.down()
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < 20:
        call(server, fake_provider, "outage-session")
        sent += 1
        time.sleep(0.2)
    loki.up()
    expected = 1 + 2 * sent
    assert loki.wait_for(expected, timeout=40) == expected
    assert sorted(loki.lines()) == sorted(file_lines(server.log_dir))


def test_sigterm_flushes_what_is_queued(start_proxy, fake_provider, loki):
    server = start_proxy(loki_env(loki, LLM_PROXY_LOKI_BATCH_WAIT="10m"))
    for _ in range(5):
        call(server, fake_provider)
    assert loki.count() == 0  # nothing is due yet
    assert server.stop(signal.SIGTERM, timeout=60) == 0
    assert loki.count() == 15
    assert "Loki: flushed" in server.output()


def test_a_worker_sigtermed_right_after_a_request_delivers_its_entries(start_proxy, fake_provider, loki):
    server = start_proxy(loki_env(loki, LLM_PROXY_WORKERS="1", LLM_PROXY_LOKI_BATCH_WAIT="10m"))
    (worker,) = server.worker_pids()
    call(server, fake_provider, "term-one-worker")
    os.kill(worker, signal.SIGTERM)  # gunicorn restarts it; its worker_exit must flush first
    assert loki.wait_for(3, timeout=20) == 3
    wait_until(lambda: len(server.worker_pids()) == 1 and server.worker_pids() != [worker], timeout=20)
    assert sorted(loki.lines()) == sorted(file_lines(server.log_dir))


def test_a_hup_reload_flushes_the_old_workers(start_proxy, fake_provider, loki):
    server = start_proxy(loki_env(loki, LLM_PROXY_LOKI_BATCH_WAIT="10m"))
    old = set(server.worker_pids())
    for _ in range(4):
        call(server, fake_provider, "reload-session")
    server.proc.send_signal(signal.SIGHUP)
    assert loki.wait_for(9, timeout=30) == 9
    wait_until(lambda: len(server.worker_pids()) == 2 and not old & set(server.worker_pids()), timeout=30)
    call(server, fake_provider, "reload-session")  # the new workers serve (and hold this batch)
    assert loki.count() == 9 and set(loki.lines()) < set(file_lines(server.log_dir))


def test_health_goes_ok_failing_ok_with_loki(start_proxy, fake_provider, loki):
    server = start_proxy(loki_env(loki, LLM_PROXY_LOKI_RETRY_MAX="1", LLM_PROXY_LOKI_TIMEOUT="1s"))
    call(server, fake_provider)
    wait_until(lambda: health(server)[1]["entries_sent"] == 3, timeout=10)
    status, body = health(server)
    assert status == 200 and body["status"] == "ok"

    loki.down()
    call(server, fake_provider)
    status, body = wait_until(lambda: (lambda r: r if r[1]["status"] == "failing" else None)(health(server)),
                              timeout=15, message="failing")
    assert status == 503
    assert "Connection refused" in body["last_error"] and body["last_error_time"]
    # Workers publish their numbers once a second: within that, every worker answers the same.
    wait_until(lambda: subprocess_curl_fails(server), timeout=5, message="curl -f fails")

    loki.up()
    call(server, fake_provider)
    # Recent errors, pushes succeed again. The worker that spooled the failed batch may fail
    # once more on a kept-alive connection the outage cut before its replay goes through.
    def recovered():
        status, body = health(server)
        ok = body["status"] == "degraded" and body["last_success_time"] > body["last_error_time"]
        return (status, body) if ok else None

    status, body = wait_until(recovered, timeout=15, message="recovered")
    assert status == 200


def subprocess_curl_fails(server) -> bool:
    """`curl -f` is how monitoring asks; it must fail while Loki is failing."""
    import shutil
    import subprocess
    if not shutil.which("curl"):
        return health(server)[0] == 503
    return subprocess.run(["curl", "-sf", f"{server.url}/health/loki"], capture_output=True,
                          timeout=10).returncode != 0


def test_start_with_loki_unreachable_serves_and_reports_failing(start_proxy, fake_provider, loki):
    loki.down()
    server = start_proxy(loki_env(loki, LLM_PROXY_LOKI_RETRY_MAX="1"))
    call(server, fake_provider)
    assert file_lines(server.log_dir)
    status, body = wait_until(lambda: (lambda r: r if r[1]["status"] == "failing" else None)(health(server)),
                              timeout=15, message="failing")
    assert status == 503 and "cannot reach" in body["last_error"]
    output = server.output()
    assert f"Loki export: {loki.url}/loki/api/v1/push" in output


def test_loki_disabled_is_said_at_start_and_by_health(start_proxy):
    server = start_proxy()
    assert health(server) == (200, {"status": "disabled", "entries_sent": 0, "entries_failed": 0,
                                    "entries_dropped": 0, "batches_sent": 0, "entries_recovered": 0, "queue_depth": 0,
                                    "last_error": None, "last_error_time": None, "last_success_time": None,
                                    "failing_since": None, "workers": 0, "spooled_entries": 0, "spool_bytes": 0,
                                    "structured_metadata": "off"})
    assert "Loki export: disabled" in server.output()


def test_credentials_never_reach_logs_or_health(start_proxy, fake_provider, loki):
    url = loki.url.replace("http://", "http://12345:glc_supersecretpassword@")
    server = start_proxy(loki_env(loki, LLM_PROXY_LOKI_URL=url))
    call(server, fake_provider)
    loki.wait_for(3, timeout=10)
    assert loki.pushes[0].headers["authorization"].startswith("Basic ")
    server.stop()
    assert "glc_supersecretpassword" not in server.output()
    assert "http://***@127.0.0.1" in server.output()
