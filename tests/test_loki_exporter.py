"""The Loki exporter in one process: batching, push format, retries, stats (``responses``)."""

import base64
import gzip
import json
import threading
import time
from dataclasses import replace

import pytest
import requests
import responses

from llmproxy.loki.backoff import Backoff, parse_retry_after
from llmproxy.loki.batch import Batch, LokiEntry
from llmproxy.loki.exporter import LokiExporter, rejected_entries
from llmproxy.loki.stats import StatsBoard, summarize, worker_status
from llmproxy.settings import LokiSettings

URL = "http://loki.test:3100/loki/api/v1/push"
LABELS = (("app", "llm-proxy"), ("provider", "anthropic"), ("environment", "test"),
          ("machine", "me@box"), ("log_type", "request"))
SETTINGS = LokiSettings(enabled=True, url="http://loki.test:3100", batch_size=1000, batch_wait=0.2,
                        backoff_min=0.1, backoff_max=10.0, retry_max=5)


def line(i: int, size: int = 0) -> bytes:
    return json.dumps({"type": "request", "seq": i, "pad": "x" * size, "_meta": {"session": "S"}}).encode()


def pushed_bodies(calls) -> list[dict]:
    out = []
    for call in calls:
        body = call.request.body
        if call.request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        out.append(json.loads(body))
    return out


def pushed_lines(calls) -> list[str]:
    return [v[1] for doc in pushed_bodies(calls) for s in doc["streams"] for v in s["values"]]


class Sleeps(list):
    """Records the exporter's retry waits instead of waiting."""

    def __call__(self, seconds):
        self.append(seconds)


def exporter(**changes):
    sleeps = Sleeps()
    exp = LokiExporter(replace(SETTINGS, **changes), sleep=sleeps)
    exp.sleeps = sleeps
    return exp


@pytest.fixture
def rsps():
    """A mocked Loki: tests add the push answers; a GET (the exporter's probe) gets 405 as from Loki."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.GET, URL, status=405)
        yield mock


def posts(rsps):
    return [c for c in rsps.calls if c.request.method == "POST"]


def wait_calls(rsps, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while len(posts(rsps)) < n:
        assert time.monotonic() < deadline, f"{len(posts(rsps))} pushes, expected {n}"
        time.sleep(0.01)


# --- the push body ---

def test_batch_groups_streams_sorts_values_and_keeps_lines_exact(rsps):
    other = tuple((k, "response" if k == "log_type" else v) for k, v in LABELS)
    batch = Batch()
    batch.add(LokiEntry(30, b'{"a":"\xc3\xa9 \\" \\n"}', LABELS))
    batch.add(LokiEntry(10, b'{"b":1}', LABELS))
    batch.add(LokiEntry(20, b'{"c":2}', other))
    doc = json.loads(batch.encode())
    streams = {s["stream"]["log_type"]: s["values"] for s in doc["streams"]}
    assert streams["request"] == [["10", '{"b":1}'], ["30", '{"a":"\u00e9 \\" \\n"}']]
    assert streams["response"] == [["20", '{"c":2}']]
    assert doc["streams"][0]["stream"] == dict(LABELS)
    assert batch.bytes == len(b'{"a":"\xc3\xa9 \\" \\n"}') + 7 + 7


def test_push_is_gzipped_json_with_string_timestamps_and_auth(rsps):
    rsps.add(responses.POST, URL, status=204)
    exp = exporter(auth_token="glc_secret_token", tenant_id="team-a")
    exp.push(line(1), LABELS, 1_764_300_000_123_456_789)
    exp.close(timeout=5)
    request = posts(rsps)[0].request
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.headers["Authorization"] == "Bearer glc_secret_token"
    assert request.headers["X-Scope-OrgID"] == "team-a"
    doc = json.loads(gzip.decompress(request.body))
    assert doc == {"streams": [{"stream": dict(LABELS), "values": [["1764300000123456789", line(1).decode()]]}]}


def test_basic_auth_and_plain_bodies(rsps):
    rsps.add(responses.POST, URL, status=204)
    exp = exporter(username="12345", password="pw", use_gzip=False)
    exp.push(line(1), LABELS, 1)
    exp.close(timeout=5)
    request = posts(rsps)[0].request
    assert "Content-Encoding" not in request.headers
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"12345:pw").decode()
    assert json.loads(request.body)["streams"][0]["values"][0][1] == line(1).decode()


# --- when a batch goes ---

def test_batch_is_pushed_when_it_reaches_batch_size(rsps):
    rsps.add(responses.POST, URL, status=204)
    exp = exporter(batch_size=3, batch_wait=60)
    for i in range(7):
        exp.push(line(i), LABELS, i)
    wait_calls(rsps, 2)
    assert [len(pushed_lines([c])) for c in posts(rsps)] == [3, 3]
    exp.close(timeout=5)
    assert pushed_lines(posts(rsps)) == [line(i).decode() for i in range(7)]


def test_batch_is_pushed_before_it_exceeds_batch_bytes(rsps):
    rsps.add(responses.POST, URL, status=204)
    exp = exporter(batch_bytes=3000, batch_wait=60)
    for i in range(5):
        exp.push(line(i, 1000), LABELS, i)
    wait_calls(rsps, 2)
    assert all(sum(len(l) for l in pushed_lines([c])) <= 3000 for c in posts(rsps))
    exp.close(timeout=5)
    assert len(pushed_lines(posts(rsps))) == 5


def test_batch_is_pushed_when_oldest_entry_reaches_batch_wait(rsps):
    sent_at = []
    rsps.add_callback(responses.POST, URL, callback=lambda r: (sent_at.append(time.monotonic()), (204, {}, ""))[1])
    exp = exporter(batch_wait=0.5)
    exp.start()
    time.sleep(0.3)  # the pusher is mid-wait: a ticker would now fire early or late
    first = time.monotonic()
    exp.push(line(1), LABELS, 1)
    time.sleep(0.2)
    exp.push(line(2), LABELS, 2)
    wait_calls(rsps, 1)
    waited = sent_at[0] - first
    assert 0.45 <= waited < 0.9, waited  # measured from the oldest entry, not a tick
    assert len(pushed_lines(posts(rsps))) == 2
    exp.close(timeout=5)


# --- retries ---

def test_backoff_doubles_from_100ms_and_is_capped_at_10s(rsps):
    backoff = Backoff(min=0.1, max=10.0, retries=8)
    assert [backoff.base(i) for i in range(9)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]


@pytest.mark.parametrize("attempt", range(8))
def test_jitter_adds_at_most_25_percent(attempt):
    backoff = Backoff()
    assert backoff.delay(attempt, rand=lambda: 0.0) == backoff.base(attempt)
    assert backoff.delay(attempt, rand=lambda: 1.0) == pytest.approx(backoff.base(attempt) * 1.25)
    samples = [backoff.delay(attempt) for _ in range(200)]
    assert all(backoff.base(attempt) <= s <= backoff.base(attempt) * 1.25 for s in samples)
    assert len(set(samples)) > 1


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_retryable_answers_are_retried_with_backoff(rsps, status):
    rsps.add(responses.POST, URL, status=status, body="try later")
    rsps.add(responses.POST, URL, status=status, body="try later")
    rsps.add(responses.POST, URL, status=204)
    exp = exporter()
    exp.push(line(1), LABELS, 1)
    exp.close(timeout=5)
    assert len(posts(rsps)) == 3
    assert 0.1 <= exp.sleeps[0] <= 0.125 and 0.2 <= exp.sleeps[1] <= 0.25
    stats = exp.snapshot()
    assert (stats["entries_sent"], stats["batches_sent"], stats["entries_failed"]) == (1, 1, 0)
    assert stats["last_error"] == f"HTTP {status}: try later"


def test_connection_errors_are_retried_at_most_retry_max_times(rsps):
    rsps.add(responses.POST, URL, body=requests.exceptions.ConnectionError("refused"))
    exp = exporter(retry_max=3)
    exp.push(line(1), LABELS, 1)
    exp.start()
    deadline = time.monotonic() + 5
    while exp.snapshot()["entries_failed"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    pushes = posts(rsps)
    assert len(pushes) == 4 and len(exp.sleeps) == 3
    assert exp.snapshot()["entries_failed"] == 1
    assert "cannot reach http://loki.test:3100/loki/api/v1/push" in exp.snapshot()["last_error"]
    exp.close(timeout=0.5)


def test_client_errors_are_not_retried_and_lokis_message_is_kept(rsps):
    message = ("entry for stream '{app=\"llm-proxy\"}' has timestamp too old: 2026-11-14T03:15:16Z, "
               "oldest acceptable timestamp is: 2026-11-21T03:15:16Z")
    rsps.add(responses.POST, URL, status=400, body=message + "\n")
    exp = exporter()
    for i in range(3):
        exp.push(line(i), LABELS, i)
    exp.close(timeout=5)
    assert len(posts(rsps)) == 1 and exp.sleeps == []
    stats = exp.snapshot()
    # Loki names one refused entry; it stored the other two.
    assert (stats["entries_failed"], stats["entries_sent"]) == (1, 2)
    assert stats["last_error"] == f"HTTP 400: {message}"


def test_retry_after_is_honoured_and_capped(rsps):
    rsps.add(responses.POST, URL, status=429, headers={"Retry-After": "3"})
    rsps.add(responses.POST, URL, status=503, headers={"Retry-After": "3600"})
    rsps.add(responses.POST, URL, status=204)
    exp = exporter(backoff_max=10.0)
    exp.push(line(1), LABELS, 1)
    exp.close(timeout=60)
    assert exp.sleeps[0] == 3.0 and exp.sleeps[1] == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 10.0) == 0.0
    assert parse_retry_after("soon", 10.0) is None


def test_413_splits_the_batch_in_halves(rsps):
    def gateway(request):
        lines = json.loads(gzip.decompress(request.body))["streams"][0]["values"]
        return (413, {}, "Request Entity Too Large") if len(lines) > 2 else (204, {}, "")

    rsps.add_callback(responses.POST, URL, callback=gateway)
    exp = exporter(batch_wait=60)
    for i in range(8):
        exp.push(line(i), LABELS, i)
    exp.close(timeout=5)
    assert sorted(pushed_lines([c for c in posts(rsps) if c.response.status_code == 204])) == \
        sorted(line(i).decode() for i in range(8))
    assert exp.snapshot()["entries_sent"] == 8 and exp.snapshot()["entries_failed"] == 0


def test_a_batch_refused_429_after_its_retries_is_split(rsps):
    def loki(request):
        lines = json.loads(gzip.decompress(request.body))["streams"][0]["values"]
        return (429, {}, "ingestion rate limit exceeded") if len(lines) > 2 else (204, {}, "")

    rsps.add_callback(responses.POST, URL, callback=loki)
    exp = exporter(batch_wait=60, retry_max=2)
    for i in range(4):
        exp.push(line(i), LABELS, i)
    exp.close(timeout=5)
    assert exp.snapshot()["entries_sent"] == 4
    assert len(pushed_lines([c for c in posts(rsps) if c.response.status_code == 204])) == 4


@pytest.mark.parametrize("message, expected", [
    ("entry for stream '{a=\"b\"}' has timestamp too old: x\nentry for stream '{a=\"b\"}' has timestamp too new: y", 2),
    ("max entry size '262144' bytes exceeded for stream '{a=\"b\"}' while adding an entry with length '307200' bytes", 1),
    ("entry with timestamp x ignored, reason: 'entry too far behind, ...',\nuser 'fake', total ignored: 3 out of 9 "
     "for stream: {a=\"b\"}", 3),
    ("couldn't parse labels: 1:2: parse error: unexpected character inside braces: '1'", 10),
])
def test_rejected_entries_are_counted_from_lokis_message(message, expected):
    assert rejected_entries(message, 10) == expected


# --- never in the way ---

def test_push_never_blocks_and_counts_drops_over_either_bound(rsps):
    exp = exporter(buffer_size=3, buffer_bytes=10**9)
    exp._pid = -1  # pretend the pusher runs elsewhere: nothing drains the queue
    exp.start = lambda: None
    started = time.perf_counter()
    results = [exp.push(line(i), LABELS, i) for i in range(5)]
    assert time.perf_counter() - started < 0.05
    assert results == [True, True, True, False, False]
    assert exp.snapshot()["entries_dropped"] == 2 and exp.queue_depth == 3

    exp = exporter(buffer_size=100, buffer_bytes=250)
    exp._pid = -1
    exp.start = lambda: None
    assert [exp.push(b"x" * 100, LABELS, i) for i in range(3)] == [True, True, False]
    assert exp.snapshot()["entries_dropped"] == 1 and exp.queued_bytes == 200


def test_requests_keep_pushing_while_the_pusher_waits_on_loki(rsps):
    gate = threading.Event()
    rsps.add_callback(responses.POST, URL, callback=lambda r: (gate.wait(5), (204, {}, ""))[1])
    exp = exporter(batch_size=1)
    exp.push(line(0), LABELS, 0)
    wait_calls(rsps, 0)
    time.sleep(0.05)
    started = time.perf_counter()
    assert all(exp.push(line(i), LABELS, i) for i in range(1, 500))
    assert time.perf_counter() - started < 0.5
    gate.set()
    exp.close(timeout=10)
    assert exp.snapshot()["entries_sent"] == 500


def test_close_flushes_everything_queued(rsps):
    rsps.add(responses.POST, URL, status=204)
    exp = exporter(batch_wait=3600, batch_size=100)
    for i in range(250):
        exp.push(line(i), LABELS, i)
    assert exp.close(timeout=5) == 0
    assert len(pushed_lines(posts(rsps))) == 250


def test_close_reports_what_it_could_not_deliver_in_its_budget(rsps, caplog):
    rsps.add(responses.POST, URL, body=requests.exceptions.ConnectionError("refused"))
    exp = exporter(batch_wait=3600)
    exp.sleeps = None
    exp._pause = lambda s: time.sleep(min(s, 0.05))
    for i in range(4):
        exp.push(line(i), LABELS, i)
    started = time.monotonic()
    assert exp.close(timeout=0.5) == 4
    assert time.monotonic() - started < 3
    assert "4 entries not delivered" in caplog.text


# --- numbers across workers ---

def test_status_moves_from_ok_to_degraded_to_failing(rsps):
    now = 1000.0
    assert worker_status({}, 5.0, now) == "ok"
    assert worker_status({"last_error_time": now - 10, "failing_since": None}, 5.0, now) == "degraded"
    assert worker_status({"last_error_time": now - 1, "failing_since": now - 1}, 5.0, now) == "degraded"
    assert worker_status({"last_error_time": now - 1, "failing_since": now - 6}, 5.0, now) == "failing"
    assert worker_status({"last_error_time": now - 400, "failing_since": None}, 5.0, now) == "ok"


def test_summary_sums_workers_and_keeps_dead_workers_counters(tmp_path):
    import os
    board = StatsBoard(tmp_path)
    board.publish(999_999_999, {"entries_sent": 5, "entries_failed": 1, "entries_dropped": 0, "batches_sent": 2,
                                "queue_depth": 7, "last_error": "old", "last_error_time": 10.0,
                                "failing_since": 10.0})
    own = {"entries_sent": 3, "entries_failed": 0, "entries_dropped": 2, "batches_sent": 1, "queue_depth": 1,
           "last_error": None, "last_error_time": None, "last_success_time": time.time(), "failing_since": None}
    summary = summarize(own, os.getpid(), board.read(), 5.0)
    assert (summary["entries_sent"], summary["entries_failed"], summary["entries_dropped"]) == (8, 1, 2)
    assert summary["batches_sent"] == 3
    assert summary["queue_depth"] == 1  # the dead worker's queue is gone
    assert summary["workers"] == 1 and summary["status"] == "ok"
    assert summary["last_error"] == "old" and summary["last_error_time"].startswith("1970-01-01T00:00:10")
