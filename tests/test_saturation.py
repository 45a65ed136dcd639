"""Busy request threads: counted per worker, summed on /health, warned about while all are busy."""

import http.client
import json
import logging
import os
import threading

from proxyproc import http_get, wait_until

from llmproxy.server.saturation import Saturation, pool_queue, summarize


def test_enter_and_leave_count_busy_threads_and_the_peak():
    sat = Saturation(threads=3)
    sat.enter()
    sat.enter()
    sat.leave()
    doc = sat.snapshot()
    assert (doc["busy"], doc["peak"], doc["threads"], doc["saturated"]) == (1, 2, 3, False)
    assert doc["waiting"] is None and doc["saturated_seconds"] == 0


def test_saturated_while_every_thread_is_busy_and_the_seconds_add_up(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("llmproxy.server.saturation.time.monotonic", lambda: clock[0])
    sat = Saturation(threads=2)
    sat.enter()
    sat.enter()
    clock[0] += 4.0
    assert sat.snapshot()["saturated"] and sat.snapshot()["saturated_seconds"] == 4.0
    assert sat.saturated_for() == 4.0
    sat.leave()
    clock[0] += 10.0
    sat.enter()
    clock[0] += 1.5
    sat.leave()
    doc = sat.snapshot()
    assert not doc["saturated"] and doc["saturated_seconds"] == 5.5 and sat.saturated_for() is None


def test_warning_at_most_once_a_minute_while_saturated(caplog):
    sat = Saturation(threads=1, waiting=lambda: 4, warn_interval=60.0)
    caplog.set_level(logging.WARNING, "llmproxy.saturation")
    sat.tick(now=1000.0)
    assert not caplog.records  # nothing busy, nothing said
    sat.enter()
    for now in (1001.0, 1002.0, 1060.0):
        sat.tick(now=now)
    sat.tick(now=1061.0)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "all 1 request threads of worker" in messages[0] and "4 requests waiting" in messages[0]
    assert "LLM_PROXY_THREADS" in messages[0]
    sat.leave()
    sat.tick(now=2000.0)
    assert len(caplog.records) == 2


def test_a_waiting_count_that_fails_reads_as_unknown():
    sat = Saturation(threads=1, waiting=lambda: 1 / 0)
    assert sat.snapshot()["waiting"] is None


def test_workers_publish_and_health_sums_them(tmp_path):
    mine = Saturation(threads=4, directory=tmp_path)
    mine.enter()
    other = {"threads": 4, "busy": 4, "waiting": 2, "peak": 4, "saturated": True,
             "saturated_seconds": 3.0, "pid": os.getppid()}  # a live process that is not this one
    dead = {**other, "pid": 2 ** 22 + 1}
    (tmp_path / "threads-1.json").write_text(json.dumps(other))
    (tmp_path / "threads-2.json").write_text(json.dumps(dead))
    (tmp_path / "threads-3.json").write_text("{half a docu")
    mine.tick()
    assert json.loads((tmp_path / f"threads-{os.getpid()}.json").read_text())["busy"] == 1
    others = mine.read_others()
    assert others == [other]
    total = summarize(mine.snapshot(), others)
    assert total == {"threads": 8, "busy": 5, "waiting": None, "saturated_workers": 1,
                     "saturated_seconds": 3.0, "workers": 2}
    mine.set_waiting(lambda: 1)
    assert summarize(mine.snapshot(), others)["waiting"] == 3
    mine.close()
    assert not (tmp_path / f"threads-{os.getpid()}.json").exists()


def test_pool_queue_reads_a_thread_pool_and_nothing_else():
    from concurrent.futures import ThreadPoolExecutor

    class Worker:
        tpool = ThreadPoolExecutor(1)

    release = threading.Event()
    Worker.tpool.submit(release.wait)
    Worker.tpool.submit(lambda: None)
    try:
        assert pool_queue(Worker())() == 1
    finally:
        release.set()
        Worker.tpool.shutdown()
    assert pool_queue(object()) is None


def _open_stream(proxy, fake, events: int, delay_ms: int) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    conn.request("POST", f"/anthropic/{fake.upstream}/v1/messages",
                 body=json.dumps({"model": "m", "stream": True, "max_tokens": 5,
                                  "messages": [{"role": "user", "content": "hi"}]}),
                 headers={"content-type": "application/json", "x-fake-events": str(events),
                          "x-fake-delay-ms": str(delay_ms)})
    resp = conn.getresponse()
    assert resp.status == 200
    resp.read1(1)  # the stream is under way: its thread is busy
    return resp


def test_a_worker_with_every_thread_streaming_says_so_in_log_and_health(start_proxy, fake_provider):
    proxy = start_proxy({"LLM_PROXY_WORKERS": "1", "LLM_PROXY_THREADS": "2"})
    # The health request itself holds a thread (a start-up probe that timed out may hold one too),
    # and the connection of the one before may sit a moment in the queue until a thread sees it closed.
    threads = wait_until(lambda: (t := http_get(proxy.port, "/health")[1]["threads"])["busy"] == 1
                         and t["waiting"] == 0 and t, 15, message="one busy thread, none waiting")
    assert threads == {"threads": 2, "busy": 1, "waiting": 0, "saturated_workers": 0,
                       "saturated_seconds": threads["saturated_seconds"], "workers": 1}
    streams = [_open_stream(proxy, fake_provider, events=300, delay_ms=50) for _ in range(2)]
    waited: list = []
    queued = threading.Thread(target=lambda: waited.append(http_get(proxy.port, "/health", timeout=30)))
    queued.start()  # no thread is free: this one waits in gunicorn's queue
    wait_until(lambda: "all 2 request threads of worker" in proxy.output()
               and "1 requests waiting" in proxy.output(), 10, message="saturation warning")
    assert not waited
    streams[0].close()
    queued.join(30)
    threads = waited[0][1]["threads"]
    assert threads["busy"] == 2 and threads["saturated_seconds"] > 0
    streams[1].close()
    wait_until(lambda: http_get(proxy.port, "/health")[1]["threads"]["busy"] == 1, 15,
               message="the streams' threads free again")
