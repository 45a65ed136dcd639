"""What a running server says about itself: the presence file (while the master lives, and never
after), ``llm-proxy env`` (nothing while the proxy does not answer) and ``llm-proxy status``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from proxyproc import free_port, wait_until
from workstation import FakeSystemctl, llm_proxy, make_home

from llmproxy.server import presence
from llmproxy.setup import status

LLM_PROXY = str(Path(sys.executable).with_name("llm-proxy"))


def command(server, *args):
    env = {k: v for k, v in server.env.items() if k != "LLM_PROXY_WORKERS"}
    return subprocess.run([LLM_PROXY, *args], env=env, capture_output=True, text=True, timeout=60)


def test_env_prints_nothing_while_nothing_answers_and_everything_with_force(tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LLM_PROXY_PORT": str(free_port()),
           "LLM_PROXY_ENV_FILE": os.devnull}
    for args in (["env"], ["env", "--codex"]):
        down = subprocess.run([LLM_PROXY, *args], env=env, capture_output=True, text=True, timeout=60)
        assert (down.returncode, down.stdout, down.stderr) == (0, "", "")
        forced = subprocess.run([LLM_PROXY, *args, "--force"], env=env, capture_output=True, text=True, timeout=60)
        assert forced.returncode == 0 and f":{env['LLM_PROXY_PORT']}/" in forced.stdout


def test_env_and_status_of_a_running_proxy_then_a_stopped_one(start_proxy, fake_provider):
    server = start_proxy()
    out = command(server, "env")
    assert out.returncode == 0 and out.stdout.splitlines()[0] == \
        f"export ANTHROPIC_BASE_URL={server.url}/anthropic/api.anthropic.com"
    reply = requests.post(f"{server.url}/anthropic/{fake_provider.upstream}/v1/messages",
                          json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                          headers={"x-api-key": "sk-ant-" + "x" * 40}, timeout=10)
    assert reply.status_code == 200
    wait_until(lambda: list(server.log_dir.glob("*/*/*.jsonl")) and
               b'{"type":"response"' in next(server.log_dir.glob("*/*/*.jsonl")).read_bytes(), 10)

    running = command(server, "status")
    assert running.returncode == 0, running.stderr
    lines = running.stdout.splitlines()
    assert lines[0].startswith(f"llm-proxy 0.1.0 is running: pid {server.proc.pid}, {server.url}, up ")
    rows = dict(re.fullmatch(r"  (\S.*?) {2,}(.*)", line).groups() for line in lines[1:])
    assert rows["today"].startswith("1 session, 1 call, ")
    assert rows["Loki export"] == "disabled"
    assert rows["session logs"].startswith(f"{server.log_dir} (")

    server.stop()
    assert not (server.log_dir / ".run" / presence.FILE_NAME).exists()
    stopped = command(server, "status")
    assert stopped.returncode == 3
    assert stopped.stdout.splitlines()[0] == f"llm-proxy is not running: nothing answers at {server.url}"
    assert command(server, "env").stdout == ""


def test_the_presence_file_names_the_master_and_outlives_kill_9_without_counting(start_proxy):
    server = start_proxy()
    file = server.log_dir / ".run" / presence.FILE_NAME
    here = presence.read(file)
    assert here is not None and here.pid == server.proc.pid and here.base_url == server.url
    assert here.variables == {"ANTHROPIC_BASE_URL": f"{server.url}/anthropic/api.anthropic.com",
                              "OPENAI_BASE_URL": f"{server.url}/openai/api.openai.com/v1",
                              "GOOGLE_GEMINI_BASE_URL": f"{server.url}/gemini/generativelanguage.googleapis.com"}
    workers = server.worker_pids()
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 30,
               message="the orphaned workers leave")
    assert file.exists()                  # nobody removed it …
    assert presence.read(file) is None    # … and it no longer counts


def test_a_presence_file_naming_a_live_process_that_holds_another_file_does_not_count(tmp_path):
    """A reused pid: alive, but what it holds at that descriptor is not this file."""
    file = tmp_path / "proxy.env"
    other = open(tmp_path / "other", "w")
    try:
        file.write_text(presence.Presence(os.getpid(), other.fileno(), 0, "0.1.0", "http://127.0.0.1:1",
                                          {"A": "b"}).text())
        assert presence.read(file) is None
        announcement = presence.Announcement(file)
        announcement.publish("http://127.0.0.1:1")
        assert presence.read(file).base_url == "http://127.0.0.1:1"
        announcement.withdraw()
        assert not file.exists()
    finally:
        other.close()


def test_a_presence_file_replaced_by_another_server_is_not_removed_by_the_first(tmp_path):
    file = tmp_path / "proxy.env"
    first, second = presence.Announcement(file), presence.Announcement(file)
    first.publish("http://127.0.0.1:1")
    second.publish("http://127.0.0.1:2")
    first.withdraw()
    assert presence.read(file).base_url == "http://127.0.0.1:2"
    second.withdraw()
    assert not file.exists()


def _session(log_dir: Path, upstream: str, day: str, name: str, costs: list[float | None]) -> None:
    path = log_dir / upstream / day / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"ts": f"{day}T10:00:00.000000000Z", "machine": "me@here", "host": upstream, "session": name}
    lines = [{"type": "session_start", "provider": "anthropic", "upstream": upstream, "_meta": meta}]
    for seq, cost in enumerate(costs, 1):
        lines.append({"type": "request", "seq": seq, "method": "POST", "path": "/v1/messages",
                      "body": '{"type":"response","cost":{"total":9}}', "_meta": meta})
        response = {"type": "response", "seq": seq, "status": 200}
        if cost is not None:
            response["cost"] = {"total": cost, "input": cost / 2, "source": "genai-prices 0.0.1"}
        lines.append({**response, "_meta": meta})
    path.write_bytes(b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in lines))


def test_today_counts_todays_sessions_calls_and_cost(tmp_path):
    _session(tmp_path, "api.anthropic.com", "2026-12-05", "20261205-100000-aaaaaaaa", [0.5, 0.25])
    _session(tmp_path, "api.openai.com", "2026-12-05", "20261205-110000-bbbbbbbb", [None, 0.125])
    _session(tmp_path, "api.openai.com", "2026-12-04", "20261204-110000-cccccccc", [7.0])
    today = status.today(tmp_path, "2026-12-05")
    assert (today.sessions, today.calls, today.priced, today.cost) == (2, 4, 3, 0.875)
    assert today.line() == "2 sessions, 4 calls, $0.88 (1 call unpriced) (log files, 2026-12-05 UTC)"
    assert status.today(tmp_path, "2026-12-01").line() == "0 sessions, no calls (log files, 2026-12-01 UTC)"


def test_today_asks_the_catalog_when_there_is_one(tmp_path):
    catalog = pytest.importorskip("llmproxy.catalog", reason="this llm-proxy has no catalog yet (issue 20)")
    if not hasattr(catalog, "Catalog"):
        pytest.skip("llmproxy.catalog has no Catalog (a directory left by another checkout?)")
    day = status.datetime.now(status.timezone.utc).strftime("%Y-%m-%d")
    _session(tmp_path, "api.anthropic.com", day, f"{day.replace('-', '')}-100000-aaaaaaaa", [0.5, 0.25])
    _session(tmp_path, "api.openai.com", day, f"{day.replace('-', '')}-110000-bbbbbbbb", [None])
    assert status.today(tmp_path).source.startswith("log files")   # no catalog: none is built for a status
    built = catalog.Catalog(tmp_path)
    built.update()
    built.close()
    numbers = status.today(tmp_path)
    assert numbers.source == f"catalog, {day} UTC"
    assert (numbers.sessions, numbers.calls, numbers.priced, numbers.cost) == (2, 3, 2, 0.75)


def test_status_names_the_service_and_where_the_shells_are_set_up(tmp_path, monkeypatch):
    port = free_port()
    home = make_home(tmp_path)
    (home.path / ".bashrc").write_text("# mine\n")
    systemctl = FakeSystemctl()
    assert llm_proxy(home, systemctl, "setup", "--port", str(port), "--codex")[0] == 0
    monkeypatch.setenv("LLM_PROXY_ENV_FILE", str(home.settings_file))   # the settings a command reads
    monkeypatch.setenv("LLM_PROXY_LOG_DIR", str(home.path / ".llm-provider-logs"))
    code, out, err = llm_proxy(home, systemctl, "status")
    assert code == 3, err
    lines = out.splitlines()
    assert lines == [
        f"llm-proxy is not running: nothing answers at http://127.0.0.1:{port}",
        "  service       llm-proxy.service (systemd user unit): active, enabled",
        "  server log    journalctl --user -u llm-proxy.service",
        f"  session logs  {home.path / '.llm-provider-logs'} (none yet)",
        lines[4],
        "  Loki export   disabled",
        "  shells        ~/.bashrc, ~/.config/fish/conf.d/llm-proxy.fish",
        "  codex         ~/.codex/config.toml (model_providers.llm-proxy)",
    ]
    assert lines[4].startswith("  today         0 sessions, no calls (log files, ")
    monkeypatch.setenv("LLM_PROXY_LOKI_ENABLED", "true")
    monkeypatch.setenv("LLM_PROXY_LOKI_URL", "http://me:hunter2secret@127.0.0.1:9")
    loki = [line for line in llm_proxy(home, systemctl, "status")[1].splitlines() if "Loki export" in line]
    assert loki == ["  Loki export   enabled, to http://***@127.0.0.1:9/loki/api/v1/push"], loki
    monkeypatch.delenv("LLM_PROXY_LOKI_ENABLED")
    out = llm_proxy(home, FakeSystemctl(offline=True), "status")[1]
    assert "  service       llm-proxy.service: no systemd user instance here" in out


@pytest.mark.parametrize("seconds, text", [(5, "5 s"), (60, "1 min"), (3 * 3600 + 120, "3 h 2 min"),
                                           (2 * 86400 + 3600, "2 d 1 h")])
def test_uptime_reads_like_a_person_says_it(seconds, text):
    assert status.human_duration(seconds) == text
