"""The benchmark behind ``scripts/bench``: what the proxy and the Loki export cost, side by side.

Everything runs on 127.0.0.1: the fake provider and fakeloki (each in a process of its own, so
they do not share the client's GIL) and the proxy under real gunicorn, default settings unless
a flag says otherwise. Variants are interleaved (A B B A A B…) so machine drift cancels out.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import platform
import resource
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

from proxyproc import ProxyServer, free_port, wait_until  # noqa: E402

MIB = 1024 * 1024


# --- statistics ---

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

def proxy_env(log_dir: Path, **extra) -> dict:
    return {"LLM_PROXY_LOG_DIR": str(log_dir), **extra}


def bench_overhead(work: Path, provider: Helper, scale: float) -> list[Figure]:
    figures = []
    with ProxyServer(work / "overhead", env=proxy_env(work / "overhead" / "logs", LLM_PROXY_THREADS="32")) as proxy:
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
                f"same call, Loki enabled and {name}", "|diff| < 1 ms", abs(d_med) < 1.0, s))
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


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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
    limit = buffer_bytes / MIB + 100
    return [Figure("memory: worker peak RSS", round(peak, 1), "MiB", count,
                   f"one worker, Loki refusing, {count} requests with 1 MB bodies (4 at a time); "
                   f"LLM_PROXY_LOKI_BUFFER_BYTES = 64 MiB; RSS before: {baseline:.1f} MiB",
                   f"<= {limit:.0f} MiB", peak <= limit, {"rss_before_mib": round(baseline, 1)})]


# --- output ---

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


SECTIONS = ("overhead", "loki", "stream", "export", "memory")


def run(quick: bool, only: list[str] | None = None, scale: float | None = None,
        progress=lambda msg: print(msg, file=sys.stderr, flush=True)) -> dict:
    scale = scale if scale is not None else (0.15 if quick else 3.0)
    figures: list[Figure] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llm-proxy-bench-") as tmp:
        work = Path(tmp)
        provider = Helper("provider")
        try:
            for section in only or SECTIONS:
                progress(f"[{time.monotonic() - started:5.1f}s] {section} …")
                if section == "overhead":
                    figures += bench_overhead(work, provider, scale)
                elif section == "loki":
                    figures += bench_loki_impact(work, provider, scale)
                elif section == "stream":
                    figures += bench_streaming(work, provider, scale)
                elif section == "export":
                    figures += bench_export(work, scale)
                elif section == "memory":
                    figures += bench_memory(work, provider, scale)
        finally:
            provider.stop()
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
            "mode": "quick" if quick else "full", "seconds": round(time.monotonic() - started, 1),
            "figures": [f.__dict__ for f in figures]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples: under a minute")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--scale", type=float, help="sample count multiplier (quick: 0.15, full: 3)")
    args = parser.parse_args(argv)
    result = run(args.quick, args.only, args.scale)
    print(f"llm-proxy benchmark, {result['date']}, {result['mode']} run in {result['seconds']} s")
    print(f"machine: {result['machine']}")
    print(table([Figure(**f) for f in result["figures"]]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
