"""scripts/loki-health against the real proxy and fakeloki: one line, Nagios exit codes."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from fakeloki import FakeLoki
from proxyproc import free_port, wait_until

SCRIPT = str(Path(__file__).resolve().parent.parent / "scripts" / "loki-health")


def run(*args):
    out = subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=60)
    assert out.stdout.count("\n") == 1, out.stdout + out.stderr
    return out.returncode, out.stdout.strip()


@pytest.fixture
def loki():
    fake = FakeLoki().start()
    yield fake
    fake.down()


def call(server, fake):
    resp = requests.post(f"{server.url}/anthropic/{fake.upstream}/v1/messages",
                         json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert resp.status_code == 200


def test_ok_then_degraded_then_failing_then_thresholds(start_proxy, fake_provider, loki):
    server = start_proxy({"LLM_PROXY_LOKI_ENABLED": "true", "LLM_PROXY_LOKI_URL": loki.url,
                          "LLM_PROXY_LOKI_BATCH_WAIT": "100ms", "LLM_PROXY_LOKI_RETRY_MAX": "1",
                          "LLM_PROXY_LOKI_BACKOFF_MIN": "50ms", "LLM_PROXY_LOKI_BACKOFF_MAX": "100ms",
                          "LLM_PROXY_WORKERS": "1"})
    call(server, fake_provider)
    wait_until(lambda: loki.count() == 3, 10)
    code, line = wait_until(lambda: (r := run("--url", server.url)) and r[1].startswith("OK: 3 sent") and r, 10)
    assert code == 0
    assert re.fullmatch(r"OK: 3 sent, 0 dropped, queue 0 \| sent=3c failed=0c dropped=0c queue=0 spool=0B", line)

    loki.fail_next(1, status=500)  # one failed push, retried: still working, with a recent error
    call(server, fake_provider)
    code, line = wait_until(lambda: (r := run("--url", f"{server.url}/health/loki")) and r[0] == 1 and r, 10)
    assert line.startswith("WARNING: degraded: last error at ") and "HTTP 500" in line and "6 sent" in line

    loki.down()
    call(server, fake_provider)
    code, line = wait_until(lambda: (r := run("--url", server.url, "--timeout", "2s")) and r[0] == 2 and r, 30,
                            interval=0.3)
    assert re.match(r"CRITICAL: failing since \d\d:\d\d:\d\d: cannot reach http://127\.0\.0\.1:\d+/loki/api/v1/push", line)
    code, line = run("--url", server.url, "--spool-crit", "1B")
    assert code == 2 and re.match(r"CRITICAL: failing since", line)


DOC = {"status": "ok", "entries_sent": 10, "entries_dropped": 1, "queue_depth": 50, "spool_bytes": 2048,
       "last_error": "HTTP 429: rate limited", "last_error_time": "2026-11-28T10:02:11.000Z"}


@pytest.mark.parametrize("thresholds, code, start", [
    ({}, 0, "10 sent, 1 dropped, queue 50, spool 2048 bytes"),
    ({"queue_warn": 50}, 1, "queue 50 >= 50; 10 sent"),
    ({"queue_warn": 10, "queue_crit": 40}, 2, "queue 50 >= 40; 10 sent"),
    ({"queue_warn": 51, "spool_warn": 1024}, 1, "spool 2048 >= 1024; 10 sent"),
    ({"queue_warn": 10, "spool_crit": 2048}, 2, "queue 50 >= 10; spool 2048 >= 2048; 10 sent"),
])
def test_thresholds_on_queue_depth_and_spool_size(thresholds, code, start):
    from llmproxy.loki.check import verdict

    args = {"queue_warn": None, "queue_crit": None, "spool_warn": None, "spool_crit": None, **thresholds}
    got_code, line = verdict(DOC, **args)
    assert got_code == code and line.startswith(start), line


def test_degraded_adds_to_a_threshold_warning():
    from llmproxy.loki.check import verdict

    code, line = verdict({**DOC, "status": "degraded"}, None, 10, None, None)
    assert code == 2 and line.startswith("queue 50 >= 10; degraded: last error at 2026-11-28 10:02:11: HTTP 429")


def test_a_threshold_against_the_running_proxy(start_proxy, fake_provider, loki):
    server = start_proxy({"LLM_PROXY_LOKI_ENABLED": "true", "LLM_PROXY_LOKI_URL": loki.url,
                          "LLM_PROXY_LOKI_BATCH_WAIT": "100ms", "LLM_PROXY_WORKERS": "1"})
    call(server, fake_provider)
    wait_until(lambda: requests.get(f"{server.url}/health/loki", timeout=5).json()["entries_sent"] == 3, 10)
    code, line = run("--url", server.url, "--queue-warn", "0", "--spool-crit", "1GiB")
    assert (code, line.split(" | ")[0]) == (1, "WARNING: queue 0 >= 0; 3 sent, 0 dropped, queue 0")


def test_disabled_is_ok_and_unreachable_is_unknown(start_proxy):
    server = start_proxy({"LLM_PROXY_WORKERS": "1"})
    assert run("--url", server.url) == (0, "OK: Loki export disabled | sent=0c failed=0c dropped=0c queue=0 spool=0B")
    port = free_port()
    code, line = run("--url", f"http://127.0.0.1:{port}", "--timeout", "1s")
    assert code == 3 and line.startswith(f"UNKNOWN: cannot reach http://127.0.0.1:{port}/health/loki: ")


def test_help_names_the_exit_codes():
    out = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "3 the proxy did not answer" in out.stdout


LLM_PROXY = str(Path(sys.executable).with_name("llm-proxy"))


def test_the_installed_command_has_the_same_exit_codes():
    port = free_port()
    out = subprocess.run([LLM_PROXY, "loki-health", "--url", f"http://127.0.0.1:{port}", "--timeout", "2s"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and out.stdout.count("\n") == 1 and out.stdout.startswith("UNKNOWN: "), out
    bad = subprocess.run([LLM_PROXY, "loki-session", "20261128-101500-a1b2c3d4", "--page-size", "0"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "LLM_PROXY_ENV_FILE": "/nonexistent"})
    assert bad.returncode == 2 and bad.stderr == "loki-session: --page-size must be at least 1, got 0\n"
    listed = subprocess.run([LLM_PROXY, "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "loki-health" in listed and "loki-session" in listed
    usage = subprocess.run([LLM_PROXY, "loki-health", "--help"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: llm-proxy loki-health")


def test_the_script_says_unknown_when_it_cannot_set_up_its_venv(tmp_path):
    """A check that could not run is UNKNOWN (3) to Nagios, not WARNING (1)."""
    (tmp_path / "scripts").mkdir()
    for name in ("loki-health", "bootstrap.sh"):
        shutil.copy2(Path(SCRIPT).with_name(name), tmp_path / "scripts" / name)
    (tmp_path / ".venv").write_text("not a directory: the venv cannot be created\n")
    out = subprocess.run([str(tmp_path / "scripts" / "loki-health")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out
    assert out.stdout.startswith("UNKNOWN: could not set up") and out.stdout.count("\n") == 1
