"""The benchmark behind ``scripts/bench``: what the proxy and the Loki export cost, side by side.

Everything runs on 127.0.0.1: the fake provider and fakeloki (each in a process of its own, so
they do not share the client's GIL) and the proxy under real gunicorn, default settings unless
a flag says otherwise. Variants are interleaved (A B B A A B…) so machine drift cancels out.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import io
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from proxyproc import ProxyServer, free_port, http_get, wait_until  # noqa: E402

from llmproxy.settings import Settings  # noqa: E402

MIB = 1024 * 1024


# --- statistics ---

def trimmed_mean(samples: list[float], cut: float = 0.1) -> float:
    """The mean of the middle samples (``cut`` of each end left out): for a time that takes one
    of two values (a start that waits one 4 ms timer tick or none), where a median jumps from one
    to the other as their shares pass one half."""
    ordered = sorted(samples)
    k = int(len(ordered) * cut)
    middle = ordered[k:len(ordered) - k] or ordered
    return statistics.fmean(middle)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(samples: list[float]) -> dict:
    return {"median_ms": round(statistics.median(samples), 3) if samples else None,
            "p90_ms": round(percentile(samples, 0.9), 3), "p99_ms": round(percentile(samples, 0.99), 3),
            "samples": len(samples)}


@dataclass
class Figure:
    """One measured number, with what it measured and on how many samples."""

    name: str
    value: float | None
    unit: str
    samples: int
    what: str
    target: str = ""
    met: bool | None = None
    extra: dict = field(default_factory=dict)


# --- helper processes ---

SERVE_FAKE = """
import sys, time, json
sys.path.insert(0, {here!r})
kind, opts = sys.argv[1], json.loads(sys.argv[2])
if kind == "provider":
    from fakeprovider import FakeProvider
    server = FakeProvider().start()
else:
    from fakeloki import FakeLoki
    server = FakeLoki().start()
    if opts.get("mode"):
        server.set_mode(opts["mode"])
print(server.port, flush=True)
sys.stdin.read()
"""


class Helper:
    """A fake provider or fakeloki in its own process; ends when the bench does."""

    def __init__(self, kind: str, **opts):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE_FAKE.format(here=str(HERE)), kind,
                                      json.dumps(opts)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.port = int(self.proc.stdout.readline())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.terminate()
        self.proc.wait(10)


def refused_url() -> str:
    """A loopback port nothing listens on: connection refused."""
    return f"http://127.0.0.1:{free_port()}"


# --- clients ---

class Client:
    """One keep-alive connection; ``post`` returns the latency in ms."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, path: str, body: bytes, headers: dict) -> float:
        started = time.perf_counter()
        try:
            self.conn.request("POST", path, body=body, headers=headers)
            resp = self.conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            raise
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status} from 127.0.0.1:{self.port}{path}")
        return (time.perf_counter() - started) * 1000


def messages_body(size: int) -> bytes:
    text = "x" * max(0, size - 120)
    return json.dumps({"model": "bench", "max_tokens": 16,
                       "messages": [{"role": "user", "content": text}]}).encode()


@dataclass
class Target:
    """Where a variant sends its calls."""

    name: str
    port: int
    path: str
    headers: dict = field(default_factory=dict)


def run_sequential(targets: list[Target], body: bytes, rounds: int, per_round: int) -> dict[str, list[float]]:
    """Each round runs ``per_round`` calls per variant, in an order that alternates every round."""
    clients = {t.name: Client(t.port) for t in targets}
    latencies: dict[str, list[float]] = {t.name: [] for t in targets}
    headers = {"Content-Type": "application/json", "x-api-key": "sk-ant-api03-bench-key-0000000000000000000000"}
    for t in targets:  # warm up connections, pools, sessions
        for _ in range(5):
            clients[t.name].post(t.path, body, {**headers, **t.headers})
    for r in range(rounds):
        order = targets if r % 2 == 0 else list(reversed(targets))
        for t in order:
            client = clients[t.name]
            for _ in range(per_round):
                latencies[t.name].append(client.post(t.path, body, {**headers, **t.headers}))
    return latencies


def run_concurrent(targets: list[Target], body: bytes, rounds: int, per_client: int,
                   concurrency: int) -> dict[str, tuple[list[float], float]]:
    """Like run_sequential with ``concurrency`` clients at once; also returns requests/s."""
    headers = {"Content-Type": "application/json"}
    results: dict[str, tuple[list[float], float]] = {t.name: ([], 0.0) for t in targets}
    elapsed = {t.name: 0.0 for t in targets}
    pools = {t.name: [Client(t.port) for _ in range(concurrency)] for t in targets}
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for r in range(rounds):
            order = targets if r % 2 == 0 else list(reversed(targets))
            for t in order:
                def work(client, t=t):
                    return [client.post(t.path, body, {**headers, **t.headers}) for _ in range(per_client)]
                started = time.perf_counter()
                for samples in pool.map(work, pools[t.name]):
                    results[t.name][0].extend(samples)
                elapsed[t.name] += time.perf_counter() - started
    return {name: (lat, len(lat) / elapsed[name]) for name, (lat, _) in results.items()}


# --- the measurements ---

# Settings given with --set, for every proxy the bench starts (the defaults otherwise).
EXTRA_ENV: dict[str, str] = {}


def proxy_env(log_dir: Path, **extra) -> dict:
    """The proxy's shipped defaults (not the test suite's small ones), then ``extra``, then --set."""
    shipped = {"LLM_PROXY_WORKERS": str(Settings.workers), "LLM_PROXY_THREADS": str(Settings.threads)}
    return {**shipped, "LLM_PROXY_LOG_DIR": str(log_dir), **extra, **EXTRA_ENV}


def bench_overhead(work: Path, provider: Helper, scale: float) -> list[Figure]:
    figures = []
    with ProxyServer(work / "overhead", env=proxy_env(work / "overhead" / "logs")) as proxy:
        targets = [Target("direct", provider.port, "/v1/messages"),
                   Target("proxy", proxy.port, f"/anthropic/127.0.0.1:{provider.port}/v1/messages",
                          {"X-Claude-Code-Session-Id": "bench-overhead"})]
        # The same forwarding on a path that is proxied but not logged: what logging costs.
        unlogged = [Target("direct", provider.port, "/echo"),
                    Target("proxy", proxy.port, f"/anthropic/127.0.0.1:{provider.port}/echo")]
        seq = run_sequential(unlogged, messages_body(2048), max(2, int(20 * scale)), per_round=25)
        direct, via = summary(seq["direct"]), summary(seq["proxy"])
        figures.append(Figure(
            "overhead 2KB, path not logged", round(via["median_ms"] - direct["median_ms"], 3),
            "ms added (median)", via["samples"],
            "POST /echo with a 2KB body (proxied, not a conversation endpoint): forwarding alone",
            extra={"direct": direct, "proxy": via}))
        for size_name, size in (("2KB", 2048), ("200KB", 200 * 1024)):
            body = messages_body(size)
            rounds = max(2, int(20 * scale))
            seq = run_sequential(targets, body, rounds, per_round=25 if size < 10_000 else 5)
            direct, via = summary(seq["direct"]), summary(seq["proxy"])
            added = via["median_ms"] - direct["median_ms"]
            figures.append(Figure(
                f"overhead {size_name} sequential", round(added, 3), "ms added (median)", via["samples"],
                f"POST /v1/messages with a {size_name} body, one client, proxy vs direct",
                "< 1.5 ms" if size_name == "2KB" else "", added < 1.5 if size_name == "2KB" else None,
                {"direct": direct, "proxy": via,
                 "direct_rps": round(1000 / statistics.mean(seq["direct"]), 1),
                 "proxy_rps": round(1000 / statistics.mean(seq["proxy"]), 1)}))
            conc = run_concurrent(targets, body, rounds=max(2, int(6 * scale)),
                                  per_client=4 if size < 10_000 else 2, concurrency=16)
            direct_c, via_c = summary(conc["direct"][0]), summary(conc["proxy"][0])
            figures.append(Figure(
                f"overhead {size_name} x16", round(via_c["median_ms"] - direct_c["median_ms"], 3),
                "ms added (median)", via_c["samples"],
                f"POST /v1/messages with a {size_name} body, 16 concurrent clients, proxy vs direct",
                extra={"direct": direct_c, "proxy": via_c, "direct_rps": round(conc["direct"][1], 1),
                       "proxy_rps": round(conc["proxy"][1], 1)}))
    return figures


def bench_loki_impact(work: Path, provider: Helper, scale: float) -> list[Figure]:
    loki_up = Helper("loki")
    loki_hang = Helper("loki", mode="hang")
    variants = {"disabled": None, "up": loki_up.url, "refusing": refused_url(), "hanging": loki_hang.url}
    servers = {}
    try:
        for name, url in variants.items():
            # A short flush budget: stopping the hanging variant must not take 30 s (no figure
            # depends on it).
            env = proxy_env(work / f"loki-{name}" / "logs", LLM_PROXY_LOKI_SHUTDOWN_TIMEOUT="3s")
            if url:
                env.update(LLM_PROXY_LOKI_ENABLED="true", LLM_PROXY_LOKI_URL=url)
            servers[name] = ProxyServer(work / f"loki-{name}", env=env).start()
        targets = [Target(name, s.port, f"/anthropic/127.0.0.1:{provider.port}/v1/messages",
                          {"X-Claude-Code-Session-Id": f"bench-loki-{name}"}) for name, s in servers.items()]
        # Let the refusing and hanging exporters reach their failing state first.
        run_sequential(targets, messages_body(2048), rounds=2, per_round=20)
        latencies = run_sequential(targets, messages_body(2048), rounds=max(2, int(20 * scale)), per_round=25)
        base = summary(latencies["disabled"])
        figures = [Figure("loki disabled", base["median_ms"], "ms (median)", base["samples"],
                          "POST /v1/messages 2KB through the proxy, Loki export disabled", extra=base)]
        for name in ("up", "refusing", "hanging"):
            s = summary(latencies[name])
            d_med = round(s["median_ms"] - base["median_ms"], 3)
            d_p99 = round(s["p99_ms"] - base["p99_ms"], 3)
            figures.append(Figure(
                f"loki {name}: median diff", d_med, "ms vs disabled", s["samples"],
                f"same call, Loki enabled and {name}", "within ±1 ms", abs(d_med) < 1.0, s))
            figures.append(Figure(f"loki {name}: p99 diff", d_p99, "ms vs disabled", s["samples"],
                                  f"same call, Loki enabled and {name}", "< 5 ms", d_p99 < 5.0))
        return figures
    finally:
        for s in servers.values():
            s.stop()
        loki_up.stop()
        loki_hang.stop()


def stream_once(port: int, path: str, events: int, delay_ms: int) -> tuple[float, list[float]]:
    """TTFB in ms, and for every event the ms from the fake sending it to its arrival here."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = json.dumps({"model": "bench", "stream": True}).encode()
    started = time.perf_counter()
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json", "x-fake-events": str(events),
                                                   "x-fake-delay-ms": str(delay_ms), "x-fake-stamp": "1"})
    resp = conn.getresponse()
    ttfb = None
    delays, buf = [], b""
    while True:
        data = resp.read1(65536)
        if not data:
            break
        now = time.time()
        if ttfb is None:
            ttfb = (time.perf_counter() - started) * 1000
        buf += data
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            if event.startswith(b": sent "):
                delays.append((now - float(event[7:event.index(b"\n")])) * 1000)
    conn.close()
    return ttfb, delays


def bench_streaming(work: Path, provider: Helper, scale: float) -> list[Figure]:
    with ProxyServer(work / "stream", env=proxy_env(work / "stream" / "logs")) as proxy:
        paths = {"direct": (provider.port, "/v1/messages"),
                 "proxy": (proxy.port, f"/anthropic/127.0.0.1:{provider.port}/v1/messages")}
        ttfb = {k: [] for k in paths}
        delays = {k: [] for k in paths}
        events = 300 - 8  # message_start … message_stop around the deltas: 300 events in all
        for r in range(max(2, int(6 * scale))):
            for name in (paths if r % 2 == 0 else reversed(list(paths))):
                t, d = stream_once(*paths[name], events=events, delay_ms=5)
                ttfb[name].append(t)
                delays[name].extend(d)
    added_ttfb = statistics.median(ttfb["proxy"]) - statistics.median(ttfb["direct"])
    added = statistics.median(delays["proxy"]) - statistics.median(delays["direct"])
    added_p99 = percentile(delays["proxy"], 0.99) - percentile(delays["direct"], 0.99)
    return [
        Figure("stream: added TTFB", round(added_ttfb, 3), "ms (median)", len(ttfb["proxy"]),
               "300-event SSE, 5 ms apart: time to first byte, proxy vs direct"),
        Figure("stream: added delay per event", round(added, 3), "ms (median)", len(delays["proxy"]),
               "each event's send-to-arrival time, proxy vs direct", "< 1 ms", added < 1.0,
               {"p99_added_ms": round(added_p99, 3), "direct": summary(delays["direct"]),
                "proxy": summary(delays["proxy"])}),
    ]


def bench_load(work: Path, provider: Helper, scale: float) -> list[Figure]:
    """16 keep-alive clients at once: direct, proxy with Loki off, proxy with Loki on (fakeloki)."""
    loki = Helper("loki")
    servers = {}
    try:
        servers["Loki off"] = ProxyServer(work / "load-off", env=proxy_env(work / "load-off" / "logs")).start()
        servers["Loki on"] = ProxyServer(work / "load-on", env=proxy_env(
            work / "load-on" / "logs", LLM_PROXY_LOKI_ENABLED="true", LLM_PROXY_LOKI_URL=loki.url)).start()
        path = f"/anthropic/127.0.0.1:{provider.port}/v1/messages"
        targets = [Target("direct", provider.port, "/v1/messages")] + [
            Target(name, server.port, path, {"X-Claude-Code-Session-Id": f"bench-load-{i}"})
            for i, (name, server) in enumerate(servers.items())]
        body = messages_body(2048)
        run_concurrent(targets, body, rounds=1, per_client=5, concurrency=16)  # connections, pools, threads
        pids = {name: server.worker_pids() for name, server in servers.items()}
        cpu_before = {name: cpu_seconds(p) for name, p in pids.items()}
        rounds, per_client = max(2, int(8 * scale)), 25 if scale >= 0.1 else 5
        results = run_concurrent(targets, body, rounds, per_client, concurrency=16)
        calls = rounds * per_client * 16
        # Loki's share of the CPU is spent when batches are pushed: wait until all are acknowledged.
        wanted = 2 * (calls + 5 * 16)
        try:
            wait_until(lambda: http_get(servers["Loki on"].port, "/health/loki")[1]["entries_sent"] >= wanted,
                       15, interval=0.2, message="Loki entries pushed")
        except TimeoutError as exc:
            print(f"bench: {exc}", file=sys.stderr)
        cpu = {name: (cpu_seconds(p) - cpu_before[name]) * 1000 / calls for name, p in pids.items()}
    finally:
        for server in servers.values():
            server.stop()
        loki.stop()
    stats = {name: (summary(lat), rps) for name, (lat, rps) in results.items()}
    direct_p99 = stats["direct"][0]["p99_ms"]
    figures = []
    for name, (st, rps) in stats.items():
        what = f"POST /v1/messages 2KB, 16 keep-alive clients at once, {name}"
        on = name == "Loki on"
        figures.append(Figure(f"x16 {name}: req/s", round(rps), "req/s", st["samples"], what,
                              ">= 740" if on else "", rps >= 740 if on else None, {**st, "rps": round(rps, 1)}))
        if name == "direct":
            figures.append(Figure("x16 direct: p99", st["p99_ms"], "ms", st["samples"], what, extra=st))
        else:
            ratio = st["p99_ms"] / direct_p99
            figures.append(Figure(f"x16 {name}: p99", st["p99_ms"], "ms", st["samples"], what,
                                  f"<= 4 x direct ({4 * direct_p99:.0f})" if on else "",
                                  ratio <= 4 if on else None, {**st, "p99_vs_direct": round(ratio, 2)}))
    for name, ms in cpu.items():
        figures.append(Figure(f"CPU per call, {name}", round(ms, 3), "CPU ms", calls,
                              f"the proxy's workers' user + system CPU per proxied call (16 clients), {name}"
                              + (", pushes to fakeloki included" if name == "Loki on" else "")))
    return figures


def _streams_at_once(port: int, path: str, count: int, events: int, delay_ms: int) -> tuple[list[float], list[float]]:
    """``count`` streams at once; their TTFBs and every event's send-to-arrival ms."""
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        results = list(pool.map(lambda _: stream_once(port, path, events, delay_ms), range(count)))
    ttfb = [t for t, _ in results]
    delays = [d for _, ds in results for d in ds]
    if any(len(ds) < events for _, ds in results):
        raise RuntimeError(f"a stream through 127.0.0.1:{port} ended early")
    return ttfb, delays


def bench_streams(work: Path, provider: Helper, scale: float) -> list[Figure]:
    """100 SSE streams at once, direct and through the proxy: what the proxy adds to each event."""
    count, delay_ms = 100, 20
    events = max(50, int(50 * scale))
    with ProxyServer(work / "streams", env=proxy_env(work / "streams" / "logs")) as proxy:
        paths = {"direct": (provider.port, "/v1/messages"),
                 "proxy": (proxy.port, f"/anthropic/127.0.0.1:{provider.port}/v1/messages")}
        ttfb = {k: [] for k in paths}
        delays = {k: [] for k in paths}
        for r in range(2):
            for name in (paths if r % 2 == 0 else reversed(list(paths))):
                t, d = _streams_at_once(*paths[name], count, events, delay_ms)
                ttfb[name] += t
                delays[name] += d
    direct, via = summary(delays["direct"]), summary(delays["proxy"])
    added_median = via["median_ms"] - direct["median_ms"]
    added_p99 = via["p99_ms"] - direct["p99_ms"]
    what = f"{count} SSE streams at once, {events} events {delay_ms} ms apart: send-to-arrival, proxy vs direct"
    ttfb_direct, ttfb_proxy = summary(ttfb["direct"]), summary(ttfb["proxy"])
    return [
        Figure(f"{count} streams: added delay/event", round(added_median, 3), "ms (median)", via["samples"],
               what, "< 1 ms", added_median < 1.0, {"direct": direct, "proxy": via}),
        Figure(f"{count} streams: added delay/event p99", round(added_p99, 3), "ms (p99)", via["samples"],
               what, "< 10 ms", added_p99 < 10.0, {"direct": direct, "proxy": via}),
        Figure(f"{count} streams: TTFB p99", ttfb_proxy["p99_ms"], "ms", ttfb_proxy["samples"],
               f"{count} streams opened at once: time to first byte through the proxy (direct: "
               f"{ttfb_direct['p99_ms']:.0f} ms); seconds here mean streams waited for a thread",
               extra={"direct": ttfb_direct, "proxy": ttfb_proxy}),
    ]


def bench_many_streams(work: Path, provider: Helper, scale: float) -> list[Figure]:
    """200 streams of 30 s open at once, and ordinary calls beside them: does anything wait?"""
    count, seconds, delay_ms = 200, 30.0 if scale >= 1 else 10.0, 100
    events = int(seconds * 1000 / delay_ms)
    path = f"/anthropic/127.0.0.1:{provider.port}/v1/messages"
    with ProxyServer(work / "many", env=proxy_env(work / "many" / "logs")) as proxy:
        health: list[dict] = []
        done = threading.Event()

        def watch():
            while not done.wait(1.0):
                try:
                    health.append(http_get(proxy.port, "/health", timeout=2.0)[1]["threads"])
                except (OSError, http.client.HTTPException, KeyError):
                    health.append({"unanswered": True})

        with concurrent.futures.ThreadPoolExecutor(count + 1) as pool:
            streams = [pool.submit(stream_once, proxy.port, path, events, delay_ms) for _ in range(count)]
            watcher = pool.submit(watch)
            time.sleep(2.0)  # the streams are under way (their TTFB says whether they waited)
            client, calls = Client(proxy.port), []
            body, deadline = messages_body(2048), time.monotonic() + seconds - 4.0
            while time.monotonic() < deadline and len(calls) < 5000:
                calls.append(client.post(path, body, {"Content-Type": "application/json",
                                                      "X-Claude-Code-Session-Id": "bench-many"}))
            results = [f.result(timeout=seconds + 60) for f in streams]
            done.set()
            watcher.result(timeout=10)
    calls_s = summary(calls)
    ttfb = summary([t for t, _ in results])
    delays = summary([d for _, ds in results for d in ds])
    complete = sum(1 for _, ds in results if len(ds) >= events)
    answered = [h for h in health if "busy" in h]
    peak = max((h["busy"] for h in answered), default=0)
    threads = max((h["threads"] for h in answered), default=0)  # the first samples may miss workers still starting
    what = f"{count} streams of {seconds:.0f} s open at once, 2KB calls one after another beside them"
    return [
        Figure(f"{count} streams: complete", complete, f"of {count}", count, what, f"= {count}", complete == count),
        Figure(f"{count} streams: TTFB p99", ttfb["p99_ms"], "ms", ttfb["samples"], what, extra=ttfb),
        Figure(f"{count} streams: delay/event p99", delays["p99_ms"], "ms (send to arrival)", delays["samples"],
               what, extra=delays),
        Figure(f"{count} streams: call p99", calls_s["p99_ms"], "ms", calls_s["samples"], what,
               extra={**calls_s, "max_ms": round(max(calls), 3) if calls else None}),
        Figure(f"{count} streams: busy threads", peak, f"of {threads} (peak)", len(answered),
               what + "; /health sampled once a second",
               extra={"unanswered_health": len(health) - len(answered), "health": health,
                      "saturated_workers_peak": max((h["saturated_workers"] for h in answered), default=0)}),
    ]


EXPORT_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from dataclasses import replace
from llmproxy.loki import LokiExporter
from llmproxy.settings import load_settings
url, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
settings = load_settings({{"LLM_PROXY_LOKI_ENABLED": "true", "LLM_PROXY_LOKI_URL": url,
                          "LLM_PROXY_LOG_DIR": sys.argv[4], "LLM_PROXY_ENV_FILE": "/nonexistent"}})
exporter = LokiExporter(settings.loki)
labels = (("app", "llm-proxy"), ("provider", "anthropic"), ("environment", "bench"),
          ("machine", "bench@host"), ("log_type", "request"))
pad = "x" * (size - 200)
# Lines exist before they are pushed (the file logger made them): made here before the clock
# starts, 1,000 distinct ones reused with distinct timestamps.
lines = [json.dumps({{"type": "request", "seq": i, "body": pad, "_meta": {{"session": "bench"}}}}).encode()
         for i in range(1000)]
before = resource.getrusage(resource.RUSAGE_SELF)
started = time.perf_counter()
base = time.time_ns()
for i in range(count):
    while exporter.queue_depth > 2000:  # stay clear of the memory bound: measure pushing, not spooling
        time.sleep(0.001)
    exporter.push(lines[i % 1000], labels, base + i)
exporter.close(timeout=120)
elapsed = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
print(json.dumps({{"elapsed": elapsed, "cpu": cpu, "sent": exporter.stats.entries_sent,
                  "failed": exporter.stats.entries_failed, "dropped": exporter.stats.entries_dropped}}))
"""


def bench_export(work: Path, scale: float) -> list[Figure]:
    loki = Helper("loki")
    try:
        count = max(5000, int(30000 * scale))
        out = subprocess.run([sys.executable, "-c", EXPORT_CHILD.format(root=str(HERE.parent)), loki.url + "/",
                              str(count), str(10 * 1024), str(work / "export-logs")],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        doc = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        loki.stop()
    rate = doc["sent"] / doc["elapsed"]
    return [
        Figure("export: entries/s", round(rate), "entries/s", doc["sent"],
               "one worker's exporter, 10 KB lines, Loki up: pushed and acknowledged, end to end",
               ">= 5000", rate >= 5000, doc),
        Figure("export: CPU per 10k entries", round(doc["cpu"] / doc["sent"] * 10000, 3), "CPU s",
               doc["sent"], "the worker's own rusage (user + system): queueing, batching, encoding, gzip, HTTP"),
    ]


SKEL_BASHRC = Path("/etc/skel/.bashrc")


def _shell_homes(work: Path, presence_file: Path) -> tuple[Path, Path]:
    """Two homes: the user's rc files alone (Debian's ~/.bashrc, a one-line ~/.zshrc, an empty
    fish conf.d), and the same with what ``llm-proxy setup`` adds."""
    from llmproxy.setup import shells

    plain, blocked = work / "shells-plain", work / "shells-setup"
    for home in (plain, blocked):
        (home / ".config" / "fish" / "conf.d").mkdir(parents=True)
        # A user's fish has made this at its first start ever; in a new home the first start
        # parses the man pages in the background for seconds, beside the starts being measured.
        (home / ".local" / "share" / "fish" / "generated_completions").mkdir(parents=True)
        (home / ".bashrc").write_bytes(SKEL_BASHRC.read_bytes() if SKEL_BASHRC.exists() else b"# bashrc\n")
        (home / ".zshrc").write_text("# the user's zsh settings\n")
    (blocked / ".bashrc").write_text((blocked / ".bashrc").read_text() + "\n" + shells.posix(presence_file))
    (blocked / ".zshrc").write_text((blocked / ".zshrc").read_text() + "\n" + shells.posix(presence_file))
    (blocked / ".config" / "fish" / "conf.d" / "llm-proxy.fish").write_text(shells.fish(presence_file))
    return plain, blocked


def _start_ms(shell: str, home: Path) -> float:
    """One interactive shell's start and exit (it reads its rc files), wall clock."""
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "dumb", "LANG": "C.UTF-8"}
    started = time.perf_counter()
    subprocess.run([shell, "-i", "-c", "exit"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=30)
    return (time.perf_counter() - started) * 1000


_LOOPS = {"bash": "i=0; while [ $i -lt {n} ]; do {body}; i=$((i+1)); done",
          "zsh": "i=0; while [ $i -lt {n} ]; do {body}; i=$((i+1)); done",
          "fish": "for i in (seq {n}); {body}; end"}


def _block_us(shell: str, block: Path, runs: int) -> float:
    """The block alone, run ``runs`` times inside one shell, less the same loop doing nothing: µs a run."""
    def loop(body: str) -> float:
        started = time.perf_counter()
        subprocess.run([shell, "-c", _LOOPS[shell].format(n=runs, body=body)], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=True)
        return time.perf_counter() - started
    source = "source" if shell == "fish" else "."
    best = min(loop(f"{source} {block}") - loop("true") for _ in range(3))
    return best / runs * 1e6


def bench_shells(work: Path, scale: float) -> list[Figure]:
    """What the shell integration adds to starting an interactive bash, zsh and fish, with the
    proxy up (its presence file held by a live process, as the gunicorn master holds it) and
    down (no file). Starts are interleaved, so drift hits every variant alike."""
    from llmproxy.server.presence import Announcement
    from llmproxy.setup import shells

    presence_file = work / "shells-logs" / ".run" / "proxy.env"
    plain, blocked = _shell_homes(work, presence_file)
    announcement = Announcement(presence_file)
    rounds = max(20, int(200 * scale))
    figures = []
    for shell in ("bash", "zsh", "fish"):
        if shutil.which(shell) is None:
            continue
        times: dict[str, list[float]] = {"without": [], "down": [], "up": []}
        for i in range(rounds):
            order = ("without", "down", "up") if i % 2 else ("up", "down", "without")
            for variant in order:
                if variant == "up":
                    announcement.publish("http://127.0.0.1:8080")
                elif variant == "down":
                    announcement.withdraw()
                times[variant].append(_start_ms(shell, plain if variant == "without" else blocked))
        announcement.withdraw()
        base = trimmed_mean(times["without"])
        figures.append(Figure(f"{shell} -i: start", round(base, 2), "ms (mean)", rounds,
                              f"{shell} -i -c exit with the user's rc files only (mean of the middle 80 %)"))
        for variant in ("down", "up"):
            added = trimmed_mean(times[variant]) - base
            figures.append(Figure(f"{shell} -i: added, proxy {variant}", round(added, 2), "ms (mean)", rounds,
                                  f"the same start with the block setup adds, proxy {variant}",
                                  "<= 10 ms", added <= 10,
                                  {"median_ms": round(statistics.median(times[variant]), 3),
                                   "p90_ms": round(percentile(times[variant], 0.9), 3)}))
        block = work / f"block.{shell}"
        block.write_text(shells.fish(presence_file) if shell == "fish" else shells.posix(presence_file))
        announcement.publish("http://127.0.0.1:8080")
        try:
            alone = _block_us(shell, block, max(200, int(2000 * scale)))
        finally:
            announcement.withdraw()
        figures.append(Figure(f"{shell}: the block alone, proxy up", round(alone, 1), "µs a run", 3,
                              "the block run in a loop inside one shell, less the empty loop (best of 3)"))
    return figures


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU the processes have used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def private_mib(pid: int) -> float:
    """Memory of the process's own, not shared with the master (the price data, the modules it
    loaded before the fork): ``Private_Clean + Private_Dirty`` of ``/proc/PID/smaps_rollup``."""
    kib = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            kib += int(line.split()[1])
    return kib / 1024


def bench_memory(work: Path, provider: Helper, scale: float) -> list[Figure]:
    buffer_bytes = 64 * MIB
    env = proxy_env(work / "memory" / "logs", LLM_PROXY_WORKERS="1", LLM_PROXY_LOKI_ENABLED="true",
                    LLM_PROXY_LOKI_URL=refused_url())
    with ProxyServer(work / "memory", env=env) as proxy:
        worker = proxy.worker_pids()[0]
        baseline = peak_rss_mib(worker)
        body = messages_body(MIB)
        count = max(40, int(250 * scale))
        path = f"/anthropic/127.0.0.1:{provider.port}/v1/messages"
        def client_loop(n: int) -> None:
            client = Client(proxy.port)
            for _ in range(n):
                client.post(path, body, {"X-Claude-Code-Session-Id": "bench-mem"})

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(client_loop, [count // 4] * 4))
        count = count // 4 * 4
        peak = peak_rss_mib(worker)
        private = private_mib(worker)
    limit = buffer_bytes / MIB + 100
    return [Figure("memory: worker peak RSS", round(peak, 1), "MiB", count,
                   f"one worker, Loki refusing, {count} requests with 1 MB bodies (4 at a time); "
                   f"LLM_PROXY_LOKI_BUFFER_BYTES = 64 MiB; RSS before: {baseline:.1f} MiB",
                   f"<= {limit:.0f} MiB", peak <= limit, {"rss_before_mib": round(baseline, 1)}),
            Figure("memory: worker private, after", round(private, 1), "MiB", count,
                   "the same worker's own pages at the end (RSS counts the pages it shares with the "
                   "master too, genai-prices' data among them)")]


# --- readers: pricing and the catalog ---

PRICING_CHILD = """
import json, statistics, sys, time
from datetime import datetime, timezone
sys.path.insert(0, {root!r})

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

before = rss_mib()
started = time.perf_counter()
from llmproxy.pricing import prices
from llmproxy.providers.summary import Counts
now = time.time()
prices.cost(Counts(input=3, output=200, cache_write=2000, cache_read=90000), "claude-sonnet-4-5-20250929",
            "api.anthropic.com", "anthropic", now)
first_ms = (time.perf_counter() - started) * 1000
grown = rss_mib() - before
cases = [("claude-sonnet-4-5-20250929", "api.anthropic.com", "anthropic"), ("gpt-5-codex", "chatgpt.com", "openai"),
         ("gpt-4o-mini", "api.openai.com", "openai")]
for model, upstream, price_list in cases:
    prices.cost(Counts(input=1, output=1), model, upstream, price_list, now)
samples = []
for i in range({count}):
    model, upstream, price_list = cases[i % 3]
    counts = Counts(input=3 + i, output=200 + i % 97, cache_write=i % 5000, cache_read=90000 + i)
    t = time.perf_counter_ns()
    prices.cost(counts, model, upstream, price_list, now)
    samples.append((time.perf_counter_ns() - t) / 1000)
from genai_prices import calc_price
when = datetime.now(timezone.utc)
library = []
for i in range({count} // 10):
    counts = Counts(input=3 + i, output=200, cache_write=100, cache_read=90000)
    t = time.perf_counter_ns()
    calc_price(prices.usage(counts), "claude-sonnet-4-5-20250929", provider_id="anthropic", genai_request_timestamp=when)
    library.append((time.perf_counter_ns() - t) / 1000)
samples.sort()
print(json.dumps({{"first_ms": first_ms, "median_us": statistics.median(samples),
                  "p99_us": samples[int(len(samples) * 0.99)], "library_us": statistics.median(library),
                  "rss_mib": grown, "samples": len(samples)}}))
"""


def bench_pricing(work: Path, scale: float) -> list[Figure]:
    count = max(5000, int(20000 * scale))
    out = subprocess.run([sys.executable, "-c", PRICING_CHILD.format(root=str(HERE.parent), count=count)],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    return [
        Figure("pricing: per call", round(doc["median_us"], 1), "µs (median)", doc["samples"],
               "a response's cost from its token counts, after the first call of its model (3 models in turn); "
               f"genai-prices' own calc_price: {doc['library_us']:.0f} µs", "< 30 µs", doc["median_us"] < 30, doc),
        Figure("pricing: per call p99", round(doc["p99_us"], 1), "µs (p99)", doc["samples"], "as above"),
        Figure("pricing: first call", round(doc["first_ms"], 1), "ms", 1,
               f"import of genai-prices and its data, and the model's lookup, once per worker; "
               f"RSS +{doc['rss_mib']:.1f} MiB"),
    ]


def bench_catalog(work: Path, provider: Helper, scale: float) -> list[Figure]:
    import gentree

    from llmproxy.catalog import Catalog
    from llmproxy.server.prune import Pruner
    from llmproxy.settings import load_settings

    quick = scale < 1
    tree = gentree.generate(work / "catalog" / "tree", long=1 if quick else 3, calls=120 if quick else 200,
                            short=60 if quick else 300, days=7) if scale >= 0.1 else \
        gentree.generate(work / "catalog" / "tree", long=1, calls=10, short=10, days=2)
    built = Catalog(tree.log_dir, indexers=[], path=work / "catalog" / "plain.db").update()
    settings = load_settings({"LLM_PROXY_LOG_DIR": str(tree.log_dir), "LLM_PROXY_ENV_FILE": "/nonexistent"},
                             create_dirs=False)
    Pruner(settings, dry_run=False, out=io.StringIO(), now=time.time() + 400 * 86400).run()
    compressed = sum(p.stat().st_size for p in tree.log_dir.glob("*/*/*.zst"))
    from_zst = Catalog(tree.log_dir, indexers=[], path=work / "catalog" / "zst.db").update()

    many = work / "catalog" / "many"
    gentree.generate(many, long=0, short=200, days=30, seed=2)
    gentree.clone(many, 10_000 if scale >= 0.1 else 500)  # the figure is over 10,000; a test runs it small
    catalog = Catalog(many, indexers=[], path=work / "catalog" / "many.db")
    first = catalog.update()
    idle = [catalog.update() for _ in range(5)]
    idle_ms = statistics.median(u.seconds * 1000 for u in idle)
    mib = 1024 * 1024
    return [
        Figure("catalog: build from plain files", round(built.bytes / mib / built.seconds, 1), "MiB/s", built.lines,
               f"{built.sessions} sessions, {built.bytes / mib:.0f} MiB of JSONL (long Claude Code sessions whose "
               f"late requests re-send {tree.largest / mib:.1f} MiB of history), into an empty catalog in "
               f"{built.seconds:.1f} s"),
        Figure("catalog: build from .zst", round(from_zst.bytes / mib / from_zst.seconds, 1), "MiB/s",
               from_zst.lines, f"the same tree compressed by prune ({compressed / mib:.1f} MiB on disk); MiB of JSONL "
               f"read per second, in {from_zst.seconds:.1f} s"),
        Figure("catalog: update, nothing new", round(idle_ms, 1), "ms (median)", len(idle),
               f"{first.sessions} session files, none changed: listed and stat'ed, none opened "
               f"({sum(u.read for u in idle)} read); their first cataloguing took {first.seconds:.1f} s",
               "< 1000 ms", idle_ms < 1000 and all(u.read == 0 for u in idle)),
    ]


# --- output ---

# --- the explorer (docs/explorer.rst) ---

def _timed_get(port: int, path: str, mark: bytes | None = None) -> tuple[float, float | None, float, int]:
    """(first byte, when ``mark`` arrived, whole answer) in ms, and its size in bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    conn.request("GET", path)
    answer = conn.getresponse()
    first = None
    marked = None
    size = 0
    tail = b""
    while chunk := answer.read1(65536):
        now = time.perf_counter()
        first = first if first is not None else now
        size += len(chunk)
        if mark is not None and marked is None and mark in tail + chunk:
            marked = now
        tail = chunk[-len(mark):] if mark else b""
    done = time.perf_counter()
    conn.close()
    assert answer.status == 200, (path, answer.status)
    ms = lambda t: None if t is None else round((t - started) * 1000, 1)  # noqa: E731
    return ms(first), ms(marked), ms(done), size


def bench_explorer(work: Path, provider: "Helper", scale: float) -> list[Figure]:
    """A generated tree (tests/gentree.py) of ~10,000 sessions at full scale, some long Claude
    Code sessions of 300 calls: the catalog catch-up (search index included), then the explorer
    (``llm-proxy explore``, its indexer idle beside it) over HTTP: the sessions page, search,
    and a 300-call session's page cold (first visit of the process) and warm."""
    import gentree
    from browser import Explorer

    from llmproxy.catalog import Catalog

    sessions = max(300, int(10_000 * scale / 3))
    long = 3 if scale >= 1 else 1
    log_dir = work / "explorer-tree"
    started = time.perf_counter()
    tree = gentree.generate(log_dir, long=long, calls=300, short=sessions - long, days=30)
    generated = time.perf_counter() - started
    long_session = next(c.session for c in tree.calls if c.seq == 300)
    long_mib = sum(f.stat().st_size for f in log_dir.rglob(long_session + ".jsonl")) / MIB

    catalog = Catalog(log_dir)
    started = time.perf_counter()
    stats = catalog.update()
    catch_up = time.perf_counter() - started
    started = time.perf_counter()
    catalog.update()
    idle = time.perf_counter() - started
    catalog.close()
    catalog_mb = (log_dir / "catalog.db").stat().st_size / MIB
    figures = [
        Figure("explorer: catalog catch-up", round(catch_up, 1), "s", stats.read,
               f"{stats.read} sessions, {stats.lines} lines, {stats.bytes / MIB:.0f} MiB (generated in "
               f"{generated:.0f} s), search index included; catalog.db {catalog_mb:.0f} MiB",
               extra={"mib_per_s": round(stats.bytes / MIB / catch_up, 1)}),
        Figure("explorer: catalog catch-up rate", round(stats.bytes / MIB / catch_up, 1), "MiB/s", stats.read,
               "log bytes catalogued and indexed per second"),
        Figure("explorer: catalog update, nothing new", round(idle * 1000), "ms", stats.sessions,
               "an update that only lists and stats the tree"),
    ]

    server = Explorer(work / "explorer", log_dir).start()
    try:
        port = server.port
        # The long session, first visit of this process: read, indexed and rendered as it streams.
        first, screen, full, weight = _timed_get(port, f"/session/{long_session}", b'id="call-10"')
        warm = [_timed_get(port, f"/session/{long_session}", b'id="call-10"') for _ in range(max(3, int(5 * scale)))]
        figures += [
            Figure("explorer: 300-call session, cold: first byte", first, "ms", 1, "first visit of the process"),
            Figure("explorer: 300-call session, cold: first screen", screen, "ms", 1,
                   "until the first 10 calls arrived", "< 1000 ms", screen is not None and screen < 1000),
            Figure("explorer: 300-call session, cold: full page", full, "ms", 1,
                   f"a {long_mib:.0f} MiB session file, every request parsed once"),
            Figure("explorer: 300-call session, warm: full page", round(statistics.median(w[2] for w in warm), 1),
                   "ms", len(warm), "median, later visits"),
            Figure("explorer: 300-call session: page weight", round(weight / 1024), "KiB", 1,
                   "HTML before any raw JSON is opened", "< 2048 KiB", weight < 2 * MIB),
        ]
        words = [w for w in gentree.WORDS][:6]
        pages = ["/sessions", "/sessions?page=7", "/sessions?client=codex", "/sessions?errors=1",
                 "/sessions?days=7&provider=openai", "/sessions?model=gpt-4o-mini", f"/sessions?q={words[0]}+{words[1]}"]
        searches = [f"/search?q={w}" for w in words] + [f"/search?q=%22{words[0]}+{words[1]}%22",
                                                         "/search?q=nothing-like-this", f"/search?q={words[2]}*",
                                                         f"/search?q={words[3]}&order=best"]
        rounds = max(3, int(10 * scale))
        for name, paths in (("sessions page", pages), ("search", searches)):
            for path in paths:  # warm the page cache and the templates
                _timed_get(port, path)
            samples = [_timed_get(port, path)[2] for _ in range(rounds) for path in paths]
            p95 = round(percentile(samples, 0.95), 1)
            figures += [Figure(f"explorer: {name}, p95", p95, "ms", len(samples),
                               f"{len(paths)} addresses, whole answer; median {statistics.median(samples):.1f} ms",
                               "< 300 ms", p95 < 300)]
    finally:
        server.stop()
    return figures


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}, {platform.system()}"


def table(figures: list[Figure]) -> str:
    rows = [("figure", "value", "unit", "n", "target", "")]
    for f in figures:
        mark = "" if f.met is None else ("ok" if f.met else "MISSED")
        rows.append((f.name, "-" if f.value is None else f"{f.value:g}", f.unit, str(f.samples), f.target, mark))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    sep = "  ".join("=" * w for w in widths)
    lines = [sep, "  ".join(c.ljust(w) for c, w in zip(rows[0], widths)).rstrip(), sep]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows[1:]]
    lines.append(sep)
    return "\n".join(lines)


SECTIONS = {
    "overhead": bench_overhead,
    "load": bench_load,
    "streams": bench_streams,
    "many": bench_many_streams,
    "loki": bench_loki_impact,
    "stream": bench_streaming,
    "export": lambda work, provider, scale: bench_export(work, scale),
    "memory": bench_memory,
    "pricing": lambda work, provider, scale: bench_pricing(work, scale),
    "catalog": bench_catalog,
    "explorer": bench_explorer,
    "shells": lambda work, provider, scale: bench_shells(work, scale),
}
# The quick run stays under a minute: the 30 s streams of "many" are left to the full run.
QUICK = ("load", "streams", "overhead", "loki", "stream", "export", "memory", "pricing", "catalog", "explorer", "shells")


def run(quick: bool, only: list[str] | None = None, scale: float | None = None,
        progress=lambda msg: print(msg, file=sys.stderr, flush=True)) -> dict:
    scale = scale if scale is not None else (0.15 if quick else 3.0)
    figures: list[Figure] = []
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="llm-proxy-bench-") as tmp:
        work = Path(tmp)
        provider = Helper("provider")
        try:
            for section in only or (QUICK if quick else SECTIONS):
                progress(f"[{time.monotonic() - started:5.1f}s] {section} …")
                figures += SECTIONS[section](work, provider, scale)
        finally:
            provider.stop()
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
            "mode": "quick" if quick else "full", "seconds": round(time.monotonic() - started, 1),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "proxy_settings": dict(EXTRA_ENV), "figures": [f.__dict__ for f in figures]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples: under a minute")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--only", action="append", choices=list(SECTIONS), help="run only these sections")
    parser.add_argument("--set", action="append", default=[], metavar="VAR=VALUE",
                        help="a setting for every proxy the bench starts, e.g. LLM_PROXY_THREADS=64")
    parser.add_argument("--scale", type=float, help="sample count multiplier (quick: 0.15, full: 3)")
    args = parser.parse_args(argv)
    EXTRA_ENV.clear()
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("LLM_PROXY_"):
            parser.error(f"--set {item!r}: expected LLM_PROXY_NAME=VALUE")
        EXTRA_ENV[name] = value
    result = run(args.quick, args.only, args.scale)
    print(f"llm-proxy benchmark, {result['date']}, {result['mode']} run in {result['seconds']} s")
    print(f"machine: {result['machine']}")
    print(f"load average (1 min) before / after: {result['load_average'][0]} / {result['load_average'][1]}"
          " (client, proxy and fakes share the machine; anything else running moves the figures)")
    if EXTRA_ENV:
        print("proxy settings: " + " ".join(f"{k}={v}" for k, v in EXTRA_ENV.items()))
    print(table([Figure(**f) for f in result["figures"]]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
